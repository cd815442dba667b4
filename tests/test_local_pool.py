"""The local pool's workers die with the suite's process (a SIGKILL of the main pid only, as the OOM
killer sends), and on a host with several GPUs each worker gets its own (the GPU count is faked);
Ray asks for a GPU per run when the runs use GPUs; `status` reads what runs are doing from the store."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError
from bench.executors import make_executor
from bench.executors.ray import gpus_per_run
from bench.status import mark_submitted, run_statuses
from bench.store import runs_dir, write_json, write_text
from bench.suite import ExecOptions
from test_executors import CONFTEST, wait_for

REPO = Path(__file__).resolve().parent.parent


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_killing_the_suite_process_kills_its_pool_workers(tmp_path, cache_dir):
    out = tmp_path / "results"
    command = [sys.executable, str(REPO / "run_bench.py"), "run", "--backbone", "toy", "--methods", "finetune", "frozen",
               "--quick", "--set", "steps=200", "--workers", "2", "--set", f"cache_dir={cache_dir}", "--out", str(out)]
    env = {**os.environ, "MMCL_PLUGINS": CONFTEST}
    with open(tmp_path / "suite.log", "w") as log:
        suite = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers = set()
    try:
        def training():  # both workers started, and one of them is in a run's first task or later
            workers.update(p for p in children(suite.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text())
            return len(workers) == 2 and any(runs_dir(out).glob("*/config.json")) or suite.poll() is not None
        wait_for(training)
        assert suite.poll() is None, (tmp_path / "suite.log").read_text()
        os.kill(suite.pid, signal.SIGKILL)  # the main process only
        suite.wait(30)
        deadline = time.time() + 10
        while any(map(running, workers)) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(map(running, workers)), "pool workers outlived their suite"
    finally:
        for pid in [suite.pid, *workers]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def worker_gpu(_):
    """(this worker's pid, the GPU it was given), after a pause that keeps the other worker busy."""
    time.sleep(0.5)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_pool_worker_gets_its_own_gpu(tmp_path, monkeypatch):
    """4 GPUs (faked) of which this process sees 3, 5, 6 and 7: two workers take the first two."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    executor = make_executor("local", ExecOptions(out=str(tmp_path), device="auto", workers=2), {})
    seen = {}
    with executor._pool(2) as pool:
        deadline = time.time() + 120
        while len(seen) < 2 and time.time() < deadline:  # until both workers have answered
            seen.update(pool.map(worker_gpu, range(2)))
    assert len(seen) == 2 and set(seen.values()) == {"3", "5"}, seen


def test_pool_workers_share_no_gpu_setting_on_cpu_or_an_explicit_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from bench.executors.local import worker_devices
    assert worker_devices("cuda", 3) == ["0", "1", "0"]
    assert worker_devices("cpu", 2) is None and worker_devices("cuda:1", 2) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_devices("auto", 2) is None


def test_ray_asks_one_gpu_per_run_when_the_runs_use_gpus():
    assert gpus_per_run("cuda", {"CPU": 8, "GPU": 2}) == 1
    with pytest.raises(BenchError, match="no GPUs"):
        gpus_per_run("cuda", {"CPU": 8})
    assert gpus_per_run("auto", {"CPU": 8, "GPU": 4}) == 1
    assert gpus_per_run("auto", {"CPU": 8}) == 0
    assert gpus_per_run("cpu", {"CPU": 8, "GPU": 4}) == 0


def test_status_reads_finished_running_failed_and_pending_runs_from_the_store(tmp_path):
    root = runs_dir(tmp_path)
    mark_submitted(tmp_path, ["done", "busy", "broken", "queued", "retried"], "slurm", ["7_0", "7_1", "7_2", "7_3", "7_4"])
    write_json(root / "done" / "metrics.json", {"run_id": "done", "matrix": [[1.0], [1.0, 2.0]]})
    write_text(root / "done" / "DONE", "done\n")
    write_json(root / "busy" / "progress.json", {"rows": [[1.0]]})
    write_text(root / "broken" / "FAILED", "ValueError: non-finite loss\n")
    write_text(root / "retried" / "FAILED", "job 7_4 did not finish\n")
    old = time.time() - 60
    os.utime(root / "retried" / "FAILED", (old, old))  # resubmitted since it failed
    with open(root / "busy" / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as bench/runner.py run_lock holds it
        states = {s.run_id: (s.state, s.tasks_done, s.job, s.reason) for s in run_statuses(tmp_path)}
    assert states == {"done": ("finished", 2, "slurm 7_0", ""), "busy": ("running", 1, "slurm 7_1", ""),
                      "broken": ("failed", 0, "slurm 7_2", "ValueError: non-finite loss"),
                      "queued": ("pending", 0, "slurm 7_3", ""), "retried": ("pending", 0, "slurm 7_4", "")}
    assert {s.run_id: s.state for s in run_statuses(tmp_path)}["busy"] == "pending", "the lock is free again"
    assert json.loads((root / "queued" / "submitted.json").read_text())["pid"] == os.getpid()
