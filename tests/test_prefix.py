"""Frozen-prefix caching (bench/prefix.py): a method declaring a frozen bottom gets the same
numbers with the cache as without, a warm cache skips the frozen backbone entirely, and a prefix
that is not really frozen is refused."""
from pathlib import Path

import pytest
import torch

from bench.adapters import Injector
from bench.backbones.base import FROZEN, pooled
from bench.data import load_split
from bench.errors import BenchError
from bench.method import Method
from bench.prefix import FrozenPrefix
from bench.registry import METHODS, TASKS
from conftest import ToyBackbone, run_method

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("choices", [0, 3])
def test_restarting_from_block_k_is_the_same_forward(choices):
    backbone = ToyBackbone().freeze()
    split = load_split(backbone, TASKS.get("vqa_color")(), "test", None, limit=6)
    batch = split.batch(torch.arange(6))
    if choices:  # multiple choice: text fields [B, C, L], one row per choice through the backbone
        batch = {k: (torch.stack([v.roll(c, 0) for c in range(choices)], 1) if k in backbone.text_keys else v)
                 for k, v in batch.items()}
    with torch.no_grad():  # the prefix runs in eval mode by itself (in training mode here); compare with eval
        reference = pooled(backbone.eval(), batch)
        backbone.train()
        n = len(backbone.layers)
        for k, whole in [(k, False) for k in range(1, n + 1)] + [(n, True)]:
            prefix = FrozenPrefix(backbone, k, whole, [backbone] if whole else backbone.prefix_modules(k), "fp32")
            state = prefix.state(batch)
            backbone.eval()  # the upper blocks: no dropout, to compare
            assert torch.allclose(pooled(backbone, {**batch, **state}), reference, atol=1e-6), (k, whole)
            backbone.train()


@pytest.mark.parametrize("method", ["frozen", "freeze_bottom_k"])
def test_cached_and_uncached_prefix_give_the_same_numbers(method, tmp_path, cache_dir):
    uncached = run_method(method, tmp_path / "a", cache_dir, cache_prefix=False)
    cached = run_method(method, tmp_path / "b", cache_dir)
    assert uncached["run_id"] == cached["run_id"]  # caching is not part of a run's identity
    for row_u, row_c in zip(uncached["matrix"], cached["matrix"]):
        assert row_c == pytest.approx(row_u, abs=1e-6)
    assert list((cache_dir / "prefix").rglob("*.pt"))


@pytest.mark.parametrize("method", ["frozen", "freeze_bottom_k"])
def test_prefix_on_multiple_choice_two_image_and_downstream_tasks(method, tmp_path, cache_dir, monkeypatch):
    """CLiMB's sequence (NLVR2: two images; VCR: multiple choice) and its downstream tasks, each
    learnt by a fresh method that attaches its own prefix: the same numbers with and without cache,
    and a warm run never runs the backbone's full forward, downstream included."""
    sets = [f"data_root={FIXTURES / 'climb'}"]
    runs = [run_method(method, tmp_path / str(cached), cache_dir, sequence="climb_downstream", sets=sets, steps=2,
                       cache_prefix=cached) for cached in (False, True)]
    for row_u, row_c in zip(runs[0]["matrix"], runs[1]["matrix"]):
        assert row_c == pytest.approx(row_u, abs=1e-6)
    scores = [[d["score"] for d in r["downstream"]] for r in runs]
    assert len(scores[0]) == 9 and scores[1] == pytest.approx(scores[0], abs=1e-6)
    calls = []
    forward = ToyBackbone.forward
    monkeypatch.setattr(ToyBackbone, "forward", lambda self, batch: calls.append(1) or forward(self, batch))
    warm = run_method(method, tmp_path / "warm", cache_dir, sequence="climb_downstream", sets=sets, steps=2)
    assert len(warm["downstream"]) == 9 and not calls


def test_a_warm_prefix_cache_never_runs_the_frozen_backbone_and_a_corrupt_entry_is_recomputed(tmp_path, monkeypatch):
    calls = []
    forward = ToyBackbone.forward
    monkeypatch.setattr(ToyBackbone, "forward", lambda self, batch: calls.append(1) or forward(self, batch))
    run_method("frozen", tmp_path / "a", tmp_path / "cache", steps=2)
    assert calls  # the first run computes the pooled features once
    calls.clear()
    warm = run_method("frozen", tmp_path / "b", tmp_path / "cache", steps=2, seed=1)
    assert not calls  # the second trains and evaluates its heads on them
    for f in (tmp_path / "cache" / "prefix").rglob("*.pt"):
        f.write_bytes(b"\0" * 64)
    again = run_method("frozen", tmp_path / "c", tmp_path / "cache", steps=2, seed=1)
    assert calls and again["matrix"] == warm["matrix"]  # recomputed, same numbers


class DeclaresOneFrozenBlock(Method):
    def frozen_prefix(self):
        return 1


def test_a_prefix_that_is_not_frozen_is_refused():
    tasks = [TASKS.get("vqa_color")()]
    with pytest.raises(BenchError, match="trainable"):
        FrozenPrefix.of(DeclaresOneFrozenBlock(ToyBackbone(), tasks))  # nothing frozen
    method = DeclaresOneFrozenBlock(ToyBackbone().freeze(), tasks)
    assert FrozenPrefix.of(method) is not None
    Injector(method.backbone)  # adapters hook every block, the bottom one too
    with pytest.raises(BenchError, match="hooks"):
        FrozenPrefix.of(method)
    assert METHODS.get("finetune")(ToyBackbone(), tasks).frozen_prefix() == 0
