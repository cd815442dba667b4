"""A suite: methods x seeds on one sequence/backbone. Plans run configs (adding the single-task
references that transfer needs, run first), and executes them through an executor."""
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm import tqdm

from bench.config import RunConfig, plan_tasks, resolve, validate_set_owners
from bench.errors import BenchError
from bench.registry import BACKBONES, METHODS, TASKS
from bench.store import runs_dir, write_text


@dataclass
class ExecOptions:
    out: str = "results"
    device: str = "auto"
    threads: int = 1          # torch threads per run
    workers: int | None = None  # parallel runs; default: cores // threads
    cache_dir: str | None = None  # default: the shared cache (bench/cache.py)
    cache_prefix: bool = True     # compute a method's frozen backbone prefix once per example (bench/prefix.py)
    compile: bool = False         # torch.compile the backbone (GPUs)


def plan(methods: list[str], seeds: list[int], sets: list[tuple[str, str]], **base) -> list[list[RunConfig]]:
    """Waves of runs: wave 0 holds the single-task references, wave 1 everything else."""
    known = METHODS.names()
    methods = known if methods == ["all"] else methods
    for m in methods:
        METHODS.get(m)  # did-you-mean for unknown names before anything runs
    validate_set_owners(sets, known)
    for s in seeds:
        if not isinstance(s, int) or s < 0:
            raise BenchError(f"seeds must be non-negative integers, got {s}")
    from bench.runner import reference_config
    runs = [resolve(m, METHODS.get(m), sets, seed=s, **base) for s in seeds for m in methods]
    for cfg in runs[:1]:  # names in the sequence and the backbone are checked before anything runs
        for task in plan_tasks(cfg) + plan_tasks(cfg, "downstream"):
            TASKS.get(task.name)
        BACKBONES.get(cfg.backbone.partition(":")[0])
    refs = {r.run_id: r for r in (reference_config(c) for c in runs)}
    rest = [r for r in runs if r.run_id not in refs]
    return [list(refs.values()), rest]


def _run_one(cfg: RunConfig, opts: ExecOptions):
    """Worker entry: returns (run_id, error message or None); never raises, so one failed run
    does not stop the suite."""
    from bench.runner import execute
    failed = runs_dir(opts.out) / cfg.run_id / "FAILED"
    try:
        execute(cfg, opts.out, device=opts.device, threads=opts.threads, cache_dir=opts.cache_dir,
                cache_prefix=opts.cache_prefix, compile=opts.compile)
        failed.unlink(missing_ok=True)
        return cfg.run_id, None
    except BenchError as e:
        err = str(e)
    except Exception as e:  # recorded, reported, and the rest of the suite goes on
        err = f"{type(e).__name__}: {e} ({traceback.format_exc(limit=-1).splitlines()[1].strip()})"
    write_text(failed, err + "\n")
    return cfg.run_id, err


def run_local(waves: list[list[RunConfig]], opts: ExecOptions) -> dict:
    """Process pool sized to the cores, `opts.threads` torch threads per run (no oversubscription)."""
    workers = opts.workers or max(1, (os.cpu_count() or 1) // max(1, opts.threads))
    failures = {}
    total = sum(len(w) for w in waves)
    with tqdm(total=total, desc="runs", disable=None) as bar:
        for wave in waves:
            if workers == 1 or len(wave) == 1:
                results = (_run_one(cfg, opts) for cfg in wave)
                for run_id, err in results:
                    _record(run_id, err, failures, bar)
                continue
            import multiprocessing as mp
            with ProcessPoolExecutor(min(workers, len(wave)), mp_context=mp.get_context("spawn")) as pool:
                for fut in as_completed([pool.submit(_run_one, cfg, opts) for cfg in wave]):
                    _record(*fut.result(), failures, bar)
    return failures


def _record(run_id, err, failures, bar):
    bar.update(1)
    if err:
        failures[run_id] = err
        tqdm.write(f"FAILED {run_id}: {err}")


EXECUTORS = {"local": run_local}


def execute_suite(waves, opts: ExecOptions, executor: str = "local") -> dict:
    if executor not in EXECUTORS:
        from bench.errors import did_you_mean
        raise did_you_mean(executor, EXECUTORS, "executor")
    return EXECUTORS[executor](waves, opts)
