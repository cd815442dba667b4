"""A run killed after task k and resumed produces the same numbers as an uninterrupted run."""
import pytest

from bench.method import Method


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing catches it."""


@pytest.mark.parametrize("method,kill_at", [("finetune", 2), ("adapter", 1)])
def test_resume_after_kill_matches_uninterrupted(run, tmp_path, monkeypatch, method, kill_at):
    full = run(method, out=tmp_path / "full")

    original = Method.begin_task
    real_begin = {}

    def begin_task(self, ctx):
        if ctx.task == kill_at and not real_begin.get("done"):
            raise Killed
        return original(self, ctx)

    monkeypatch.setattr(Method, "begin_task", begin_task)
    with pytest.raises(Killed):
        run(method, out=tmp_path / "killed")
    run_dir = next((tmp_path / "killed" / "runs").iterdir())
    assert not (run_dir / "DONE").exists() and (run_dir / "checkpoint.pt").exists()
    real_begin["done"] = True
    resumed = run(method, out=tmp_path / "killed")
    assert resumed["matrix"] == full["matrix"]
    assert resumed["summary"] == full["summary"]
    assert (run_dir / "DONE").exists()


def test_finished_run_is_skipped(run, tmp_path, monkeypatch):
    first = run("frozen", out=tmp_path / "r")
    monkeypatch.setattr(Method, "begin_task", lambda self, ctx: (_ for _ in ()).throw(AssertionError("retrained")))
    assert run("frozen", out=tmp_path / "r") == first
