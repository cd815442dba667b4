"""Stage reuse (bench/reuse.py): a stage several methods share is trained once, and reusing it
changes no number."""
import pytest
import torch

from bench.registry import METHODS
from bench.store import load_tensors
from conftest import run_method


def stages(metrics, name):
    return [s for s in metrics["stages"] if s["stage"] == name]


SHARING = {m: METHODS.get(m).trains_as for m in METHODS.names() if METHODS.get(m).trains_as not in (None, m)}


@pytest.mark.parametrize("method", sorted(SHARING))
def test_a_method_reusing_a_shared_stage_gets_the_numbers_it_would_compute(method, tmp_path):
    source = SHARING[method]
    cache = tmp_path / "cache"  # a stage store of its own: nothing from other tests
    alone = run_method(method, tmp_path / "alone", cache, reuse_stages=False)
    assert not (cache / "stages").exists()
    first = run_method(source, tmp_path / "a", cache)
    assert not any(s.get("reused") for s in first["stages"])
    shared = run_method(method, tmp_path / "b", cache)
    reused = [s for s in shared["stages"] if s.get("reused")]
    assert reused and all(s["stage"] in ("adapter", "train") for s in reused)
    if source in ("finetune", "lora"):
        assert [s["task"] for s in reused] == [0]  # only the first task is plain fine-tuning / a lone LoRA
    assert shared["matrix"] == alone["matrix"]  # bit for bit: the same weights and the same RNG afterwards
    # a reused stage costs what it took where it was trained
    trained = {s["task"]: s["seconds"] for s in first["stages"]}
    assert all(s["seconds"] == trained[s["task"]] for s in reused)
    if source == "adapter":  # the claim behind the declaration: its own training gives `adapter`'s weights
        a = load_tensors(tmp_path / "a" / "runs" / first["run_id"] / "checkpoint.pt")["method"]
        m = load_tensors(tmp_path / "alone" / "runs" / alone["run_id"] / "checkpoint.pt")["method"]
        for t in sorted({s["task"] for s in reused}):
            for key in (k for k in a if k.startswith(f"adapters.{t}.")):
                assert torch.equal(a[key], m[key]), key


def test_a_subclass_shares_only_what_it_declares_itself():
    from methods.adapter import Adapter
    from methods.finetune import Finetune

    class AnchoredAdapter(Adapter):  # e.g. a plugin with another loss: must not read `adapter`'s stages
        pass

    class AnchoredFinetune(Finetune):
        pass
    assert AnchoredAdapter.trains_as is None and Adapter.trains_as == "adapter"
    assert AnchoredFinetune.trains_as is None and Finetune.trains_as == "finetune"


def test_a_stage_is_not_reused_when_anything_it_depends_on_differs(tmp_path):
    cache = tmp_path / "cache"
    run_method("adapter", tmp_path / "a", cache)
    other_seed = run_method("adapter", tmp_path / "b", cache, seed=1)
    other_lr = run_method("adapter", tmp_path / "c", cache, sets=["lr=3e-3"])
    pfeiffer = run_method("pfeiffer", tmp_path / "d", cache)
    for m in (other_seed, other_lr, pfeiffer):
        assert not any(s.get("reused") for s in m["stages"]), m["run_id"]
    again = run_method("adapter", tmp_path / "e", cache)
    assert all(s.get("reused") for s in again["stages"])


def test_a_damaged_stage_entry_is_retrained_not_read(tmp_path):
    cache = tmp_path / "cache"
    first = run_method("adapter", tmp_path / "a", cache)
    for entry in (cache / "stages").glob("adapter-*.pt"):
        entry.write_bytes(entry.read_bytes()[:100])
    again = run_method("adapter", tmp_path / "b", cache)
    assert not any(s.get("reused") for s in again["stages"])
    assert again["matrix"] == first["matrix"]
