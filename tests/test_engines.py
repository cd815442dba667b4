"""The executors through real engines on this host: a one-node Slurm cluster (scripts/slurm-cluster.sh)
driven by submitit's SlurmExecutor through sbatch, and a two-node Ray cluster (scripts/ray-cluster.sh).
Each cluster is started once for this module and stopped after its last test, also when a test fails.
Where a cluster cannot start, its tests skip with the reason; under CI (CI=true) they fail instead.

The runs are `paused_finetune` (tests/engine_plugin.py): toy backbone, 2 steps per task, and a pause
before each task in the engines' jobs only, so that a job can be killed, requeued or lose its node
between tasks; their numbers are compared with the same runs made in this process without pauses."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import engine_plugin  # noqa: F401  registers paused_finetune in this process
from bench.status import run_statuses
from bench.store import runs_dir
from bench.suite import plan
from test_executors import CONFTEST, matrices, suite, toy_waves, wait_for

REPO = Path(__file__).resolve().parent.parent
PLUGINS = f"{CONFTEST},{Path(engine_plugin.__file__).resolve()}"
PAUSE_S = "3"  # before each of tasks 2-4 in the engines' jobs


def start_cluster(script: str, state_dir: Path, env: dict) -> str:
    """`scripts/<script> start state_dir`; returns the address it prints (NAME=VALUE: the value).
    A cluster that cannot start skips the test with the script's reason, or fails it under CI."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), "start", str(state_dir)], capture_output=True,
                          text=True, timeout=300, env=env)
    if proc.returncode != 0:
        reason = f"{script} could not start a cluster: {(proc.stderr.strip() or proc.stdout.strip())[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return proc.stdout.strip().splitlines()[-1].partition("=")[2]


def stop_cluster(script: str, state_dir: Path, env: dict, command: str = "stop") -> None:
    subprocess.run(["bash", str(REPO / "scripts" / script), command, str(state_dir)], timeout=120, env=env, check=True)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running cluster, exported for sbatch/squeue/scontrol while this module runs."""
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_TEST_PORT": str(7000 + os.getpid() % 300 * 3)}  # two test sessions, two port sets
    try:
        conf = start_cluster("slurm-cluster.sh", state, env)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", conf)
            yield conf
    finally:
        stop_cluster("slurm-cluster.sh", state, env)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """(address, state dir) of a head and a second node; its workers pause between tasks."""
    state = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY": str(Path(sys.executable).parent / "ray"), "MMCL_TEST_PAUSE_S": PAUSE_S,
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_TEST_PORT": str(10000 + os.getpid() % 60 * 300)}
    try:
        address = start_cluster("ray-cluster.sh", state, env)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_AUTH_MODE", "disabled")  # as the cluster (scripts/ray-cluster.sh)
            yield address, state, env
    finally:
        stop_cluster("ray-cluster.sh", state, env)


@pytest.fixture
def engine_env(monkeypatch):
    """What the engines' jobs need: the toy backbone and paused_finetune registered, the pause."""
    monkeypatch.setenv("MMCL_PLUGINS", PLUGINS)
    monkeypatch.setenv("MMCL_TEST_PAUSE_S", PAUSE_S)


def local_runs(tmp_path, cache_dir, waves) -> Path:
    """The runs made here, unpaused: the numbers every engine must give."""
    out = tmp_path / "local"
    suite(out, cache_dir, waves)
    return out


def copy_run(src_out: Path, dst_out: Path, run_id: str) -> None:
    """A finished run placed in another results directory (the single-task references, so that
    only the runs under test go through the engine)."""
    shutil.copytree(runs_dir(src_out) / run_id, runs_dir(dst_out) / run_id)


def rows_done(out, run_id) -> int:
    progress = runs_dir(out) / run_id / "progress.json"
    try:
        return len(json.loads(progress.read_text())["rows"])
    except (OSError, ValueError):
        return 0


def job_of(out, run_id) -> str | None:
    """The engine job id that `run_bench.py status` shows for a run."""
    try:
        return json.loads((runs_dir(out) / run_id / "submitted.json").read_text())["job"]
    except (OSError, ValueError):
        return None


def status_of(out, run_id):
    return {s.run_id: s for s in run_statuses(out)}[run_id]


def scontrol_job(job: str) -> dict:
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)


def test_slurm_job_array_gives_the_local_numbers_resources_preemption_and_a_cancelled_task_is_redone(
        slurm, tmp_path, cache_dir, engine_env, monkeypatch):
    waves = toy_waves(["paused_finetune"])
    waves[1] += toy_waves(["frozen"])[1]
    (ref,), (preempted, cancelled) = waves
    monkeypatch.setenv("MMCL_TEST_PAUSE_S", "0")
    local = local_runs(tmp_path, cache_dir, waves)
    monkeypatch.setenv("MMCL_TEST_PAUSE_S", PAUSE_S)
    out = tmp_path / "slurm"
    copy_run(local, out, ref.run_id)
    resources = {"time_min": 7, "mem_gb": 1, "cpus_per_task": 1, "additional": "{comment: mmcl-engine-test}", "poll_s": 0.5}
    first = {}
    driver = threading.Thread(target=lambda: first.update(suite(out, cache_dir, waves, "slurm", **resources)))
    driver.start()
    try:
        wait_for(lambda: job_of(out, cancelled.run_id))
        job = job_of(out, cancelled.run_id)
        wait_for(lambda: scontrol_job(job)["JobState"] == "RUNNING")
        subprocess.run(["scancel", job], check=True)  # one task of the array
        wait_for(lambda: rows_done(out, preempted.run_id) >= 1)
        # what Slurm sends before a preemption or the time limit: submitit requeues the job itself
        subprocess.run(["scancel", "--signal=USR2", job_of(out, preempted.run_id)], check=True)
    finally:
        driver.join(300)
    assert not driver.is_alive()
    assert first == {ref.run_id: "done", preempted.run_id: "resumed", cancelled.run_id: "failed"}
    assert "did not finish" in (runs_dir(out) / cancelled.run_id / "FAILED").read_text()
    log = "".join(p.read_text() for p in (out / "slurm").rglob(f"{job_of(out, preempted.run_id)}_*_log.*"))
    # submitit checkpoints and requeues on USR2 (it calls it preempted or timed-out), and the run resumes
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log and re.search(r"resuming after task [123]/4", log), log
    array = job_of(out, preempted.run_id).split("_")[0]
    assert job == f"{array}_1", "one job array for the wave"
    for task in (f"{array}_0", job):  # --set slurm.* reached both jobs of the array
        info = scontrol_job(task)
        assert (info["TimeLimit"], info["MinMemoryNode"], info["NumCPUs"], info["Comment"]) == \
            ("00:07:00", "1G", "1", "mmcl-engine-test"), info
    assert scontrol_job(job)["JobState"] == "CANCELLED"
    # the same suite again: only the cancelled run is submitted and trained
    again = suite(out, cache_dir, waves, "slurm", poll_s=0.5)
    assert again[ref.run_id] == again[preempted.run_id] == "done" and again[cancelled.run_id] in ("trained", "resumed")
    assert job_of(out, cancelled.run_id) != job and job_of(out, preempted.run_id).startswith(array)
    assert matrices(out) == matrices(local)


def test_slurm_jobs_outlive_the_driver_show_in_status_and_a_requeued_job_resumes(slurm, tmp_path, cache_dir, engine_env,
                                                                                 monkeypatch):
    waves = toy_waves(["paused_finetune"])
    (ref,), (cfg,) = waves
    monkeypatch.setenv("MMCL_TEST_PAUSE_S", "0")
    local = local_runs(tmp_path, cache_dir, waves)
    monkeypatch.setenv("MMCL_TEST_PAUSE_S", PAUSE_S)
    out = tmp_path / "slurm"
    copy_run(local, out, ref.run_id)
    cli = [sys.executable, str(REPO / "run_bench.py")]
    command = cli + ["run", "--backbone", "toy", "--methods", "paused_finetune", "--quick", "--set", "steps=2",
                     "--set", f"cache_dir={cache_dir}", "--out", str(out), "--executor", "slurm", "--set", "slurm.poll_s=0.5"]
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: rows_done(out, cfg.run_id) >= 1 or driver.poll() is not None)
        os.kill(driver.pid, signal.SIGKILL)  # the driver only; its job goes on
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    job = job_of(out, cfg.run_id)
    state = status_of(out, cfg.run_id)
    assert (state.state, state.job) == ("running", f"slurm {job}"), (tmp_path / "driver.log").read_text()
    wait_for(lambda: rows_done(out, cfg.run_id) >= 2)  # it trains on without the driver
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: scontrol_job(job)["JobState"] == "PENDING", timeout=30)
    # the requeued attempt trains on until Slurm's SIGKILL (submitit ignores SIGTERM), KillWait=2 s later:
    # at most one more task (PAUSE_S=3 before each), so the run is not finished
    wait_for(lambda: status_of(out, cfg.run_id).state != "running", timeout=30)
    finished_tasks = rows_done(out, cfg.run_id)  # in its checkpoint
    state = status_of(out, cfg.run_id)
    assert (state.state, state.tasks_done, state.job) == ("pending", finished_tasks, f"slurm {job}")
    wait_for(lambda: (runs_dir(out) / cfg.run_id / "DONE").exists(), timeout=240)
    status = subprocess.run(cli + ["status", "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    line = next(line for line in status.stdout.splitlines() if cfg.run_id in line)
    assert line.split()[0] == "finished" and line.endswith(f"slurm {job}"), status.stdout
    assert status.stdout.splitlines()[-1] == "runs: 2 finished, 0 running, 0 failed, 0 pending", status.stdout
    report = subprocess.run(cli + ["report", "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert report.returncode == 0 and "paused_finetune" in report.stdout, report.stderr
    logs = "".join(p.read_text() for p in (out / "slurm").rglob(f"{job}_*.out"))
    assert f"resuming after task {finished_tasks}/4" in logs, logs
    assert scontrol_job(job)["Restarts"] == "1"
    assert matrices(out) == matrices(local)


def test_ray_cluster_loses_its_second_node_mid_suite_and_ends_with_the_local_numbers(ray_cluster, tmp_path, cache_dir,
                                                                                    engine_env, monkeypatch):
    address, state, env = ray_cluster
    waves = plan(["paused_finetune"], [0, 1], [("steps", "2")], backbone="toy", quick=True)
    refs, runs = waves
    monkeypatch.setenv("MMCL_TEST_PAUSE_S", "0")
    local = local_runs(tmp_path, cache_dir, waves)
    out = tmp_path / "ray"
    for ref in refs:
        copy_run(local, out, ref.run_id)
    result = {}
    driver = threading.Thread(target=lambda: result.update(
        suite(out, cache_dir, waves, "ray", address=address, num_cpus=1, max_retries=2)))
    driver.start()
    try:  # 1 CPU per node: the two runs train side by side, one on each node
        wait_for(lambda: all(rows_done(out, r.run_id) >= 1 for r in runs))
        stop_cluster("ray-cluster.sh", state, env, "stop-node")
    finally:
        driver.join(300)
    assert not driver.is_alive()
    assert sorted(result[r.run_id] for r in runs) == ["resumed", "trained"], result
    assert matrices(out) == matrices(local)

