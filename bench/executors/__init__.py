"""Executors dispatch a suite's runs, one run per process, through an existing engine: `local`
(a process pool), `slurm` (submitit job arrays), `ray` (Ray tasks). Whichever ran them, runs have
the same ids and write the same results store, so a suite started with one executor can be
finished with another, and `report` reads whatever has finished.

An executor is a class registered with `@EXECUTORS.register(name)`: its `Options` dataclass holds
the `--set <name>.<field>=value` options, and `run(waves)` sends `run_one` to its workers and
returns one `Outcome` per run."""
import traceback
import typing
from collections import Counter
from dataclasses import dataclass

from bench.config import _coerce
from bench.errors import BenchError, did_you_mean
from bench.registry import Registry
from bench.store import StorageError, runs_dir, write_text

EXECUTORS = Registry("executor", ("bench.executors",))

# What happened to a run, in the order `summarize` lists them.
STATUSES = {"trained": "trained", "resumed": "resumed from a checkpoint", "done": "already done",
            "waited": "finished by another process", "busy": "busy in another process", "failed": "failed"}


@dataclass
class Outcome:
    run_id: str
    status: str  # a key of STATUSES
    error: str | None = None


def run_one(cfg, opts, wait: bool = True) -> Outcome:
    """Worker entry of every executor. A failure of this run alone (bad data, a non-finite loss, a
    bug) is recorded in its FAILED file and returned, so the rest of the suite goes on; a storage
    error (full disk: every run would fail) is raised. With wait=False a run that another process
    holds is returned as "busy" instead of waited for."""
    from bench.runner import RunBusy, execute_run
    failed = runs_dir(opts.out) / cfg.run_id / "FAILED"
    try:
        status, _ = execute_run(cfg, opts.out, device=opts.device, threads=opts.threads,
                                cache_dir=opts.cache_dir, wait=wait, cache_prefix=opts.cache_prefix,
                                reuse_stages=opts.reuse_stages, reuse_scores=opts.reuse_scores, compile=opts.compile,
                                rerun=opts.rerun)
        failed.unlink(missing_ok=True)
        return Outcome(cfg.run_id, status)
    except RunBusy:
        return Outcome(cfg.run_id, "busy")
    except StorageError:
        raise
    except BenchError as e:
        err = str(e)
    except Exception as e:  # recorded, reported, and the rest of the suite goes on
        err = f"{type(e).__name__}: {e} ({traceback.format_exc(limit=-1).splitlines()[1].strip()})"
    return record_failure(opts, cfg.run_id, err)


def record_failure(opts, run_id: str, error: str) -> Outcome:
    """Write the run's FAILED file (read by the report) and return its outcome."""
    write_text(runs_dir(opts.out) / run_id / "FAILED", error + "\n")
    return Outcome(run_id, "failed", error)


class Executor:
    """Base of the executors: `opts` are the suite's ExecOptions, `options` this executor's."""

    @dataclass
    class Options:
        pass

    def __init__(self, opts, options):
        self.opts = opts
        self.options = options

    def run(self, waves) -> list[Outcome]:
        """Run every wave (a list of RunConfigs) after the previous one has finished."""
        raise NotImplementedError


def executor_sets(sets: list[tuple[str, str]]) -> tuple[list, dict]:
    """Split `--set` pairs into run settings and `<executor>.<field>` options by executor."""
    run_sets, options = [], {}
    for key, raw in sets:
        owner, dot, field = key.partition(".")
        if dot and owner in EXECUTORS:
            options.setdefault(owner, []).append((field, raw))
        else:
            run_sets.append((key, raw))
    return run_sets, options


def make_executor(name: str, opts, options: dict) -> Executor:
    """The executor `name` with its `--set <name>.<field>` options checked and typed."""
    cls = EXECUTORS.get(name)
    for other in options:
        if other != name:
            raise BenchError(f"--set {other}.{options[other][0][0]}=... is an option of --executor {other}, "
                             f"not of --executor {name}")
    fields = typing.get_type_hints(cls.Options)  # name -> type
    values = {}
    for field, raw in options.get(name, []):
        if field not in fields:
            raise did_you_mean(field, fields, f"{name} option") if fields else \
                BenchError(f"executor '{name}' has no options (got --set {name}.{field})")
        values[field] = _coerce(f"{name}.{field}", raw, fields[field])
    return cls(opts, cls.Options(**values))


def summarize(outcomes: list[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    return "runs: " + ", ".join(f"{counts[s]} {label}" for s, label in STATUSES.items() if counts[s])
