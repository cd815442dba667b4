"""Settled scores (bench/evaluate.py SettledScores): a parameter-isolation method's tasks are scored
once and carried forward, with the numbers that scoring them again after every task gives; when
anything their predictions read changes, they are scored again."""
import pytest
import torch
from torch import nn

import bench.evaluate as evaluate
import bench.runner  # noqa: F401  (binds the real `score` in the runner and the training loop before `scored` patches it)
from bench.registry import METHODS
from bench.store import load_tensors
from conftest import run_method
from methods.adapter import Adapter

ISOLATING = [m for m in METHODS.names() if METHODS.get(m).isolates_tasks]


def test_a_subclass_does_not_inherit_the_isolation_declaration():
    class Variant(Adapter):  # a plugin may read more in its forward: it declares isolation itself or not at all
        pass
    assert not Variant.isolates_tasks


@pytest.fixture
def scored(monkeypatch):
    """The tasks scored (forward passes run) through SettledScores, in order."""
    calls, real = [], evaluate.per_example_scores

    def counting(method, t, *args, **kwargs):
        calls.append(t)
        return real(method, t, *args, **kwargs)
    monkeypatch.setattr(evaluate, "per_example_scores", counting)
    return calls


@pytest.mark.parametrize("method", ISOLATING)
def test_each_task_is_scored_once_with_the_numbers_of_scoring_after_every_task(method, tmp_path, cache_dir, scored):
    every = run_method(method, tmp_path / "every", cache_dir, reuse_scores=False)
    assert scored == []
    settled = run_method(method, tmp_path / "settled", cache_dir)
    assert scored == list(range(len(settled["matrix"])))
    assert settled["matrix"] == every["matrix"]


class LeakyAdapter(Adapter):
    """Declares isolation wrongly: every task also trains the top block that earlier tasks read."""
    isolates_tasks = True

    def trainable_parameters(self, t, ctx):
        top = list(self.backbone.layers[-1].parameters())
        for p in top:
            p.requires_grad_(True)
        return super().trainable_parameters(t, ctx) + [{"params": top, "lr": ctx.lr}]


class ReplacingAdapter(Adapter):
    """Puts a new tensor object, equal in value, in task 0's head before every later task."""
    isolates_tasks = True

    def begin_task(self, ctx):
        if ctx.task:
            out = self.heads[0][-1]
            out.weight = nn.Parameter(out.weight.detach().clone())


class OutsideTensorAdapter(Adapter):
    """Its predictions read a tensor that is not registered in the model."""
    isolates_tasks = True

    def setup(self):
        super().setup()
        self.shift = torch.zeros(())

    def forward(self, batch, t):
        return super().forward(batch, t) + self.shift


@pytest.mark.parametrize("cls", [LeakyAdapter, ReplacingAdapter, OutsideTensorAdapter])
def test_a_task_is_scored_again_when_what_it_reads_may_have_changed(cls, monkeypatch, tmp_path, cache_dir, scored):
    METHODS.names()  # load the registry before adding to it
    monkeypatch.setitem(METHODS._items, "zz_" + cls.__name__, cls)
    every = run_method("zz_" + cls.__name__, tmp_path / "every", cache_dir, reuse_scores=False)
    settled = run_method("zz_" + cls.__name__, tmp_path / "settled", cache_dir)
    T = len(settled["matrix"])
    if cls is ReplacingAdapter:  # task 0 after every task, the others once
        assert scored == [j for i in range(T) for j in range(i + 1) if j in (0, i)]
    else:  # every seen task after every task
        assert scored == [j for i in range(T) for j in range(i + 1)]
    assert settled["matrix"] == every["matrix"]
    if cls is LeakyAdapter:  # the leak is real: the checkpoint holds backbone tensors that differ from the built ones
        changed = load_tensors(tmp_path / "settled" / "runs" / settled["run_id"] / "checkpoint.pt")["method"]
        assert any(k.startswith("backbone.") for k in changed)
