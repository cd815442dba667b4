"""`python run_bench.py perf`: what the harness itself costs, measured side by side in one process
on the same model, data tensors, optimizer and steps (a benchmark script, not a test).

(a) overhead     the harness's run (`execute`: cached data, training, evaluation after every task,
                 checkpoints, metrics) / a bare PyTorch loop doing the same training and evaluation
                 on the same tensors (both build the model and read the cached data; goal <= 1.03)
(b) avalanche    avalanche-lib 0.6.0 (requirements-perf.txt) / the harness, for sequential
                 fine-tuning (Naive), EWC and replay on the same model, data and precision (goal
                 >= 2): end to end (Avalanche's model runs the frozen image encoder per batch, as
                 written for Avalanche; the harness reads its feature cache) and loop only
                 (Avalanche reads the harness's cached features too)
(c) cache        a frozen-prefix method without / with its prefix cache (goal >= 10 for methods
                 whose whole backbone is frozen)
(d) leaderboard  `make leaderboard`'s wall time (the sequence's default method set with its
                 single-task reference, x 3 seeds), measured from an empty cache (image features, frozen prefixes and shared stages all computed);
                 `--estimate-leaderboard` extrapolates short runs per method instead (quicker,
                 but it has been off by up to 30 %)
(e) parallel     two runs side by side with 1 thread each vs one after another with 2 threads
(f) precision    fp32 vs bf16 autocast (+ torch.compile on a CUDA device)
(g) scale        peak memory per run process and throughput at 1x and 8x generated VQAv2 data, for
                 the default and a tiny ViLT at the real processor size (bench/perf_scale.py)

Model selection on validation is off (`val_checks=0`) in (a) and (b), so the bare loop and
Avalanche need none; (c)-(e) use the default configuration. Runs go to a scratch directory that
is removed afterwards; data come from the shared cache (bench/cache.py), filled first, but frozen-
prefix states and shared stages (bench/reuse.py) from a store of this invocation's own, so no
earlier run's work helps. The last line is machine-readable: `overhead_ratio=.. avalanche_ratio=..
cache_speedup=.. leaderboard_s=.. rss_growth=.. stream_ratio=..` (`nan` for a section not run or
unavailable).
"""
import dataclasses
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.backbones import build_backbone
from bench.backbones.base import pooled
from bench.config import plan_tasks, resolve
from bench.method import Method, logits, task_loss
from bench.precision import autocast
from bench.registry import METHODS, TASKS
from bench.runner import build_method, execute, plan_split, task_seed
from bench.store import finished_runs
from bench.suite import method_set, run_suite
from bench.train import _schedule, adamw

SECTIONS = ("a", "b", "c", "d", "e", "f", "g")
AVALANCHE_STRATEGIES = {"finetune": "Naive", "ewc": "EWC", "er": "Replay"}
# the harness's side of (b): replay with a memory batch at every step, as Avalanche's Replay does
AVALANCHE_MATCH = {"er": [("er.replay_every", "1")]}


def quiet(*_):
    pass


@dataclass
class Workload:
    sequence: str = "default"
    backbone: str = "default"
    steps: int | None = None  # per task; None: the sequence's
    quick: bool = False
    threads: int = 1
    device: str = "cpu"
    repeats: int = 2
    cache_dir: Path = field(default_factory=Path)
    scratch: Path = field(default_factory=Path)

    def config(self, method: str, sets=(), seed: int = 0):
        pairs = ([("steps", str(self.steps))] if self.steps else []) + list(sets)
        return resolve(method, METHODS.get(method), pairs, self.device, sequence=self.sequence, backbone=self.backbone,
                       seed=seed, quick=self.quick)

    def harness(self, cfg, reuse_stages: bool = False, **speed) -> tuple[float, dict]:
        """Seconds and metrics of one fresh harness run (its own results directory). Shared stages
        are trained, not reused, unless asked: a timed run must do all of its method's work."""
        out = tempfile.mkdtemp(dir=self.scratch)
        t0 = time.perf_counter()
        metrics = execute(cfg, out, device=self.device, threads=self.threads, cache_dir=self.cache_dir,
                          log=quiet, reuse_stages=reuse_stages, **speed)
        return time.perf_counter() - t0, metrics


def load_workload(cfg, wl: Workload):
    """The finetune model (backbone + heads, seeded as the runner seeds them) and the cached splits."""
    plans = plan_tasks(cfg)
    tasks = [TASKS.get(p.name)() for p in plans]
    backbone = build_backbone(cfg.backbone)
    model = build_method(dataclasses.replace(cfg, method="finetune", hparams={}), METHODS.get("finetune"), backbone,
                         tasks, wl.device)
    data = {name: [plan_split(backbone, task, p, name, cfg, wl.cache_dir).to(wl.device) for task, p in zip(tasks, plans)]
            for name in ("train", "val", "test")}
    return model, plans, data


def bare_loop(cfg, wl: Workload) -> list[list[float]]:
    """Plain PyTorch: the same model, tensors, AdamW groups, schedule, clipping and steps as the
    harness's `finetune` run, evaluation after every task; no run directory, hooks, checkpoints
    or metrics. Returns the score matrix (lower triangle)."""
    model, plans, data = load_workload(cfg, wl)
    backbone, heads, tasks = model.backbone, model.heads, model.tasks
    rows = []
    for i, task in enumerate(tasks):
        torch.manual_seed(task_seed(cfg.seed, i))
        body = [p for p in backbone.parameters() if p.requires_grad]
        params = list(heads[i].parameters()) + body
        opt = adamw([{"params": list(heads[i].parameters()), "lr": model.head_lr},
                     {"params": body, "lr": plans[i].lr or model.lr}], cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(plans[i].steps, cfg.warmup))
        generator = torch.Generator().manual_seed(task_seed(cfg.seed, i))
        batches = iter(())
        model.net.train()
        for _ in range(plans[i].steps):
            batch = next(batches, None)
            if batch is None:
                batches = data["train"][i].batches(cfg.batch_size, generator)
                batch = next(batches)
            with autocast(cfg.precision, wl.device.split(":")[0]):
                loss = task_loss(logits(heads[i], pooled(backbone, batch)), batch["label"], task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
        model.net.eval()
        row = []
        with torch.inference_mode(), autocast(cfg.precision, wl.device.split(":")[0]):
            for j in range(i + 1):
                hits = 0.0
                for batch in data["test"][j].batches(cfg.eval_batch_size):
                    pred, label = logits(heads[j], pooled(backbone, batch)).argmax(-1), batch["label"]
                    hits = hits + (label.gather(1, pred[:, None]).sum() if tasks[j].metric == "vqa_score"
                                   else (pred == label).sum()).double()
                row.append(float(100.0 * hits / len(data["test"][j])))
        rows.append(row)
    return rows


def pixel_splits(cfg, wl: Workload) -> dict:
    """The train and test splits as an Avalanche user's dataset holds them: the same examples, token
    ids and labels as the cached splits, but each split's distinct images as uint8 pixels (in the
    order of the cached features), for the frozen image encoder to run on per batch."""
    from bench.backbones.embedded import pixels
    from bench.data import encode
    backbone = build_backbone(cfg.backbone)

    class Pixels:  # the backbone's text encoding, images kept as pixels
        encode_texts = backbone.encode_texts
        encode_images = staticmethod(pixels)
    limits = {"train": lambda p: p.train_cap, "test": lambda p: p.test_cap}
    tasks = [(TASKS.get(p.name)(), p) for p in plan_tasks(cfg)]
    return {name: [encode(Pixels, task, task.load(name, limit=limit(p), shots=p.shots if name == "train" else None,
                                                  seed=cfg.seed, data_root=cfg.data_root, val_size=p.val_size)).to(wl.device)
                   for task, p in tasks] for name, limit in limits.items()}


def avalanche_run(method: str, cfg, wl: Workload, pixel_data: dict | None = None) -> list[list[float]]:
    """The same workload through avalanche-lib: the finetune model as a MultiTaskModule whose input
    is (split, example index) into the same tensors; one epoch of `steps` x batch examples per
    experience; after each, evaluation on the test sets seen so far (accuracy only, no loggers);
    forward passes at the harness's precision. Without `pixel_data` it reads the harness's cached
    image features (Avalanche's loop alone is compared); with it (`pixel_splits`, prepared outside
    the timing) the frozen MobileNetV2 runs on each batch's images (fp32, as the cache was
    computed), as a model written for Avalanche does."""
    from avalanche.benchmarks.scenarios import benchmark_from_datasets, task_incremental_benchmark
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.utils import as_classification_dataset
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.models import MultiTaskModule
    from avalanche.training import EWC, Naive, Replay
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.training.plugins import EvaluationPlugin
    from torch.utils.data import TensorDataset

    model, plans, data = load_workload(cfg, wl)
    if pixel_data is not None:
        from bench.backbones.embedded import MobileNetGrid
        data, trunk = pixel_data, MobileNetGrid().to(wl.device)
    # after building the trunk (its random init draws from the RNG): both variants shuffle and
    # fill the replay buffer alike
    RNGManager.set_random_seeds(cfg.seed)
    splits = [data["train"], data["test"]]
    device_type = wl.device.split(":")[0]

    class Model(MultiTaskModule):
        def __init__(self):
            super().__init__()
            self.net = model.net

        def forward_single_task(self, x, task_label):
            batch = splits[int(x[0, 0])][task_label].batch(x[:, 1])
            if pixel_data is not None and "image_feats" in batch:
                px = batch["image_feats"]  # [B, n_images, 3, H, W]
                with torch.no_grad():
                    batch["image_feats"] = trunk(px.flatten(0, 1)).view(*px.shape[:2], 4, -1)
            with autocast(cfg.precision, device_type):
                return logits(model.heads[task_label], pooled(model.backbone, batch)).float()

    def dataset(which: int, task: int, n: int):
        split = splits[which][task]
        x = torch.stack([torch.full((n,), which), torch.arange(n) % len(split)], 1)
        ds = TensorDataset(x, split.fields["label"].cpu()[x[:, 1]])
        ds.targets = ds.tensors[1].tolist()
        return as_classification_dataset(ds)

    T = len(plans)
    bench = with_classes_timeline(task_incremental_benchmark(benchmark_from_datasets(
        train=[dataset(0, t, plans[t].steps * cfg.batch_size) for t in range(T)],
        test=[dataset(1, t, len(data["test"][t])) for t in range(T)])))
    net = Model()
    hp = METHODS.get(method).HParams()
    extra = {"finetune": {}, "ewc": {"ewc_lambda": getattr(hp, "lam", 100.0), "mode": "separate"},
             "er": {"mem_size": sum(max(1, round(getattr(hp, "memory_fraction", 0.01) * len(s))) for s in data["train"])}}
    strategy = {"finetune": Naive, "ewc": EWC, "er": Replay}[method](
        model=net, optimizer=adamw([{"params": list(net.parameters()), "lr": model.lr}], cfg.weight_decay),
        criterion=torch.nn.CrossEntropyLoss(), train_mb_size=cfg.batch_size, train_epochs=1,
        eval_mb_size=cfg.eval_batch_size, device=wl.device, evaluator=EvaluationPlugin(accuracy_metrics(experience=True)),
        **extra[method])
    rows = []
    for i, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        result = strategy.eval(bench.test_stream[:i + 1])
        rows.append([100.0 * result[f"Top1_Acc_Exp/eval_phase/test_stream/Task{j:03d}/Exp{j:03d}"] for j in range(i + 1)])
    return rows


def same_scores(harness_matrix, rows) -> float:
    """Largest difference between two lower-triangular score matrices."""
    return max(abs(harness_matrix[i][j] - v) for i, row in enumerate(rows) for j, v in enumerate(row))


@dataclass
class Timing:
    wall: float = math.inf  # best wall-clock seconds
    cpu: float = math.inf   # best CPU seconds of this process (robust to other load on a shared machine)
    result: object = None
    walls: list = field(default_factory=list)  # every repeat's wall seconds, to show the spread

    @property
    def median(self) -> float:
        return sorted(self.walls)[len(self.walls) // 2]


def best_of(repeats: int, fns: dict) -> dict[str, Timing]:
    """Each candidate's best time over `repeats`; the candidates alternate, so load changes hit all."""
    out = {k: Timing() for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out[name].result = fn()
            out[name].walls.append(time.perf_counter() - w0)
            out[name].wall = min(out[name].walls)
            out[name].cpu = min(out[name].cpu, time.process_time() - c0)
    return out


def section_overhead(wl: Workload, say) -> float:
    cfg = wl.config("finetune", [("val_checks", "0")])
    r = best_of(wl.repeats, {"bare": lambda: bare_loop(cfg, wl), "harness": lambda: wl.harness(cfg)[1]})
    bare, harness = r["bare"], r["harness"]
    diff = same_scores(harness.result["matrix"], bare.result)
    say(f"(a) overhead, best of {wl.repeats}: harness {harness.wall:.2f} s / bare PyTorch loop {bare.wall:.2f} s"
        f" = {harness.wall / bare.wall:.3f} wall, {harness.cpu / bare.cpu:.3f} CPU ({harness.cpu:.2f} / {bare.cpu:.2f} s); medians"
        f" {harness.median / bare.median:.3f}  (finetune; same scores: {'yes' if diff < 1e-6 else f'no, max diff {diff:.3g}'})")
    return harness.wall / bare.wall


def section_avalanche(wl: Workload, say) -> float:
    t0 = time.perf_counter()
    try:
        import avalanche
        from avalanche.training import Naive  # noqa: F401  (the strategies import torchvision, metrics ...)
    except Exception as e:  # not installed, or it does not import beside this torch
        say(f"(b) avalanche: unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "install with `pip install -r requirements-perf.txt`")
        return math.nan
    say(f"(b) avalanche {avalanche.__version__} (import {time.perf_counter() - t0:.1f} s, not counted); seconds per run, "
        "Avalanche / harness in wall (CPU) time; `loop`: Avalanche reads the harness's cached image features; "
        "`end to end`: its model runs the frozen image encoder on each batch, as a model written for it does")
    # the images as pixels, prepared once outside the timing (only the embedded backbone's encoder is rebuilt here)
    pixel_data = pixel_splits(wl.config("finetune"), wl) if wl.backbone == "default" else None
    totals = {}
    for method, strategy in AVALANCHE_STRATEGIES.items():
        if method not in METHODS:
            say(f"    {method}: not registered here, skipped")
            continue
        cfg = wl.config(method, [("val_checks", "0")] + AVALANCHE_MATCH.get(method, []))
        fns = {"loop": lambda: avalanche_run(method, cfg, wl), "harness": lambda: wl.harness(cfg)[1]}
        if pixel_data is not None:
            fns["end to end"] = lambda: avalanche_run(method, cfg, wl, pixel_data)
        r = best_of(wl.repeats, fns)
        h = r.pop("harness")
        for kind, a in r.items():
            totals.setdefault(kind, [0.0, 0.0])
            totals[kind][0] += a.wall
            totals[kind][1] += h.wall
        final = lambda m: sum(m[-1]) / len(m[-1])  # noqa: E731
        say(f"    {method:9s} ({strategy:6s}) harness {h.wall:6.1f} s, final avg {final(h.result['matrix']):.1f}; "
            + "; ".join(f"{kind} {a.wall:6.1f} s = {a.wall / h.wall:.2f} ({a.cpu / h.cpu:.2f}), final avg {final(a.result):.1f}"
                        for kind, a in r.items()))
    if not totals:
        return math.nan
    ratios = {kind: a / h for kind, (a, h) in totals.items()}
    say("    total     " + ", ".join(f"{kind} {ratio:.2f}" for kind, ratio in ratios.items()))
    return ratios.get("end to end", ratios["loop"])


def prefix_methods() -> list[str]:
    return [m for m in METHODS.names() if METHODS.get(m).frozen_prefix is not Method.frozen_prefix]


def whole_backbone_frozen(method: str, wl: Workload) -> bool:
    from bench.prefix import FrozenPrefix
    cfg = wl.config(method)
    m = build_method(cfg, METHODS.get(method), build_backbone(cfg.backbone), [TASKS.get(p.name)() for p in plan_tasks(cfg)], "cpu")
    prefix = FrozenPrefix.of(m, cfg.precision, quiet)
    return prefix is not None and prefix.whole


def section_cache(wl: Workload, say) -> float:
    speedups = []
    for method in prefix_methods():
        r = best_of(1, {"uncached": lambda: wl.harness(wl.config(method), cache_prefix=False)[1],
                        "first": lambda: wl.harness(wl.config(method), cache_prefix=True)[1],
                        "warm": lambda: wl.harness(wl.config(method, seed=1), cache_prefix=True)[1]})
        uncached, first, warm = r["uncached"], r["first"], r["warm"]
        whole = whole_backbone_frozen(method, wl)
        diff = same_scores(uncached.result["matrix"], [row[:i + 1] for i, row in enumerate(first.result["matrix"])])
        say(f"(c) cache: {method} ({'whole backbone' if whole else 'bottom blocks'} frozen): uncached {uncached.wall:.2f} s,"
            f" cached {warm.wall:.2f} s (first cached run {first.wall:.2f} s) = {uncached.wall / warm.wall:.1f}x wall,"
            f" {uncached.cpu / warm.cpu:.1f}x CPU  (same scores: {'yes' if diff < 1e-6 else f'max diff {diff:.3g}'})")
        if whole:
            speedups.append(uncached.wall / warm.wall)
    return min(speedups) if speedups else math.nan


def startup_seconds() -> float:
    """A worker process's start-up: interpreter, torch, transformers and the harness imported."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bench.runner, bench.backbones.embedded, transformers.models.bert"],
                   cwd=Path(__file__).resolve().parent.parent, check=True, capture_output=True)
    return time.perf_counter() - t0


def makespan(durations: list[float], workers: int) -> float:
    """Longest-first greedy assignment to `workers` (what a process pool does with a queue)."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def leaderboard_methods(sequence: str) -> list[str]:
    """What `make leaderboard` runs on `sequence`: its default method set and the single-task reference."""
    return list(dict.fromkeys(["single_task", *method_set(["default"], sequence, METHODS.names())]))


def section_leaderboard_estimate(wl: Workload, say, seeds: int = 3) -> float:
    """Each method run at two short budgets (1/8 and 1/4 of the sequence's steps per task): their
    difference is the cost of training steps alone (evaluation, validation checks and set-up are the
    same in both), extrapolated to the full steps; stages shared between methods are trained by the
    first method that needs them, as in the suite. Then scheduled as the local executor runs them:
    one queue over one one-thread worker per core. Wall seconds (as measured here) and CPU seconds
    (what an otherwise idle core would take)."""
    workers = os.cpu_count() or 1
    plans = plan_tasks(wl.config("finetune"))
    per_task = max(p.steps for p in plans)
    short = (max(1, round(per_task / 8)), max(2, round(per_task / 4)))
    full = sum(p.steps for p in plans)
    per_run = {"wall": {}, "cpu": {}}
    for method in leaderboard_methods(wl.sequence):
        r = best_of(1, {n: lambda n=n: wl.harness(wl.config(method, [("steps", str(n))]), reuse_stages=True)[1]
                        for n in short})
        (n1, t1), (n2, t2) = r.items()
        for kind, runs in per_run.items():
            c1, c2 = getattr(t1, kind), getattr(t2, kind)
            runs[method] = c1 + max(0.0, c2 - c1) / (len(plans) * (n2 - n1)) * (full - len(plans) * n1)
    startup = startup_seconds()
    totals = {}
    for kind, runs in per_run.items():
        totals[kind] = startup + makespan([s for s in runs.values() for _ in range(seeds)], workers)
    say(f"(d) leaderboard: ESTIMATED {totals['wall']:.0f} s = {totals['wall'] / 60:.1f} min wall "
        f"({totals['cpu'] / 60:.1f} min from CPU time); {len(per_run['wall'])} methods x {seeds} seeds on {workers} "
        f"one-thread workers, from runs of {short[0]} and {short[1]} steps per task extrapolated to {full} steps; "
        f"warm data cache; worker start-up {startup:.1f} s. Seconds per run, wall (CPU):")
    for method, s in sorted(per_run["wall"].items(), key=lambda kv: -kv[1]):
        say(f"    {method:22s} {s:7.1f} ({per_run['cpu'][method]:.1f})")
    return totals["wall"]


def section_leaderboard(wl: Workload, say, seeds=(0, 1, 2)) -> float:
    """The real thing: `make leaderboard`'s `run --methods default --seeds 0 1 2` from an empty
    cache, timed, with each method's run times."""
    from bench.report import write_report
    out = Path(tempfile.mkdtemp(dir=wl.scratch))
    sets = [("cache_dir", str(out / "empty-cache"))] + ([("steps", str(wl.steps))] if wl.steps else [])
    t0 = time.perf_counter()
    outcomes = run_suite(["default"], list(seeds), sets, out=str(out), sequence=wl.sequence, backbone=wl.backbone,
                         quick=wl.quick)
    write_report(out)
    total = time.perf_counter() - t0
    rc = 1 if any(o.status == "failed" for o in outcomes) else 0
    per_method = {}
    for m in finished_runs(out):
        per_method.setdefault(m["method"], []).append(m["time"]["total_s"])
    say(f"(d) leaderboard: MEASURED {total:.0f} s = {total / 60:.1f} min wall (exit code {rc}); per method, "
        "seconds per run (mean over seeds) and the sum:")
    for method, ts in sorted(per_method.items(), key=lambda kv: -sum(kv[1])):
        say(f"    {method:22s} {sum(ts) / len(ts):7.1f} x {len(ts)} = {sum(ts):7.1f}")
    return total


def section_parallel(wl: Workload, say) -> None:
    """Two runs (finetune seeds 0 and 1, plus their single-task references, a quarter of the steps)
    as two one-thread workers vs one two-thread worker; compared on the runs' own times (imports
    and worker start-up excluded): side by side = the longest run of each wave, one after another =
    the sum."""
    steps = max(1, round(sum(p.steps for p in plan_tasks(wl.config("finetune"))) / len(plan_tasks(wl.config("finetune"))) / 4))
    results = {}
    for threads, workers in ((1, 2), (2, 1)):
        out = Path(tempfile.mkdtemp(dir=wl.scratch))
        run_suite(["finetune"], [0, 1], [("cache_dir", str(wl.cache_dir)), ("steps", str(steps)), ("reuse_stages", "false")],
                  out=str(out), threads=threads, workers=workers, sequence=wl.sequence, backbone=wl.backbone)
        runs = finished_runs(out)
        waves = [[m["time"]["total_s"] for m in runs if (m["method"] == "single_task") == ref] for ref in (True, False)]
        results[threads] = sum(max(w) for w in waves if w) if workers == 2 else sum(sum(w) for w in waves)
    say(f"(e) parallel: 4 runs as 2 workers x 1 thread {results[1]:.1f} s vs 1 worker x 2 threads {results[2]:.1f} s"
        f" = {results[2] / results[1]:.2f}x faster side by side")


def section_precision(wl: Workload, say) -> None:
    """finetune at fp32 vs bf16 autocast (what precision=auto picks on AMX CPUs and bf16 GPUs), and
    on a GPU also bf16 + torch.compile."""
    cfgs = {"fp32": wl.config("finetune", [("val_checks", "0"), ("precision", "fp32")]),
            "bf16": wl.config("finetune", [("val_checks", "0"), ("precision", "bf16")])}
    fns = {k: lambda c=c: wl.harness(c)[1] for k, c in cfgs.items()}
    if wl.device.startswith("cuda"):
        fns["bf16+compile"] = lambda: wl.harness(cfgs["bf16"], compile=True)[1]
    r = best_of(wl.repeats, fns)
    final = {k: sum(t.result["matrix"][-1]) / len(t.result["matrix"][-1]) for k, t in r.items()}
    say(f"(f) precision (auto resolves to {wl.config('finetune').precision} here): "
        + ", ".join(f"{k} {t.wall:.2f} s ({r['fp32'].wall / t.wall:.2f}x, final avg {final[k]:.1f})" for k, t in r.items()))


def fill_cache(wl: Workload) -> float:
    """Encode every split of the workload once (image features, tokens), so no section pays for it."""
    t0 = time.perf_counter()
    cfg = wl.config("finetune")
    load_workload(cfg, wl)
    return time.perf_counter() - t0


def scratch_cache(shared: Path, scratch: Path) -> Path:
    """A cache whose data entries (image features, encoded splits) are the shared cache's and whose
    frozen-prefix states and shared stages start empty, so (c)'s first cached run computes them."""
    cache = scratch / "cache"
    cache.mkdir()
    for part in ("images", "splits"):
        (shared / part).mkdir(parents=True, exist_ok=True)
        (cache / part).symlink_to((shared / part).resolve())
    return cache


def main(wl: Workload, sections=SECTIONS, estimate_leaderboard: bool = False, say=print) -> dict:
    torch.set_num_threads(wl.threads)
    wl.scratch.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=wl.scratch, prefix="perf-"))
    wl.scratch = scratch
    wl.cache_dir = scratch_cache(wl.cache_dir, scratch)
    numbers = dict.fromkeys(("overhead_ratio", "avalanche_ratio", "cache_speedup", "leaderboard_s", "rss_growth",
                             "stream_ratio"), math.nan)
    try:
        steps = [p.steps for p in plan_tasks(wl.config("finetune"))]
        say(f"perf: sequence {wl.sequence}, backbone {wl.backbone}, {len(steps)} tasks x {steps[0]} steps, "
            f"{wl.threads} thread(s), device {wl.device}, torch {torch.__version__}, {os.cpu_count()} cores; "
            f"cache {wl.cache_dir}")
        say(f"data cache filled in {fill_cache(wl):.1f} s")
        if "a" in sections:
            numbers["overhead_ratio"] = section_overhead(wl, say)
        if "b" in sections:
            numbers["avalanche_ratio"] = section_avalanche(wl, say)
        if "c" in sections:
            numbers["cache_speedup"] = section_cache(wl, say)
        if "d" in sections:
            leaderboard = section_leaderboard_estimate if estimate_leaderboard else section_leaderboard
            numbers["leaderboard_s"] = leaderboard(wl, say)
        if "e" in sections:
            section_parallel(wl, say)
        if "f" in sections:
            section_precision(wl, say)
        if "g" in sections:
            from bench.perf_scale import section_scale
            numbers["rss_growth"], numbers["stream_ratio"] = section_scale(wl, say)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(" ".join(f"{k}={v:.3f}" if k != "leaderboard_s" else f"{k}={v:.0f}" for k, v in numbers.items()))
    return numbers
