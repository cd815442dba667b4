"""One run: a method through a sequence. Evaluates after every task, checkpoints after every
task, resumes from the last finished task, and writes `DONE` last."""
import fcntl
import platform
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
from bench.context import TaskContext
from bench.data import load_split
from bench.errors import BenchError
from bench.evaluate import SettledScores, per_example_scores, score
from bench.examples import cell_score
from bench.identity import data_fingerprint
from bench.novel import planned_task, result as novel_result, score_row as score_novel_row
from bench.probe import RetentionProbe, probe_kind, result as probe_result, splits as probe_splits
from bench.peak_memory import run_peak_mb
from bench.precision import compile_backbone
from bench.prefix import FrozenPrefix
from bench.registry import METHODS
from bench.run_state import RunState
from bench.settings import label_space, setting_of
from bench.store import read_done, remove_partial_files, runs_dir, write_json, write_text
from bench.reuse import fit_or_reuse
from bench.task_id import Router, task_id_source
from bench.train import fit, param_groups

REPO = Path(__file__).resolve().parent.parent


def task_seed(seed: int, t: int) -> int:
    """Per-task RNG seed, so a resumed run draws exactly what an uninterrupted one would."""
    return zlib.crc32(f"{seed}-{t}".encode())


def reference_config(cfg: RunConfig) -> RunConfig:
    """The single-task reference (S_j) run matching `cfg`: same sequence, backbone, seed, budget."""
    base = {k: v for k, v in cfg.identity().items() if k not in ("method", "hparams", "lr", "head_lr")}
    base["setting"] = cfg.setting  # task-IL leaves it out of the identity
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
                reuse_stages: bool = True, reuse_scores: bool = True, compile: bool = False,
                rerun: bool = False) -> tuple[str, dict]:
    """Run `cfg`; returns (status, metrics) with status "done" (finished before), "waited" (another
    process finished it while this one waited for the lock), "resumed" (continued from the last
    finished task of a killed attempt) or "trained". With wait=False raises RunBusy instead of
    waiting for another process. `rerun` trains a finished run again from its first task."""
    run_dir = runs_dir(out) / cfg.run_id
    done = None if rerun else read_done(run_dir)
    if done is not None:
        return "done", done
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    with run_lock(run_dir, wait, log) as waited:
        done = read_done(run_dir) if waited or not rerun else None
        if done is not None:
            return ("waited" if waited else "done"), done
        if rerun:  # DONE first: a rerun killed half-way is an unfinished run, never a finished one
            for name in ("DONE", "metrics.json", "checkpoint.pt", "progress.json"):
                (run_dir / name).unlink(missing_ok=True)
        if (run_dir / "DONE").exists():
            log(f"[{cfg.run_id}] DONE but its metrics.json is unreadable: redoing the run")
            (run_dir / "DONE").unlink()
        remove_partial_files(run_dir)
        write_json(run_dir / "config.json", cfg.identity())
        with loggers.for_run(cfg.run_id, run_dir, cfg.identity(), lambda: provenance(cfg, device)) as run_log:
            return _execute(cfg, run_dir, device, cache_dir, log, cache_prefix, reuse_stages, reuse_scores, compile, run_log)


def _execute(cfg: RunConfig, run_dir: Path, device: str, cache_dir: Path, log,
             cache_prefix: bool = True, reuse_stages: bool = True, reuse_scores: bool = True,
             compile: bool = False, run_log=None) -> tuple[str, dict]:
    started = time.time()
    run = Run(cfg, device, cache_dir, log, cache_prefix, cache_dir if reuse_stages else None, run_log)
    state = RunState(run_dir, run.method, log, cfg.run_id)
    state.resume(len(run.tasks))
    run.train_sequence(state, reuse_scores, compile)
    run.learn_downstream_tasks(state)
    result = finish(cfg, run_dir, state.progress, run.tasks, run.method, device, time.time() - started,
                    run.beside_results(state.progress), run_log)
    state.finished()
    return ("resumed" if state.resumed else "trained"), result


class Run:
    """One run's method and data, built and encoded before any training: every split of every
    task (downstream ones too) is read, so validated, first."""

    def __init__(self, cfg: RunConfig, device: str, cache_dir: Path, log, cache_prefix: bool, reuse_dir: Path | None,
                 run_log=None):
        self.cfg, self.device, self.cache_dir, self.log = cfg, device, cache_dir, log
        self.cache_prefix, self.reuse_dir, self.run_log = cache_prefix, reuse_dir, run_log  # run_log: bench.loggers.RunLog
        self.plans, self.down_plans, probe_plans = plan_tasks(cfg), plan_tasks(cfg, "downstream"), plan_tasks(cfg, "probe")
        self.tasks = [planned_task(p) for p in self.plans]
        self.down_tasks = [planned_task(p) for p in self.down_plans]
        probe_tasks = [planned_task(p) for p in probe_plans]
        for task in self.tasks + self.down_tasks + probe_tasks:
            task.prepare(cfg.data_root)  # label spaces that live in the files (answer vocabularies, class folders)
        backbone = build_backbone(cfg.backbone)
        check_modalities(type(backbone), cfg.backbone, self.tasks + self.down_tasks + probe_tasks)
        self.space = label_space(setting_of(cfg), cfg.sequence, self.tasks, [backbone.pooled_size(t) for t in self.tasks],
                                 self.down_tasks)
        self.method = build_method(cfg, METHODS.get(cfg.method), backbone, self.space.views(self.tasks) if self.space else self.tasks,
                                   device, self.space)

        def split(task, p, name):
            return plan_split(backbone, task, p, name, cfg, cache_dir).to(device)
        # as loaded: each downstream method is fresh and attaches its own frozen prefix
        self.data = {name: [split(task, p, name) for task, p in zip(self.tasks, self.plans)] for name in ("train", "val", "test")}
        # beside the matrix: novel-composition splits (bench/novel.py), never-trained probe tasks (bench/probe.py)
        self.novel = {j: split(task, p, "novel") for j, (task, p) in enumerate(zip(self.tasks, self.plans)) if task.holdout}
        self.router = None
        if self.space is not None:  # labels as indices of the union; test examples routed without their task id
            self.data = {name: [self.space.remap(s, t) for t, s in enumerate(splits)] for name, splits in self.data.items()}
            self.novel = {j: self.space.remap(s, j) for j, s in self.novel.items()}
            self.router = Router(self.method, self.space, cfg, self.data, self.novel, cache_dir, device)
        self.down_data = [{name: split(task, p, name) for name in ("train", "val", "test")}
                          for task, p in zip(self.down_tasks, self.down_plans)]
        probe_data = [{name: split(task, p, name) for name in probe_splits(probe_kind(backbone, task))}
                      for task, p in zip(probe_tasks, probe_plans)]
        self.probe = RetentionProbe(backbone, probe_tasks, probe_data, cfg.eval_batch_size, cfg.precision) if probe_tasks else None
        self.skipped = self.skipped_images() if cfg.skip_bad_images else None

    def skipped_images(self) -> dict:
        """{task: {split: {"images", "examples"[, "first"]}}}: what skip_bad_images dropped, logged."""
        per_task = [{name: self.data[name][k] for name in self.data} for k in range(len(self.tasks))] + self.down_data
        out = {}
        for task, splits in zip(self.tasks + self.down_tasks, per_task):
            out[task.name] = {name: split.skipped or {"images": 0, "examples": 0} for name, split in splits.items()}
            for name, s in out[task.name].items():
                if s["images"]:
                    self.log(f"[{self.cfg.run_id}] {task.name} {name}: skipped {s['images']} unreadable images and "
                             f"their {s['examples']} examples (first: {s['first']})")
        return out

    def with_prefix(self, method, data: dict):
        """(method's frozen prefix, `data` starting from it) -- computed once per example and cached
        on disk, or per batch without the cache -- or (None, data) when the method declares none."""
        prefix = FrozenPrefix.of(method, self.cfg.precision, self.log)
        if prefix is None:
            return None, data
        attach = (lambda s: prefix.attach(s, self.cache_dir, self.cfg.eval_batch_size)) if self.cache_prefix else prefix.on_the_fly
        return prefix, {name: [attach(s) for s in splits] for name, splits in data.items()}

    def train_sequence(self, state: RunState, reuse_scores: bool, compile: bool) -> None:
        """Train the tasks not yet finished, one after another (all at once for a joint method),
        scoring the seen tasks and checkpointing after each."""
        cfg, method, tasks, progress, T = self.cfg, self.method, self.tasks, state.progress, len(self.tasks)
        prefix, data = self.with_prefix(method, self.data)  # after resuming: the prefix's weights are final
        # computing the prefix for the training and validation data is training: the first task pays it
        prefix_s = 0.0 if prefix is None or progress["rows"] else sum(prefix.seconds.get(id(s), 0.0) for s in data["train"] + data["val"])
        if compile:
            compile_backbone(method)
        # a compiled forward runs its ops out of sight of the trace that settles a score; in class- and
        # domain-IL the predictions also read what the trace cannot see (the classes seen, the routing)
        scores = SettledScores(method) if reuse_scores and method.isolates_tasks and not compile and not self.space else None
        groups = [[t] for t in range(T)] if not method.joint else [list(range(T))]
        if self.probe and not progress.get("probe"):
            progress["probe"] = [self.probe.row(method, None)]  # before the first task: the pretrained backbone
        for group in groups[len(progress["rows"]) if not method.joint else len(progress["rows"]) // T:]:
            t0, i = time.time(), group[-1]
            if self.space is not None:
                self.space.through(i, self.device)
            trainable, stage_costs = train_group(method, group, self.plans, data, cfg, prefix, self.reuse_dir, self.run_log)
            train_s = time.time() - t0 + reused_seconds(stage_costs) + prefix_s
            prefix_s = 0.0
            if method.joint:
                progress["rows"] += [[None] * T for _ in range(T - 1)]
            row = [None] * T
            for j in range(i + 1) if method.evaluates_seen_tasks else [i]:
                args = (j, data["test"][j], cfg.eval_batch_size, cfg.precision)
                values = scores.examples(*args) if scores else per_example_scores(method, *args, models=self.routed(progress, i, j))
                row[j] = cell_score(values)
                state.examples.record(len(progress["rows"]), j, values, data["test"][j].key)
            progress["rows"].append(row)
            self.score_beside(progress, i, row)
            progress.setdefault("diagnostics", {})[str(i)] = method.diagnostics(i, data["test"][i])
            progress["train_s"] += [train_s / len(group)] * len(group)
            progress["trainable"] += [trainable] * len(group)
            progress["fit"] += stage_costs
            state.save()
            if self.run_log:
                self.run_log.on_task(i, [t.name for t in tasks], row, train_s)
            self.log(f"[{cfg.run_id}] task {i + 1}/{T} {'+'.join(tasks[t].name for t in group)}: "
                     + " ".join("-" if v is None else f"{v:.1f}" for v in row) + f"  ({train_s:.1f}s)")

    def score_beside(self, progress: dict, i: int, row: list) -> None:
        """After task i (its row of the matrix is the last): the novel-composition scores of the tasks
        `row` scored, and the probe tasks' scores; rows a joint method skipped stay None."""
        n, T = len(progress["rows"]), len(self.tasks)
        if self.novel:
            novel = progress.setdefault("novel", [])
            novel += [[None] * T for _ in range(n - 1 - len(novel))]
            seen = [j for j, v in enumerate(row) if v is not None]
            novel.append(score_novel_row(self.method, self.novel, seen, T, self.cfg.eval_batch_size, self.cfg.precision,
                                         lambda j: self.routed(progress, i, j, novel=True)))
        if self.probe:
            probe = progress["probe"]
            probe += [[None] * len(self.probe.tasks) for _ in range(n - len(probe))]
            probe.append(self.probe.row(self.method, i))

    def beside_results(self, progress: dict) -> dict:
        """metrics.json's "novel" and "probe" entries, where the sequence has them, and
        "skipped_images" with skip_bad_images."""
        out = {} if self.skipped is None else {"skipped_images": self.skipped}
        if self.novel:
            out["novel"] = novel_result(progress["novel"], progress["rows"], self.tasks, self.novel)
        if self.probe:
            out["probe"] = probe_result(progress["probe"], self.probe.tasks, self.probe.kinds)
        return out

    def routed(self, progress: dict, i: int, j: int, novel: bool = False):
        """Class- / domain-IL: the task index each of task j's test (or novel) examples is predicted
        with after task i (bench/task_id.py), with the predicted task id's accuracy (%) on the test
        split in `progress`."""
        if self.router is None:
            return None
        test = self.novel[j] if novel else self.data["test"][j]
        models = self.router.models(i, j, len(test), test.fields["label"].device, novel)
        if self.router.source == "predicted" and not novel:
            rows = progress.setdefault("task_id_accuracy", [])
            rows += [[None] * len(self.tasks) for _ in range(i + 1 - len(rows))]
            rows[i][j] = 100.0 * float((models == j).double().mean())
        return models

    def learn_downstream_tasks(self, state: RunState) -> None:
        done = state.progress["downstream"]
        for task, plan, task_data in list(zip(self.down_tasks, self.down_plans, self.down_data))[len(done):]:
            done.append(learn_downstream(self, task, plan, task_data))
            state.save()
            self.log(f"[{self.cfg.run_id}] downstream {task.name}: {done[-1]['score']:.1f}")


def plan_split(backbone, task, plan, name: str, cfg: RunConfig, cache_dir: Path):
    """Split `name` of a planned task, encoded (from the cache when it is there)."""
    limit = {"train": plan.train_cap, "test": plan.test_cap, "novel": plan.test_cap, "val": None}[name]
    return load_split(backbone, task, name, cache_dir, limit=limit, shots=plan.shots if name == "train" else None,
                      seed=cfg.seed, data_root=cfg.data_root, val_size=plan.val_size,
                      files=data_fingerprint(task, cfg.data_root), skip_bad=cfg.skip_bad_images)


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
        task = planned_task(p)
        task.prepare(cfg.data_root)
        for name in ("train", "val", "test") + (("novel",) if task.holdout else ()):
            plan_split(backbones[cfg.backbone], task, p, name, cfg, cache_dir)


def build_method(cfg: RunConfig, method_cls, backbone, tasks, device: str, space=None):
    torch.manual_seed(task_seed(cfg.seed, -1))  # heads and method modules: seeded per run
    method = method_cls(backbone, tasks, method_cls.HParams(**cfg.hparams))
    if space is not None:  # class- / domain-IL: one head per input format (bench/settings.py)
        space.share_heads(method)
    method.setup()
    method.net.to(device)
    return method


def train_group(method, group: list[int], plans, data: dict, cfg: RunConfig, prefix=None,
                reuse_dir: Path | None = None, run_log=None) -> tuple[int, list[dict]]:
    """Train tasks `group` (one task; all of them for a joint method) through the method's stages;
    a shared stage is reused from `reuse_dir` when a run has trained it (bench/reuse.py); steps are
    reported to `run_log` (bench.loggers.RunLog) when a logger is on. Returns
    the most parameters trained at once and each stage's cost."""
    i = group[-1]
    names = "+".join(method.tasks[t].name for t in group)
    # the task's own settings; a joint group takes its last task's learning rate
    ctx = TaskContext(task=i, tasks=tuple(group), train_data=data["train"], seed=task_seed(cfg.seed, i),
                      lr=first_set(plans[i].lr, type(method).lr), head_lr=first_set(cfg.head_lr, type(method).head_lr),
                      precision=cfg.precision, run_log=run_log)
    torch.manual_seed(ctx.seed)
    method.begin_task(ctx)
    if prefix is not None:
        prefix.check()  # the cached states stay valid only while the prefix stays frozen
    trainable, stage_costs = 0, []
    for stage in method.stages(i):
        s0 = time.time()
        stage_ctx = ctx.at(stage)
        method.begin_stage(stage_ctx)
        train = {t: data["train"][t].head(stage.data) for t in group}
        val = {t: data["val"][t] for t in group}
        steps = max(1, round(stage.steps * sum(plans[t].steps for t in group)))

        def fit_stage():
            return fit(method, stage_ctx, train, val, steps=steps, cfg=cfg, desc=f"{cfg.method} s{cfg.seed} {names} {stage.name}")
        if stage.shared and reuse_dir is not None:
            stats = fit_or_reuse(fit_stage, method, stage.shared, param_groups(method, stage_ctx), train, val, steps, cfg,
                                 ctx.seed, reuse_dir)
        else:
            stats = fit_stage()
        trainable = max(trainable, stats["trainable"])
        reused = {"reused": True} if stats.get("reused") else {}
        stage_costs.append({"task": i, "stage": stage.name, "steps": steps, "examples": sum(len(d) for d in train.values()),
                            "trainable": stats["trainable"], "seconds": stats.get("seconds", time.time() - s0),
                            "val_best": stats["val_best"], "best_step": stats["best_step"], **reused})
    method.end_task(ctx)
    return trainable, stage_costs


def first_set(*values):
    return next(v for v in values if v is not None)


def reused_seconds(stage_costs: list[dict]) -> float:
    """What the reused stages took where they were trained: a method's training cost counts them."""
    return sum(c["seconds"] for c in stage_costs if c.get("reused"))


def learn_downstream(run: Run, task, plan, task_data) -> dict:
    """CLiMB's phase II: a downstream task is learnt on its own, right after the upstream sequence,
    by the same method (as one more task, index T) from the upstream model. A fresh backbone and
    method over the upstream tasks + this one take the upstream state, so every downstream task
    starts from the same point and none sees another."""
    cfg, upstream, tasks = run.cfg, run.method, run.tasks
    t0, T = time.time(), len(tasks)
    method = build_method(cfg, type(upstream), build_backbone(cfg.backbone), tasks + [task], run.device)
    state, carried = method.state_dict(), upstream.state_dict()
    clash = next((k for k, v in carried.items() if k in state and state[k].shape != v.shape), None)
    if clash is not None:
        raise BenchError(f"method '{cfg.method}': state '{clash}' changes shape with the number of tasks, "
                         "so a downstream task cannot start from the upstream model")
    method.load_state_dict({**state, **{k: v for k, v in carried.items() if k in state}})
    prefix, data = run.with_prefix(method, {name: run.data[name] + [task_data[name]] for name in run.data})
    trainable, stage_costs = train_group(method, [T], run.plans + [plan], data, cfg, prefix, run.reuse_dir, run.run_log)
    return {"task": task.name, "score": score(method, T, data["test"][T], cfg.eval_batch_size, cfg.precision),
            "chance": task.chance, "shots": plan.shots, "train_examples": len(task_data["train"]),
            "trainable": trainable, "train_s": time.time() - t0 + reused_seconds(stage_costs), "stages": stage_costs}


def setting_record(cfg: RunConfig, method, progress: dict) -> dict:
    """metrics.json's setting; in class- / domain-IL where predictions took the task id from and,
    where it was predicted, the prediction's accuracy (%) per evaluated cell (i, j)."""
    setting = setting_of(cfg)
    if setting == "task":
        return {"setting": setting}
    accuracy = {"task_id_accuracy": progress["task_id_accuracy"]} if "task_id_accuracy" in progress else {}
    return {"setting": setting, "task_id": task_id_source(method), **accuracy}


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


def finish(cfg, run_dir, progress, tasks, method, device, total_s, beside: dict, run_log=None) -> dict:
    A = progress["rows"]
    chance = [t.chance for t in tasks]
    single = single_task_scores(cfg, run_dir, A)
    peak = run_peak_mb(device)
    result = {
        "run_id": cfg.run_id, "method": cfg.method, "sequence": cfg.sequence, "backbone": cfg.backbone,
        "seed": cfg.seed, "tasks": [t.name for t in tasks], "matrix": A, "chance": chance,
        "single_task": single, "summary": metrics.summary(A, chance, single),
        "params": {"trainable_per_task": progress["trainable"], **method.param_report()},
        "time": {"train_s_per_task": progress["train_s"], "total_s": total_s},
        "peak_mem_mb": peak, "stages": progress["fit"], "provenance": provenance(cfg, device), **beside,
    }
    if any(progress.get("diagnostics", {}).values()):
        result["diagnostics"] = progress["diagnostics"]
    result.update(setting_record(cfg, method, progress))
    if progress.get("downstream"):
        result["downstream"] = downstream_transfer(cfg, run_dir, progress["downstream"])
    write_json(run_dir / "metrics.json", result)
    if run_log:
        run_log.on_finish(result)
    write_text(run_dir / "DONE", cfg.run_id + "\n")
    return result
