"""One run: a method through a sequence. Evaluates after every task, checkpoints after every
task, resumes from the last finished task, and writes `DONE` last."""
import fcntl
import os
import platform
import resource
import subprocess
import time
import zlib
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

from bench import loggers, metrics
from bench.backbones import build_backbone
from bench.cache import default_cache_dir
from bench.config import RunConfig, data_plans, plan_tasks, resolve
from bench.data import load_split
from bench.errors import BenchError
from bench.evaluate import SettledScores, score
from bench.precision import compile_backbone
from bench.prefix import FrozenPrefix
from bench.registry import METHODS, TASKS
from bench.store import (load_tensors, read_done, remove_partial_files, runs_dir, save_tensors, state_digest, write_json,
                         write_text)
from bench.reuse import fit_or_reuse
from bench.train import fit, param_groups

REPO = Path(__file__).resolve().parent.parent


def task_seed(seed: int, t: int) -> int:
    """Per-task RNG seed, so a resumed run draws exactly what an uninterrupted one would."""
    return zlib.crc32(f"{seed}-{t}".encode())


def reference_config(cfg: RunConfig) -> RunConfig:
    """The single-task reference (S_j) run matching `cfg`: same sequence, backbone, seed, budget."""
    base = {k: v for k, v in cfg.identity().items() if k not in ("method", "hparams", "lr", "head_lr")}
    return resolve("single_task", METHODS.get("single_task"), [], **base)


def provenance(cfg: RunConfig, device: str) -> dict:
    versions = {}
    for pkg in ("torch", "torchvision", "transformers", "numpy", "open_clip_torch", "easy-vqa"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        git = "unknown"
    return {"config": cfg.identity(), "versions": versions, "git": git, "host": platform.node(), "device": device}


class RunBusy(Exception):
    """Another process holds the run's lock (raised only when the caller chose not to wait)."""


@contextmanager
def run_lock(run_dir: Path, wait: bool = True, log=print):
    """An exclusive lock per run, so two processes never train the same run. It is an flock: the
    kernel releases it when its holder dies, even by SIGKILL, so a lock is never stale. Yields
    True when another process held it first: the caller then picks up that process's result, or
    resumes its checkpoint if it died. With wait=False a held lock raises RunBusy instead."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            if not wait:
                raise RunBusy(run_dir.name) from None
            log(f"[{run_dir.name}] being trained by another process; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = True
        yield waited


def check_modalities(backbone_cls, spec: str, tasks) -> None:
    """A task needs the encoders of its modalities: a backbone without `encode_images` cannot run
    an image or vision-language task, one without `encode_texts` a text or vision-language task."""
    from bench.backbones.base import Backbone
    for task in tasks:
        for needed, name in (("vl image", "encode_images"), ("vl text", "encode_texts")):
            if task.kind in needed.split() and getattr(backbone_cls, name, None) in (None, getattr(Backbone, name)):
                modality = name.removeprefix("encode_")
                raise BenchError(f"backbone '{spec}' cannot encode {modality} for task '{task.name}' (kind '{task.kind}')")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise BenchError(f"unknown device '{device}' (expected auto, cpu, cuda or cuda:<index>)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device '{device}' requested but CUDA is not available on {platform.node()}")
    return device


def execute(cfg: RunConfig, out, *, device: str = "auto", threads: int | None = None,
            cache_dir=None, log=print, **speed) -> dict:
    """Run `cfg` (or return its finished metrics). Raises BenchError on bad input or a non-finite loss."""
    return execute_run(cfg, out, device=device, threads=threads, cache_dir=cache_dir, log=log, **speed)[1]


def execute_run(cfg: RunConfig, out, *, device: str = "auto", threads: int | None = None,
                cache_dir=None, wait: bool = True, log=print, cache_prefix: bool = True,
                reuse_stages: bool = True, reuse_scores: bool = True, compile: bool = False) -> tuple[str, dict]:
    """Run `cfg`; returns (status, metrics) with status "done" (finished before), "waited" (another
    process finished it while this one waited for the lock), "resumed" (continued from the last
    finished task of a killed attempt) or "trained". With wait=False raises RunBusy instead of
    waiting for another process."""
    run_dir = runs_dir(out) / cfg.run_id
    done = read_done(run_dir)
    if done is not None:
        return "done", done
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    with run_lock(run_dir, wait, log) as waited:
        done = read_done(run_dir)
        if done is not None:
            return ("waited" if waited else "done"), done
        if (run_dir / "DONE").exists():
            log(f"[{cfg.run_id}] DONE but its metrics.json is unreadable: redoing the run")
            (run_dir / "DONE").unlink()
        remove_partial_files(run_dir)
        write_json(run_dir / "config.json", cfg.identity())
        with loggers.for_run(cfg.run_id, run_dir, cfg.identity(), lambda: provenance(cfg, device)):
            return _execute(cfg, run_dir, device, cache_dir, log, cache_prefix, reuse_stages, reuse_scores, compile)


def _execute(cfg: RunConfig, run_dir: Path, device: str, cache_dir: Path, log,
             cache_prefix: bool = True, reuse_stages: bool = True, reuse_scores: bool = True,
             compile: bool = False) -> tuple[str, dict]:
    started = time.time()
    reuse_dir = cache_dir if reuse_stages else None
    plans = plan_tasks(cfg)
    tasks = [TASKS.get(p.name)() for p in plans]
    down_plans = plan_tasks(cfg, "downstream")
    down_tasks = [TASKS.get(p.name)() for p in down_plans]
    for task in tasks + down_tasks:
        task.prepare(cfg.data_root)  # label spaces that live in the files (answer vocabularies, class folders)
    method_cls = METHODS.get(cfg.method)
    backbone = build_backbone(cfg.backbone)
    check_modalities(type(backbone), cfg.backbone, tasks + down_tasks)
    method = build_method(cfg, method_cls, backbone, tasks, device)

    def split(task, p, name):
        return plan_split(backbone, task, p, name, cfg, cache_dir).to(device)

    T = len(tasks)
    # every split of every task (downstream ones too) is read, so validated, and encoded before any training
    data = {name: [split(tasks[t], plans[t], name) for t in range(T)] for name in ("train", "val", "test")}
    down_data = [{name: split(task, p, name) for name in ("train", "val", "test")} for task, p in zip(down_tasks, down_plans)]
    upstream_data = data  # as loaded: each downstream method is fresh and attaches its own frozen prefix

    def with_prefix(m, data: dict):
        """(m's frozen prefix, `data` starting from it) -- computed once per example and cached on
        disk, or per batch without the cache -- or (None, data) when m declares none."""
        prefix = FrozenPrefix.of(m, cfg.precision, log)
        if prefix is None:
            return None, data
        attach = (lambda s: prefix.attach(s, cache_dir, cfg.eval_batch_size)) if cache_prefix else prefix.on_the_fly
        return prefix, {name: [attach(s) for s in splits] for name, splits in data.items()}
    # The checkpoint holds the weights and the progress together (one atomic file, so they always
    # agree); progress.json is a copy for people to read and is never read back. Its weights are
    # the tensors that differ from the model as built (which a resumed run rebuilds identically:
    # it is seeded), with the built model's digest, so it is never applied to another build: a
    # frozen backbone is not written after every task.
    progress_path, ckpt_path = run_dir / "progress.json", run_dir / "checkpoint.pt"
    progress = {"rows": [], "train_s": [], "trainable": [], "fit": [], "downstream": []}
    resumed = False
    built = {k: v.detach().clone() for k, v in method.state_dict().items()}
    built_digest = state_digest(built)
    if ckpt_path.exists():
        try:
            state = load_tensors(ckpt_path)
            if state["finished"] != len(state["progress"]["rows"]):
                raise ValueError("progress does not match the weights")
            if state.get("built") != built_digest:
                raise ValueError("it was made from another build of the model")
            method.load_state_dict({**built, **state["method"]})
            progress, resumed = state["progress"], True
            log(f"[{cfg.run_id}] resuming after task {len(progress['rows'])}/{T}")
        except Exception as e:  # a partial or corrupt checkpoint is redone, not read
            method.load_state_dict(built)  # undo a load that failed half-way
            log(f"[{cfg.run_id}] ignoring unreadable checkpoint ({type(e).__name__}: {e}); starting over")

    def checkpoint():  # not fsynced: a checkpoint damaged by a power cut is detected and redone
        changed = {k: v for k, v in method.state_dict().items() if k not in built or not torch.equal(v, built[k])}
        save_tensors(ckpt_path, {"finished": len(progress["rows"]), "method": changed, "built": built_digest,
                                 "progress": progress}, durable=False)
        write_json(progress_path, progress)
    prefix, data = with_prefix(method, data)  # after resuming: the prefix's weights are final
    method.train_data = data["train"]
    if compile:
        compile_backbone(method)
    # a compiled forward runs its ops out of sight of the trace that settles a score
    scores = SettledScores(method) if reuse_scores and method.isolates_tasks and not compile else None
    groups = [[t] for t in range(T)] if not method.joint else [list(range(T))]
    for group in groups[len(progress["rows"]) if not method.joint else len(progress["rows"]) // T:]:
        t0 = time.time()
        i = group[-1]
        names = "+".join(tasks[t].name for t in group)
        trainable, stage_costs = train_group(method, group, plans, data, cfg, prefix, reuse_dir)
        train_s = time.time() - t0 + reused_seconds(stage_costs)
        if method.joint:
            progress["rows"] += [[None] * T for _ in range(T - 1)]
        evaluated = range(i + 1) if method.evaluates_seen_tasks else [i]
        row = [None] * T
        for j in evaluated:
            args = (j, data["test"][j], cfg.eval_batch_size, cfg.precision)
            row[j] = scores.score(*args) if scores else score(method, *args)
        progress["rows"].append(row)
        progress["train_s"] += [train_s / len(group)] * len(group)
        progress["trainable"] += [trainable] * len(group)
        progress["fit"] += stage_costs
        checkpoint()
        if loggers.active():
            loggers.active().on_task(i, [t.name for t in tasks], row, train_s)
        log(f"[{cfg.run_id}] task {i + 1}/{T} {names}: "
            + " ".join("-" if v is None else f"{v:.1f}" for v in row) + f"  ({train_s:.1f}s)")
    progress.setdefault("downstream", [])
    for task, plan, task_data in list(zip(down_tasks, down_plans, down_data))[len(progress["downstream"]):]:
        progress["downstream"].append(learn_downstream(cfg, method, tasks, plans, upstream_data, task, plan, task_data, device,
                                                        with_prefix, reuse_dir))
        checkpoint()
        log(f"[{cfg.run_id}] downstream {task.name}: {progress['downstream'][-1]['score']:.1f}")
    result = finish(cfg, run_dir, progress, tasks, method, device, time.time() - started)
    if os.environ.get("MMCL_KEEP_CHECKPOINT", "1") == "0":
        ckpt_path.unlink(missing_ok=True)
    return ("resumed" if resumed else "trained"), result


def plan_split(backbone, task, plan, name: str, cfg: RunConfig, cache_dir: Path):
    """Split `name` of a planned task, encoded (from the cache when it is there)."""
    limit = {"train": plan.train_cap, "test": plan.test_cap, "val": None}[name]
    return load_split(backbone, task, name, cache_dir, limit=limit, shots=plan.shots if name == "train" else None,
                      seed=cfg.seed, data_root=cfg.data_root, val_size=plan.val_size)


def encode_suite_data(cfgs: list[RunConfig], cache_dir=None, threads: int | None = None) -> None:
    """Encode every split the runs will read into the cache, once, before parallel runs start: they
    would otherwise each encode the same images at the same time (image features, tokens)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if threads:
        torch.set_num_threads(threads)
    backbones = {}
    for cfg, p in data_plans(cfgs, backbone=True):
        if cfg.backbone not in backbones:
            backbones[cfg.backbone] = build_backbone(cfg.backbone)
        task = TASKS.get(p.name)()
        task.prepare(cfg.data_root)
        for name in ("train", "val", "test"):
            plan_split(backbones[cfg.backbone], task, p, name, cfg, cache_dir)


def build_method(cfg: RunConfig, method_cls, backbone, tasks, device: str):
    torch.manual_seed(task_seed(cfg.seed, -1))  # heads and method modules: seeded per run
    method = method_cls(backbone, tasks, method_cls.HParams(**cfg.hparams))
    if cfg.lr is not None:
        method.lr = cfg.lr
    if cfg.head_lr is not None:
        method.head_lr = cfg.head_lr
    method.setup()
    method.net.to(device)
    return method


def train_group(method, group: list[int], plans, data: dict, cfg: RunConfig, prefix=None,
                reuse_dir: Path | None = None) -> tuple[int, list[dict]]:
    """Train tasks `group` (one task; all of them for a joint method) through the method's stages;
    a shared stage is reused from `reuse_dir` when a run has trained it (bench/reuse.py). Returns
    the most parameters trained at once and each stage's cost."""
    i = group[-1]
    names = "+".join(method.tasks[t].name for t in group)
    torch.manual_seed(task_seed(cfg.seed, i))
    for t in group:
        method.begin_task(t)
        if plans[t].lr is not None:
            method.lr = plans[t].lr
    if prefix is not None:
        prefix.check()  # the cached states stay valid only while the prefix stays frozen
    trainable, stage_costs = 0, []
    for stage in method.stages(i):
        s0 = time.time()
        method.stage = stage
        method.begin_stage(i, stage)
        train = {t: data["train"][t].head(stage.data) for t in group}
        val = {t: data["val"][t] for t in group}
        steps = max(1, round(stage.steps * sum(plans[t].steps for t in group)))
        seed = task_seed(cfg.seed, i)

        def fit_stage():
            return fit(method, train, val, steps=steps, cfg=cfg, seed=seed, desc=f"{cfg.method} s{cfg.seed} {names} {stage.name}")
        if stage.shared and reuse_dir is not None:
            stats = fit_or_reuse(fit_stage, method, stage.shared, param_groups(method, train, cfg), train, val, steps, cfg,
                                 seed, reuse_dir)
        else:
            stats = fit_stage()
        trainable = max(trainable, stats["trainable"])
        reused = {"reused": True} if stats.get("reused") else {}
        stage_costs.append({"task": i, "stage": stage.name, "steps": steps, "examples": sum(len(d) for d in train.values()),
                            "trainable": stats["trainable"], "seconds": stats.get("seconds", time.time() - s0),
                            "val_best": stats["val_best"], "best_step": stats["best_step"], **reused})
    for t in group:
        method.end_task(t)
    return trainable, stage_costs


def reused_seconds(stage_costs: list[dict]) -> float:
    """What the reused stages took where they were trained: a method's training cost counts them."""
    return sum(c["seconds"] for c in stage_costs if c.get("reused"))


def learn_downstream(cfg, upstream, tasks, plans, data, task, plan, task_data, device, with_prefix=None,
                     reuse_dir=None) -> dict:
    """CLiMB's phase II: a downstream task is learnt on its own, right after the upstream sequence,
    by the same method (as one more task, index T) from the upstream model. A fresh backbone and
    method over the upstream tasks + this one take the upstream state, so every downstream task
    starts from the same point and none sees another."""
    t0, T = time.time(), len(tasks)
    method = build_method(cfg, type(upstream), build_backbone(cfg.backbone), tasks + [task], device)
    state, carried = method.state_dict(), upstream.state_dict()
    clash = next((k for k, v in carried.items() if k in state and state[k].shape != v.shape), None)
    if clash is not None:
        raise BenchError(f"method '{cfg.method}': state '{clash}' changes shape with the number of tasks, "
                         "so a downstream task cannot start from the upstream model")
    method.load_state_dict({**state, **{k: v for k, v in carried.items() if k in state}})
    data = {name: data[name] + [task_data[name]] for name in data}
    prefix, data = with_prefix(method, data) if with_prefix else (None, data)
    method.train_data = data["train"]
    trainable, stage_costs = train_group(method, [T], plans + [plan], data, cfg, prefix, reuse_dir)
    return {"task": task.name, "score": score(method, T, data["test"][T], cfg.eval_batch_size, cfg.precision),
            "chance": task.chance, "shots": plan.shots, "train_examples": len(task_data["train"]),
            "trainable": trainable, "train_s": time.time() - t0 + reused_seconds(stage_costs), "stages": stage_costs}


def reference_metrics(cfg: RunConfig, run_dir: Path) -> dict | None:
    """The finished single-task reference of `cfg`, waiting for it while another process trains it
    (executors start the references first, but need not hold every other run back until they end);
    None when it is neither done nor running."""
    ref_dir = run_dir.parent / reference_config(cfg).run_id
    ref = read_done(ref_dir)
    if ref is None and (ref_dir / "lock").exists():
        with run_lock(ref_dir, wait=True, log=lambda *_: None):
            ref = read_done(ref_dir)
    return ref


def single_task_scores(cfg: RunConfig, run_dir: Path, A) -> list | None:
    if cfg.method == "single_task":
        return [A[j][j] for j in range(len(A))]
    ref = reference_metrics(cfg, run_dir)
    return None if ref is None else ref["single_task"]


def downstream_transfer(cfg: RunConfig, run_dir: Path, downstream: list[dict]) -> list[dict]:
    """Each downstream score with CLiMB's transfer against the single-task reference's (the
    pretrained backbone learning the same low-shot task): 100 (score - S) / (S - R)."""
    ref = reference_metrics(cfg, run_dir) if cfg.method != "single_task" else None
    ref_scores = {d["task"]: d["score"] for d in (ref or {}).get("downstream", [])}
    out = []
    for d in downstream:
        s = ref_scores.get(d["task"])
        transfer = None if s is None or s == d["chance"] else 100.0 * (d["score"] - s) / (s - d["chance"])
        out.append({**d, "single_task": s, "transfer": transfer})
    return out


def finish(cfg, run_dir, progress, tasks, method, device, total_s) -> dict:
    A = progress["rows"]
    chance = [t.chance for t in tasks]
    single = single_task_scores(cfg, run_dir, A)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result = {
        "run_id": cfg.run_id, "method": cfg.method, "sequence": cfg.sequence, "backbone": cfg.backbone,
        "seed": cfg.seed, "tasks": [t.name for t in tasks], "matrix": A, "chance": chance,
        "single_task": single, "summary": metrics.summary(A, chance, single),
        "params": {"trainable_per_task": progress["trainable"], **method.param_report()},
        "time": {"train_s_per_task": progress["train_s"], "total_s": total_s},
        "peak_mem_mb": peak, "stages": progress["fit"], "provenance": provenance(cfg, device),
    }
    if progress.get("downstream"):
        result["downstream"] = downstream_transfer(cfg, run_dir, progress["downstream"])
    write_json(run_dir / "metrics.json", result)
    if loggers.active():
        loggers.active().on_finish(result)
    write_text(run_dir / "DONE", cfg.run_id + "\n")
    return result
