"""Nothing lost: a partial or corrupt run directory is detected and redone, never read; a
non-finite loss fails that run alone, with its reason in the report; writes are atomic."""
import json
import os
import shutil

import pytest
import torch

import run_bench
from bench.config import resolve
from bench.method import Method
from bench.registry import METHODS
from bench.runner import execute_run
from bench.store import finished_runs, load_tensors, read_done, write_json
from conftest import kill_before_task


def test_done_without_readable_metrics_is_redone_not_read(run, tmp_path):
    full = run("frozen", out=tmp_path / "r")
    run_dir = next((tmp_path / "r" / "runs").iterdir())
    (run_dir / "metrics.json").write_text('{"run_id": "' + run_dir.name)  # truncated by a crash
    assert read_done(run_dir) is None and finished_runs(tmp_path / "r") == []
    again = run("frozen", out=tmp_path / "r")
    assert again["matrix"] == full["matrix"] and read_done(run_dir)["run_id"] == run_dir.name


def test_done_of_another_run_is_not_trusted(run, tmp_path):
    run("frozen", out=tmp_path / "r")
    run_dir = next((tmp_path / "r" / "runs").iterdir())
    (run_dir / "DONE").write_text("some-other-run\n")
    assert read_done(run_dir) is None


def test_truncated_checkpoint_starts_over_with_the_same_numbers(run, tmp_path, monkeypatch, cache_dir):
    full = run("finetune", out=tmp_path / "full")
    run_dir = kill_before_task(run, tmp_path / "killed", "finetune", 2, monkeypatch)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    logs = []
    cfg = resolve("finetune", METHODS.get("finetune"), [], backbone="toy", quick=True)
    status, resumed = execute_run(cfg, tmp_path / "killed", cache_dir=cache_dir, log=logs.append)
    assert status == "trained" and any("ignoring unreadable checkpoint" in line for line in logs)
    assert resumed["matrix"] == full["matrix"]


def test_progress_json_ahead_of_the_checkpoint_is_ignored(run, tmp_path, monkeypatch):
    """progress.json is a copy for people: a newer one (killed between the two writes, or edited)
    never makes the runner skip a task whose weights are not in the checkpoint."""
    full = run("finetune", out=tmp_path / "full")
    run_dir = kill_before_task(run, tmp_path / "killed", "finetune", 2, monkeypatch)
    progress = json.loads((run_dir / "progress.json").read_text())
    progress["rows"].append([50.0] * 4)
    write_json(run_dir / "progress.json", progress)
    assert load_tensors(run_dir / "checkpoint.pt")["finished"] == 2
    resumed = run("finetune", out=tmp_path / "killed")
    assert resumed["matrix"] == full["matrix"]


def test_non_finite_loss_fails_that_run_alone_and_the_report_lists_it(tmp_path, monkeypatch, capsys):
    real_loss = Method.loss

    def loss(self, batch, t, ctx):
        value = real_loss(self, batch, t, ctx)
        return value * float("nan") if self.registry_name == "finetune" else value
    monkeypatch.setattr(Method, "loss", loss)
    out = tmp_path / "r"
    code = run_bench.main(["run", "--quick", "--backbone", "toy", "--methods", "finetune", "frozen", "--set", "steps=2",
                           "--workers", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "1 run(s) failed" in captured.err
    assert "runs: 2 trained, 1 failed" in captured.out
    failed = [d for d in (out / "runs").iterdir() if (d / "FAILED").exists()]
    assert [d.name.split("-")[1] for d in failed] == ["finetune"]
    assert "non-finite loss" in (failed[0] / "FAILED").read_text()
    assert not (failed[0] / "DONE").exists()
    report = (out / "leaderboard.md").read_text()
    assert "Failed runs" in report and failed[0].name in report and "non-finite loss" in report
    assert {r["method"] for r in finished_runs(out)} == {"frozen", "single_task"}


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})

    def crash(*_):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_checkpoints_hold_weights_and_plain_values_only(run, tmp_path):
    """Checkpoints load with weights_only=True: tensors and plain containers, no pickled code."""
    run("finetune", out=tmp_path / "r")
    ckpt = next((tmp_path / "r" / "runs").iterdir()) / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["finished"] == len(state["progress"]["rows"]) == 4


def test_a_checkpoint_holds_what_changed_and_is_never_applied_to_another_build(run, tmp_path, monkeypatch, cache_dir):
    """Checkpoints leave out the tensors still as built (a frozen backbone), and carry the built
    model's digest: a resume against a different build starts over instead of mixing the two."""
    full = run("adapter", out=tmp_path / "full")
    written = load_tensors(tmp_path / "full" / "runs" / full["run_id"] / "checkpoint.pt")["method"]
    assert {k.split(".")[0] + k.split(".")[1] for k in written} == {f"{m}{t}" for m in ("adapters", "heads") for t in range(4)}
    run_dir = kill_before_task(run, tmp_path / "killed", "adapter", 2, monkeypatch)
    ckpt = run_dir / "checkpoint.pt"
    state = load_tensors(ckpt)
    assert not [k for k in state["method"] if k.startswith("backbone.")]  # frozen: never written
    assert any(k.startswith("adapters.0.") for k in state["method"]) and any(k.startswith("heads.1.") for k in state["method"])
    assert not any(k.startswith("adapters.3.") for k in state["method"])  # not trained yet
    # killed again after a resume: what the resume loaded (adapters 0-1) is in the next checkpoint too
    kill_before_task(run, tmp_path / "killed", "adapter", 3, monkeypatch)
    after_resume = load_tensors(ckpt)
    assert state["method"].keys() <= after_resume["method"].keys()
    assert any(k.startswith("adapters.2.") for k in after_resume["method"])
    assert not [k for k in after_resume["method"] if k.startswith("backbone.")]
    shutil.copytree(tmp_path / "killed", tmp_path / "twice")
    assert run("adapter", out=tmp_path / "twice")["matrix"] == full["matrix"]
    torch.save({**after_resume, "built": "another build"}, ckpt)
    logs = []
    cfg = resolve("adapter", METHODS.get("adapter"), [], backbone="toy", quick=True)
    status, again = execute_run(cfg, tmp_path / "killed", cache_dir=cache_dir, log=logs.append)
    assert status == "trained" and any("another build" in line for line in logs)
    assert again["matrix"] == full["matrix"]
