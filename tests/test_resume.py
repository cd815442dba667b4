"""A run killed after task k and resumed produces the same numbers as an uninterrupted run."""
import pytest

from bench.method import Method


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing catches it."""


@pytest.mark.parametrize("method,kill_at,sets", [
    ("finetune", 2, []), ("adapter", 1, []),
    # task-begun state: CODA's new components are initialised in begin_task, DualPrompt's keys compete once begun
    ("coda_prompt", 2, ["coda_prompt.pool_size=8", "coda_prompt.length=2", "lr=0.3"]),  # lr: prompts that matter
    ("dualprompt", 2, ["dualprompt.g_last=0", "dualprompt.e_first=1", "dualprompt.e_last=1"])])
def test_resume_after_kill_matches_uninterrupted(run, tmp_path, monkeypatch, method, kill_at, sets):
    full = run(method, out=tmp_path / "full", sets=sets)

    original = Method.begin_task
    real_begin = {}

    def begin_task(self, ctx):
        if ctx.task == kill_at and not real_begin.get("done"):
            raise Killed
        return original(self, ctx)

    monkeypatch.setattr(Method, "begin_task", begin_task)
    with pytest.raises(Killed):
        run(method, out=tmp_path / "killed", sets=sets)
    run_dir = next((tmp_path / "killed" / "runs").iterdir())
    assert not (run_dir / "DONE").exists() and (run_dir / "checkpoint.pt").exists()
    real_begin["done"] = True
    resumed = run(method, out=tmp_path / "killed", sets=sets)
    assert resumed["matrix"] == full["matrix"]
    assert resumed["summary"] == full["summary"]
    assert (run_dir / "DONE").exists()


def test_finished_run_is_skipped(run, tmp_path, monkeypatch):
    first = run("frozen", out=tmp_path / "r")
    monkeypatch.setattr(Method, "begin_task", lambda self, ctx: (_ for _ in ()).throw(AssertionError("retrained")))
    assert run("frozen", out=tmp_path / "r") == first
