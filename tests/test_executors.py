"""Executors: the local pool shares work with another process instead of training a run twice;
Slurm (submitit's debug stand-in) and Ray run the same runs into the same store with the numbers of
the local executor. Real Slurm and Ray clusters (preemption, requeue, lost nodes): tests/test_engines.py."""
import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import bench.runner
from bench.executors import make_executor
from bench.executors.slurm import SlurmRun
from bench.runner import execute
from bench.store import runs_dir
from bench.suite import ExecOptions, execute_suite, plan

CONFTEST = str(Path(__file__).resolve().parent / "conftest.py")


def toy_waves(methods, steps=2):
    return plan(methods, [0], [("steps", str(steps))], backbone="toy", quick=True)


def suite(out, cache_dir, waves, executor="local", **options):
    opts = ExecOptions(out=str(out), workers=1, cache_dir=str(cache_dir))
    pairs = {executor: [(k, str(v)) for k, v in options.items()]} if options else {}
    return {o.run_id: o.status for o in execute_suite(waves, make_executor(executor, opts, pairs))}


def matrices(out):
    return {p.parent.name: json.loads(p.read_text())["matrix"] for p in runs_dir(out).glob("*/metrics.json")}


def wait_for(condition, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


REAL_FLOCK = fcntl.flock


def held_elsewhere(run_dir: Path, monkeypatch) -> threading.Event:
    """Make `run_dir` (to be locked by the test, as "another process") and return an event set
    when this process starts waiting for its lock."""
    run_dir.mkdir(parents=True)
    blocked = threading.Event()

    def flock(f, op):
        if op == fcntl.LOCK_EX and Path(f.name).parent == run_dir:
            blocked.set()
        return REAL_FLOCK(f, op)
    monkeypatch.setattr(bench.runner.fcntl, "flock", flock)
    return blocked


def test_local_pool_sets_a_busy_run_aside_and_picks_up_its_result(tmp_path, cache_dir, monkeypatch):
    waves = toy_waves(["frozen", "finetune"])
    (ref,), (frozen, finetune) = waves
    execute(finetune, tmp_path / "elsewhere", cache_dir=cache_dir, log=lambda *_: None)  # its result, made elsewhere
    out = tmp_path / "results"
    busy_dir = runs_dir(out) / finetune.run_id
    blocked = held_elsewhere(busy_dir, monkeypatch)  # set when the suite starts waiting for the busy run's lock
    statuses = {}
    with open(busy_dir / "lock", "a") as held:
        REAL_FLOCK(held, fcntl.LOCK_EX)  # "another process" is training `finetune`
        thread = threading.Thread(target=lambda: statuses.update(suite(out, cache_dir, waves)))
        thread.start()
        assert blocked.wait(180), "the suite waits for the busy run only after the rest of its wave"
        assert (runs_dir(out) / frozen.run_id / "DONE").exists() and not (busy_dir / "DONE").exists()
        for name in ("metrics.json", "DONE"):  # the other process finishes
            shutil.copy(tmp_path / "elsewhere" / "runs" / finetune.run_id / name, busy_dir / name)
    thread.join(180)
    assert statuses == {ref.run_id: "trained", frozen.run_id: "trained", finetune.run_id: "waited"}
    assert not (busy_dir / "checkpoint.pt").exists(), "never trained here"


def test_a_run_that_ends_before_its_reference_waits_for_it(tmp_path, cache_dir, monkeypatch):
    """The local pool no longer holds every run back until the references end: a run that finishes
    while another process still trains its reference waits for it, so its transfer is filled."""
    (ref,), (finetune,) = toy_waves(["finetune"])
    execute(ref, tmp_path / "elsewhere", cache_dir=cache_dir, log=lambda *_: None)  # the reference's result, made elsewhere
    out = tmp_path / "results"
    ref_dir = runs_dir(out) / ref.run_id
    blocked = held_elsewhere(ref_dir, monkeypatch)  # set when the run starts waiting for its reference
    result = {}
    with open(ref_dir / "lock", "a") as held:
        REAL_FLOCK(held, fcntl.LOCK_EX)  # "another process" is training the reference
        thread = threading.Thread(target=lambda: result.update(execute(finetune, out, cache_dir=cache_dir, log=lambda *_: None)))
        thread.start()
        assert blocked.wait(180), "the run waits for its reference"
        assert not (runs_dir(out) / finetune.run_id / "DONE").exists()
        for name in ("metrics.json", "DONE"):  # the other process finishes the reference
            shutil.copy(tmp_path / "elsewhere" / "runs" / ref.run_id / name, ref_dir / name)
    thread.join(180)
    reference = json.loads((ref_dir / "metrics.json").read_text())
    assert result["single_task"] == reference["single_task"]
    assert all(v is not None for v in result["summary"]["transfer"][1:])


def test_slurm_debug_cluster_fills_the_same_store_with_the_same_numbers(tmp_path, cache_dir):
    waves = toy_waves(["finetune"])
    local = suite(tmp_path / "local", cache_dir, waves)
    slurm = suite(tmp_path / "slurm", cache_dir, waves, "slurm", cluster="debug", poll_s=0.05)
    assert set(local.values()) == set(slurm.values()) == {"trained"} and local.keys() == slurm.keys()
    assert matrices(tmp_path / "slurm") == matrices(tmp_path / "local")
    assert any((tmp_path / "slurm" / "slurm").iterdir()), "submitit's job files"
    # same run ids, same store: another executor finds everything done
    assert set(suite(tmp_path / "slurm", cache_dir, waves).values()) == {"done"}


def test_slurm_job_array_script_carries_the_options(tmp_path, monkeypatch):
    """On a cluster: one sbatch job array per wave with the --set slurm.* resources, and the USR2
    signal before the time limit that submitit turns into a requeue (sbatch is faked here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("sbatch", 'cp "$1" "$(dirname "$1")/submitted.sh"; echo "Submitted batch job 4242"'),
                       ("srun", "exit 0")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _, wave = toy_waves(["finetune", "frozen"])
    options = {"partition": "gpu", "time_min": "30", "gpus_per_node": "1", "array_parallelism": "8",
               "setup": "[source .venv/bin/activate]", "additional": "{exclude: node3}"}
    executor = make_executor("slurm", ExecOptions(out=str(tmp_path / "out"), threads=2),
                             {"slurm": list(options.items())})
    submitit_executor, folder = executor.submitit_executor()
    jobs = submitit_executor.map_array(SlurmRun(executor.opts), wave)
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1"]
    script = (folder / "submitted.sh").read_text()
    for line in ("--array=0-1%2", "--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=2",
                 "--exclude=node3", "--signal=USR2@", "source .venv/bin/activate"):
        assert line in script, line


def test_ray_tasks_fill_the_same_store_with_the_same_numbers(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")
    monkeypatch.setenv("MMCL_PLUGINS", CONFTEST)  # Ray's worker processes register the toy backbone
    waves = toy_waves(["finetune"])
    local = suite(tmp_path / "local", cache_dir, waves)
    ray = suite(tmp_path / "ray", cache_dir, waves, "ray", num_cpus=1)
    assert set(ray.values()) == {"trained"} and ray.keys() == local.keys()
    assert matrices(tmp_path / "ray") == matrices(tmp_path / "local")
