"""A suite: methods x seeds on one sequence/backbone. Plans run configs (adding the single-task
references that transfer needs, run first), and executes them through an executor."""
import threading
import time
import typing
from dataclasses import dataclass

from bench.config import (TASK_OPTIONS, RunConfig, TaskPlan, _coerce, data_plans, load_sequence, plan_tasks, resolve,
                          validate_set_owners)
from bench.errors import BenchError
from bench.novel import planned_task
from bench.probe import check_probe_task
from bench.registry import BACKBONES, METHODS
from bench.store import check_writable, is_done, runs_dir

MAX_SEED = 2 ** 32 - 1  # numpy's limit, for methods that seed it


@dataclass
class ExecOptions:
    out: str = "results"
    device: str = "auto"
    threads: int = 1          # torch threads per run
    workers: int | None = None  # parallel runs; default: cores // threads
    cache_dir: str | None = None  # default: the shared cache (bench/cache.py)
    cache_prefix: bool = True     # compute a method's frozen backbone prefix once per example (bench/prefix.py)
    reuse_stages: bool = True     # train a stage shared by several methods once per seed (bench/reuse.py)
    reuse_scores: bool = True     # carry settled test scores forward (bench/evaluate.py SettledScores)
    compile: bool = False         # torch.compile the backbone (GPUs)
    rerun: bool = False           # train the runs again even when they are done (`--rerun`)

    @classmethod
    def from_sets(cls, sets: list[tuple[str, str]], **flags) -> "ExecOptions":
        """Options from command-line flags, overridden by `--set device=... threads=... workers=... cache_dir=...`."""
        hints = typing.get_type_hints(cls)
        values = {k: v for k, v in flags.items() if v is not None}
        values.update({k: _coerce(k, raw, hints[k]) for k, raw in sets if k in hints and k != "out"})
        opts = cls(**values)
        for key in ("threads", "workers"):
            value = getattr(opts, key)
            if value is not None and value < 1:
                raise BenchError(f"bad {key}={value}: must be an integer >= 1")
        return opts


def plan(methods: list[str], seeds: list[int], sets: list[tuple[str, str]], device: str = "auto",
         **base) -> list[list[RunConfig]]:
    """Waves of runs: wave 0 holds the single-task references, wave 1 everything else."""
    known = METHODS.names()
    methods = method_set(methods, dict(sets).get("sequence", base.get("sequence", "default")), known)
    for m in methods:
        METHODS.get(m)  # did-you-mean for unknown names before anything runs
    validate_set_owners(sets, known)
    for s in seeds:
        if not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise BenchError(f"seeds must be integers from 0 to {MAX_SEED}, got {s}")
    from bench.runner import reference_config
    # method-major: runs side by side are mostly one method's seeds, so a stage shared by several
    # methods (bench/reuse.py) is trained by the first of them before the others reach it
    runs = [resolve(m, METHODS.get(m), sets, device, seed=s, **base) for m in methods for s in seeds]
    for cfg in runs[:1]:  # names, values and modalities are checked before anything runs
        check_config(cfg)
    refs = {r.run_id: r for r in (reference_config(c) for c in runs)}
    rest = [r for r in runs if r.run_id not in refs]
    return [list(refs.values()), rest]


def method_set(methods: list[str], sequence: str, known: list[str]) -> list[str]:
    """`all`: every registered method; `default`: the sequence's default set (its `methods:` list,
    which `make leaderboard` runs), every method when it names none; otherwise the names given."""
    if methods == ["all"]:
        return known
    if methods == ["default"]:
        return load_sequence(sequence).get("methods") or known
    return methods


# (field, check, rule) for run settings and per-task options, from --set or a sequence file
_RANGES = [
    (("batch_size", "eval_batch_size", "val_checks", "steps", "val_size"), lambda v: type(v) is int and v >= 1,
     "an integer >= 1"),
    (("train_cap", "test_cap"), lambda v: v is None or (type(v) is int and v >= 1), "an integer >= 1"),
    (("lr", "head_lr", "shots"), lambda v: v is None or (type(v) in (int, float) and v > 0), "a number > 0"),
    (("grad_clip", "steps_scale"), lambda v: type(v) in (int, float) and v > 0, "a number > 0"),
    (("weight_decay",), lambda v: type(v) in (int, float) and v >= 0, "a number >= 0"),
    (("warmup",), lambda v: type(v) in (int, float) and 0 <= v <= 1, "a number from 0 to 1"),
]


def check_config(cfg: RunConfig) -> list[TaskPlan]:
    """What would make the run fail at once, checked without loading anything: the sequence file,
    task and backbone names, value ranges, and that the backbone encodes every task's modalities."""
    from bench.runner import check_modalities
    plans = plan_tasks(cfg)
    probes = plan_tasks(cfg, "probe")
    every = plans + plan_tasks(cfg, "downstream") + probes
    for keys, ok, rule in _RANGES:
        for key in keys:
            for owner in every if key in TASK_OPTIONS else [cfg]:  # --set task options are applied to the plans
                value = getattr(owner, key)
                if not ok(value):
                    where = f" (task '{owner.name}')" if owner is not cfg else ""
                    raise BenchError(f"bad {key}={value!r}{where}: must be {rule}")
    backbone_cls = BACKBONES.get(cfg.backbone.partition(":")[0])
    tasks = [planned_task(p) for p in every]  # with their holdouts, checked
    for task in tasks[len(every) - len(probes):]:
        check_probe_task(task)
    if isinstance(backbone_cls, type):
        check_modalities(backbone_cls, cfg.backbone, tasks)
    return plans


def check_data(waves: list[list[RunConfig]]) -> None:
    """Read every task's examples once (per data options) for the runs to do, so a missing
    data_root, a malformed annotation file or an empty split is one error before anything runs,
    not the same failure in every run."""
    for cfg, p in data_plans(c for wave in waves for c in wave):
        task = planned_task(p)
        novel = (("novel", p.test_cap),) if task.holdout else ()
        for split, limit in (("train", p.train_cap), ("val", None), ("test", p.test_cap)) + novel:
            examples = task.load(split, limit=limit, shots=p.shots if split == "train" else None, seed=cfg.seed,
                                 data_root=cfg.data_root, val_size=p.val_size)
            if not examples:
                raise BenchError(f"task '{p.name}' has no {split} examples (check data_root, shots and caps)")


def run_suite(methods: list[str], seeds: list[int], sets: list[tuple[str, str]], *, out: str, threads: int = 1,
              workers: int | None = None, executor: str = "local", rerun: bool | None = None, **base) -> list:
    """What `run_bench.py run` does before its report: plan the runs and execute them through
    `executor` with its `--set <executor>.<field>` options; one Outcome per run."""
    from bench.executors import executor_sets, make_executor
    sets, executor_options = executor_sets(sets)
    opts = ExecOptions.from_sets(sets, out=out, threads=threads, workers=workers, rerun=rerun)
    runner = make_executor(executor, opts, executor_options)
    return execute_suite(plan(methods, seeds, sets, opts.device, **base), runner)
class SuiteProgress:
    """One bar for the whole suite (runs finished / total, with tqdm's rate and ETA), above the
    per-run bars. It reads the results store every `interval` seconds: a run counts once it has
    its DONE marker or a FAILED file written since the suite started, so the bar moves whichever
    executor runs the suite (a local pool, Slurm jobs, Ray tasks)."""

    def __init__(self, out, run_ids: list[str], done: int, interval: float = 2.0, **bar):
        from tqdm import tqdm
        self.dirs = [runs_dir(out) / rid for rid in run_ids]
        self.started = time.time()
        self.interval = interval
        self.bar = tqdm(total=done + len(run_ids), initial=done, desc="suite", unit="run", position=0,
                        disable=bar.pop("disable", None), **bar)
        self.done = done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def finished(self) -> int:
        """Runs of this suite finished so far (done, or failed during this suite)."""
        return sum(1 for d in self.dirs if is_done(d) or self._failed_now(d))

    def _failed_now(self, run_dir) -> bool:
        try:
            return (run_dir / "FAILED").stat().st_mtime >= self.started - 1
        except OSError:
            return False

    def update(self) -> None:
        count = self.done + self.finished()
        self.bar.update(count - self.bar.n)

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.update()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.update()
        self.bar.close()


def execute_suite(waves: list[list[RunConfig]], executor) -> list:
    """Check the output directory and the data, then send the runs not yet done through
    `executor` (a `bench.executors.Executor`) under one suite-level progress bar; returns one
    Outcome per run."""
    from bench.executors import Outcome
    out = executor.opts.out
    check_writable(out)
    done = [Outcome(c.run_id, "done") for wave in waves for c in wave
            if not executor.opts.rerun and is_done(runs_dir(out) / c.run_id)]
    finished = {o.run_id for o in done}
    todo = [[c for c in wave if c.run_id not in finished] for wave in waves]
    check_data(todo)
    with SuiteProgress(out, [c.run_id for wave in todo for c in wave], len(done)):
        return done + executor.run([wave for wave in todo if wave])
