"""Stage reuse (bench/reuse.py): a stage several methods share is trained once, and reusing it
changes no number."""
import torch

from bench.store import load_tensors
from conftest import run_method


def stages(metrics, name):
    return [s for s in metrics["stages"] if s["stage"] == name]


def test_scalearn_reuses_the_adapter_runs_stage_and_gets_the_numbers_it_would_compute(tmp_path):
    cache = tmp_path / "cache"  # a stage store of its own: nothing from other tests
    alone = run_method("scalearn", tmp_path / "alone", cache, reuse_stages=False)
    assert not (cache / "stages").exists()
    adapter = run_method("adapter", tmp_path / "a", cache)
    assert len(list((cache / "stages").glob("adapter-*.pt"))) == 4  # one per task
    assert not any(s.get("reused") for s in adapter["stages"])
    shared = run_method("scalearn", tmp_path / "b", cache)
    assert all(s.get("reused") for s in stages(shared, "adapter"))
    assert not any(s.get("reused") for s in stages(shared, "scaling"))
    assert shared["matrix"] == alone["matrix"]  # bit for bit: the same weights and the same RNG afterwards
    # the claim behind the declaration: ScaLearn's stage 1 trains what `adapter` trains
    a = load_tensors(tmp_path / "a" / "runs" / adapter["run_id"] / "checkpoint.pt")["method"]
    s = load_tensors(tmp_path / "alone" / "runs" / alone["run_id"] / "checkpoint.pt")["method"]
    for key in (k for k in a if k.startswith("adapters.")):
        assert torch.equal(a[key], s[key]), key
    # the reused stage's cost is what it took where it was trained
    assert [s["seconds"] for s in stages(shared, "adapter")] == [s["seconds"] for s in adapter["stages"]]


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
