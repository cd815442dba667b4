"""Every registered method runs on the toy backbone and fills its score matrix. Zero forgetting as
behaviour, for every method, on every tensor of the model
(backbone included), with stage reuse, settled scores and the prefix cache all off: a method
isolates tasks (`isolates_tasks`) exactly when no backbone tensor ever changes, a tensor once
trained never changes again, and every earlier task's score stays what it was."""
import pytest

from bench.registry import METHODS
from bench.runner import execute
from bench.store import load_tensors, runs_dir
from conftest import run_method
from test_prompts import shallow

OFF = dict(reuse_stages=False, reuse_scores=False, cache_prefix=False)


def trained_after_each_task(method, out, cache_dir, monkeypatch):
    """metrics, and after each task the tensors changed from the model as built (its checkpoint)."""
    snapshots = []
    real_execute = execute

    def snapshotting(cfg, out, **kw):
        ckpt = runs_dir(out) / cfg.run_id / "checkpoint.pt"
        return real_execute(cfg, out, **{**kw, "log": lambda line: " task " in line and snapshots.append(
            load_tensors(ckpt)["method"])})
    monkeypatch.setattr("bench.runner.execute", snapshotting)
    return run_method(method, out, cache_dir, sets=shallow(method), **OFF), snapshots


def isolation_broken(snapshots) -> str | None:
    """Why the trained tensors show no parameter isolation, or None."""
    for t, snap in enumerate(snapshots):
        # the backbone as loaded; PEFT injects the LoRA methods' per-task adapters into the backbone module
        backbone = [k for k in snap if k.startswith("backbone.") and ".lora_A." not in k and ".lora_B." not in k]
        if backbone:
            return f"task {t} changed backbone tensor {backbone[0]}"
        for later in snapshots[t + 1:]:
            moved = [k for k in snap if not (later[k] == snap[k]).all()]
            if moved:
                return f"{moved[0]}, trained by task {t}, changed afterwards"
    return None


@pytest.mark.parametrize("method", METHODS.names())
def test_a_method_isolates_tasks_exactly_when_it_declares_it(method, tmp_path, cache_dir, monkeypatch):
    metrics, snapshots = trained_after_each_task(method, tmp_path, cache_dir, monkeypatch)
    A, T = metrics["matrix"], len(metrics["tasks"])
    assert metrics["params"]["inference"] > 0
    assert len(A) == T and len(snapshots) == (1 if METHODS.get(method).joint else T)
    for i, row in enumerate(A):  # every seen task scored after every task (the last row only when joint)
        if not METHODS.get(method).joint or i == T - 1:
            seen = range(i + 1) if METHODS.get(method).evaluates_seen_tasks else [i]
            assert all(row[j] is not None for j in seen) and all(v is None for v in row[i + 1:])
    broken = isolation_broken(snapshots)
    if METHODS.get(method).isolates_tasks:
        assert broken is None, broken
        assert all(A[i][j] == A[j][j] for i in range(T) for j in range(i + 1))
    else:
        assert broken is not None, f"{method} isolates tasks but does not declare it (its scores are recomputed)"
