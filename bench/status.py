"""What a results directory's runs are doing, read from the store alone (no engine is asked), so
it works from any machine that sees the directory, after the suite's driver is gone:

- finished: `DONE` and a readable `metrics.json` of the run (bench/store.py `read_done`);
- running: a process holds the run's lock (bench/runner.py `run_lock`; an flock, released by the
  kernel when its holder dies, so a killed run never shows as running);
- failed: a `FAILED` file newer than the run's last submission;
- pending: submitted (or started and interrupted) and none of the above.

A suite writes `submitted.json` into each run's directory before the executor starts (`mark_submitted`),
and an engine that has job ids adds its job (Slurm: `9_1`), so runs queued on a cluster show up
before a job has started them."""
import fcntl
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.store import read_done, read_json, runs_dir, write_json

SUBMITTED = "submitted.json"
STATES = ("finished", "running", "failed", "pending")


@dataclass
class RunStatus:
    run_id: str
    state: str  # one of STATES
    tasks_done: int
    job: str  # "<executor> <job id>" or "<executor>", "" when never submitted by a suite
    reason: str = ""  # a failed run's error


def mark_submitted(out, run_ids, executor: str, jobs=None) -> None:
    """Record that `run_ids` were handed to `executor` by this process (and their engine `jobs`, in
    the same order, when the engine has ids)."""
    for i, run_id in enumerate(run_ids):
        write_json(runs_dir(out) / run_id / SUBMITTED,
                   {"executor": executor, "job": jobs[i] if jobs else None, "host": platform.node(),
                    "pid": os.getpid(), "time": time.time()})


def run_statuses(out) -> list[RunStatus]:
    if not Path(out).is_dir():
        raise BenchError(f"no results directory {out} (the --out of `run_bench.py run`)")
    root = runs_dir(out)
    dirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.exists() else []
    return [_status(d) for d in dirs]


def _status(run_dir: Path) -> RunStatus:
    submitted = _read(run_dir / SUBMITTED) or {}
    job = " ".join(str(v) for v in (submitted.get("executor"), submitted.get("job")) if v)
    metrics = read_done(run_dir)
    if metrics is not None:
        return RunStatus(run_dir.name, "finished", len(metrics["matrix"]), job)
    tasks_done = len((_read(run_dir / "progress.json") or {}).get("rows", []))
    if _locked(run_dir / "lock"):
        return RunStatus(run_dir.name, "running", tasks_done, job)
    failed = run_dir / "FAILED"
    if failed.exists() and (not submitted or failed.stat().st_mtime >= (run_dir / SUBMITTED).stat().st_mtime):
        return RunStatus(run_dir.name, "failed", tasks_done, job, failed.read_text().strip())
    return RunStatus(run_dir.name, "pending", tasks_done, job)


def _locked(lock: Path) -> bool:
    """Whether a process holds the run's exclusive lock. Asked with a shared lock, taken and dropped
    at once: a run starting in that instant waits for it (Slurm, Ray) or is set aside and picked
    up later (the local pool), never skipped."""
    try:
        f = open(lock, "rb")
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _read(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def format_statuses(statuses: list[RunStatus]) -> str:
    """One line per run, then `runs: N finished, N running, N failed, N pending`."""
    width = max((len(s.run_id) for s in statuses), default=0)
    lines = [f"{s.state:<9} {s.run_id:<{width}}  {s.tasks_done} task(s) done  {s.job}".rstrip()
             + (f"\n          {s.reason}" if s.reason else "") for s in statuses]
    counts = Counter(s.state for s in statuses)
    return "\n".join(lines + ["runs: " + ", ".join(f"{counts[state]} {state}" for state in STATES)])
