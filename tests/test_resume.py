"""A run killed after task k and resumed produces the same weights and numbers as an uninterrupted run."""
import pytest

from bench.method import Method
from conftest import final_weights, kill_before_task, same_tensors


@pytest.mark.parametrize("method,kill_at,sets", [
    ("finetune", 2, []), ("adapter", 1, []),
    # task-begun state: CODA's new components are initialised in begin_task, DualPrompt's keys compete once begun
    ("coda_prompt", 2, ["coda_prompt.pool_size=8", "coda_prompt.length=2", "lr=0.3"]),  # lr: prompts that matter
    ("dualprompt", 2, ["dualprompt.g_last=0", "dualprompt.e_first=1", "dualprompt.e_last=1"])])
def test_resume_after_kill_matches_uninterrupted(run, tmp_path, monkeypatch, method, kill_at, sets):
    # every stage trained, none loaded from the shared stage store: the resumed tasks recompute
    # what the uninterrupted run did, from the same per-task seeds
    full = run(method, out=tmp_path / "full", reuse_stages=False, sets=sets)
    run_dir = kill_before_task(run, tmp_path / "killed", method, kill_at, monkeypatch, reuse_stages=False, sets=sets)
    assert not (run_dir / "DONE").exists() and (run_dir / "checkpoint.pt").exists()
    resumed = run(method, out=tmp_path / "killed", reuse_stages=False, sets=sets)
    assert resumed["matrix"] == full["matrix"] and resumed["summary"] == full["summary"]
    assert same_tensors(final_weights(tmp_path / "killed", resumed), final_weights(tmp_path / "full", full))
    assert (run_dir / "DONE").exists()


def test_finished_run_is_skipped(run, tmp_path, monkeypatch):
    first = run("frozen", out=tmp_path / "r")
    monkeypatch.setattr(Method, "begin_task", lambda self, ctx: (_ for _ in ()).throw(AssertionError("retrained")))
    assert run("frozen", out=tmp_path / "r") == first
