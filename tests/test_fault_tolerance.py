"""Resume anywhere: a `--quick` suite SIGKILLed at random points (its whole process group),
several times, then run again with the same command, ends with the leaderboard of an
uninterrupted run; finished runs are never recomputed."""
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The toy backbone lives in conftest.py; MMCL_PLUGINS makes the CLI and its workers register it.
ENV = {**os.environ, "MMCL_PLUGINS": str(ROOT / "tests" / "conftest.py"), "PYTHONUNBUFFERED": "1"}
SUITE = ["run", "--quick", "--backbone", "toy", "--methods", "finetune", "adapter", "--set", "steps=3", "--workers", "1"]
TASK_LINE = re.compile(r"^\[([\w.-]+)\] task \d/4 ", re.M)
TIME_COLUMNS = {"train_s", "total_s"}  # wall-clock, differs between any two runs


def args(out) -> list[str]:
    """The suite into `out`, with a cache of its own: stages trained by another results directory's
    runs (bench/reuse.py) would let it finish before it can be killed."""
    return [*SUITE, "--out", str(out), "--set", f"cache_dir={out}-cache"]


def start(out):
    return subprocess.Popen([sys.executable, str(ROOT / "run_bench.py"), *args(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(out):
    proc = start(out)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    return log


def kill_after_tasks(out, n_tasks: int, extra_s: float) -> str:
    """Start the suite and SIGKILL its whole process group `extra_s` after its n-th finished task;
    returns what it printed."""
    proc = start(out)
    log, seen = [], 0
    for line in proc.stdout:
        log.append(line)
        seen += TASK_LINE.search(line) is not None
        if seen >= n_tasks:
            time.sleep(extra_s)
            break
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already finished
        pass
    proc.wait()
    proc.stdout.close()
    return "".join(log)


def finished_tasks(out) -> int:
    """Tasks checkpointed so far, over all runs of the suite (4 tasks each)."""
    runs = [d for d in (out / "runs").iterdir() if d.is_dir()] if (out / "runs").exists() else []
    return sum(4 if (d / "DONE").exists() else
               len(json.loads((d / "progress.json").read_text())["rows"]) if (d / "progress.json").exists() else 0
               for d in runs)


def table(out) -> list[dict]:
    with open(out / "leaderboard.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def matrices(out) -> dict:
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/metrics.json")]
    return {r["run_id"]: (r["matrix"], r["summary"], r["params"]) for r in runs}


def test_sigkilled_suite_resumes_to_the_uninterrupted_leaderboard(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    import run_bench  # the uninterrupted reference runs in-process (same code, one start-up less)
    assert run_bench.main(args(reference)) == 0
    rng = random.Random(0)
    logs = []
    # 3 runs x 4 tasks: kill 1-2 tasks into a run (counted over all attempts), a random fraction of
    # a second later, i.e. in the middle of a task or just after a checkpoint
    for target in sorted(rng.sample([1, 2, 5, 6, 9, 10], 3)):
        if target > finished_tasks(killed):
            logs.append(kill_after_tasks(killed, target - finished_tasks(killed), rng.uniform(0, 0.3)))
        assert not (killed / "leaderboard.csv").exists(), "killed before the end, so no report yet"
    done_before = {d.name for d in (killed / "runs").iterdir() if (d / "DONE").exists()}
    log = finish(killed)
    assert "resuming after task" in "".join(logs[1:]) + log, "a run killed mid-sequence was resumed"
    retrained = {m.group(1) for m in TASK_LINE.finditer(log)} & done_before
    assert not retrained, "finished runs are never recomputed"
    if done_before:
        assert f"{len(done_before)} already done" in log
    assert table(killed) == table(reference)
    assert matrices(killed) == matrices(reference)
    assert not list((killed / "runs").rglob(".*.tmp")), "files half-written when killed are cleaned up"


def test_two_suites_on_one_results_directory_train_each_task_once(tmp_path):
    """Two copies of the same command at once: every run is trained by one of them (the other sets
    it aside, trains something else, then picks up the result), and both end with the report."""
    out = tmp_path / "shared"
    procs = [start(out) for _ in range(2)]
    logs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc in procs:
        proc.stdout.close()
    assert [proc.returncode for proc in procs] == [0, 0], logs
    trained = Counter(m.group(0) for log in logs for m in TASK_LINE.finditer(log))  # "[run id] task k/4"
    assert len(trained) == 3 * 4 and set(trained.values()) == {1}, trained
    statuses = Counter()
    for log in logs:
        for count, status in re.findall(r"(\d+) (trained|finished by another process|already done)", log):
            statuses[status] += int(count)
    assert statuses["trained"] == 3 and statuses["trained"] + statuses["finished by another process"] \
        + statuses["already done"] == 6
    assert not [d for d in (out / "runs").iterdir() if (d / "FAILED").exists()]
