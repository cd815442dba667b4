"""Smoke tests of `run_bench.py perf` on the toy backbone: the sections run, the bare loop and the
cached runs reproduce the harness's numbers, and the last line is machine-readable. Not timed: the
numbers are whatever this machine gives."""
import math
from pathlib import Path

import pytest

from bench.perf import Workload, main, makespan
from bench.registry import METHODS


def parse(line: str) -> dict:
    return {k: float(v) for k, v in (item.split("=") for item in line.split())}


@pytest.fixture
def toy(tmp_path, cache_dir):
    return Workload(backbone="toy", quick=True, steps=2, repeats=1, cache_dir=cache_dir, scratch=tmp_path)


def test_perf_sections_run_and_end_with_the_numbers(toy, tmp_path, monkeypatch):
    names = METHODS.names()
    monkeypatch.setattr(METHODS, "names", lambda: [m for m in names if m in ("finetune", "frozen", "single_task")])
    lines = []
    numbers = main(toy, sections=("a", "c", "d"), estimate_leaderboard=True, say=lines.append)
    last = parse(lines[-1])
    assert list(last) == ["overhead_ratio", "avalanche_ratio", "cache_speedup", "leaderboard_s", "rss_growth", "stream_ratio"]
    assert last["overhead_ratio"] > 0 and last["cache_speedup"] > 0 and last["leaderboard_s"] > 0
    assert math.isnan(last["avalanche_ratio"]) and math.isnan(last["rss_growth"])  # sections b, g not asked for
    assert numbers["overhead_ratio"] == pytest.approx(last["overhead_ratio"], abs=1e-3)
    overhead = next(line for line in lines if line.startswith("(a)"))
    assert "same scores: yes" in overhead  # the bare loop does exactly the harness's work
    cache = [line for line in lines if line.startswith("(c)")]
    assert any("frozen (whole backbone frozen)" in line for line in cache)
    assert all("same scores: yes" in line for line in cache)  # cached == uncached
    assert any(line.startswith("(d) leaderboard: ESTIMATED") for line in lines)
    assert not list(tmp_path.glob("perf-*"))  # the scratch runs are removed


def test_perf_measures_the_leaderboard_by_default(toy, monkeypatch):
    import bench.suite
    asked = []
    # the sequence's default set (what `make leaderboard` runs), here two methods
    monkeypatch.setattr(bench.suite, "method_set", lambda methods, sequence, known: asked.append(methods) or ["finetune", "frozen"])
    monkeypatch.setenv("MMCL_PLUGINS", str(Path(__file__).with_name("conftest.py")))  # workers register the toy backbone
    lines = []
    seconds = main(toy, sections=("d",), say=lines.append)["leaderboard_s"]
    measured = next(line for line in lines if line.startswith("(d) leaderboard: MEASURED"))
    assert seconds > 0 and "exit code 0" in measured
    per_method = {line.split()[0]: line for line in lines if line.startswith("    ")}
    assert {"finetune", "frozen", "single_task"} <= per_method.keys()  # the references run too
    assert all("x 3 =" in line for line in per_method.values())  # three seeds each
    assert asked == [["default"]]  # make leaderboard's command: the default method set


def test_perf_against_avalanche(toy):
    pytest.importorskip("avalanche", reason="avalanche-lib is optional (requirements-perf.txt)")
    lines = []
    ratio = main(toy, sections=("b",), say=lines.append)["avalanche_ratio"]
    assert ratio > 0 and math.isfinite(ratio)
    assert [line.split()[0] for line in lines if line.startswith("    ")] == ["finetune", "ewc", "er", "total"]


def test_the_end_to_end_avalanche_model_computes_the_features_the_harness_caches(tmp_path, cache_dir):
    """(b) end to end: Avalanche's model runs MobileNetV2 on each batch's pixels; it must see exactly
    the inputs the harness reads from its cache, or the comparison would not be the same workload."""
    import torch
    from bench.backbones.embedded import MobileNetGrid
    from bench.perf import load_workload, pixel_splits
    wl = Workload(quick=True, steps=1, cache_dir=cache_dir, scratch=tmp_path)
    cfg = wl.config("finetune")
    _, _, cached = load_workload(cfg, wl)
    pixels, trunk = pixel_splits(cfg, wl), MobileNetGrid()
    for name in ("train", "test"):
        for c, p in zip(cached[name], pixels[name], strict=True):
            assert c.fields.keys() == p.fields.keys()
            assert all(torch.equal(c.fields[k], p.fields[k]) for k in c.fields)
            if c.images is None:
                assert p.images is None
                continue
            assert p.images.dtype == torch.uint8 and p.images.shape[0] == c.images.shape[0]
            with torch.inference_mode():
                assert torch.allclose(trunk(p.images), c.images[torch.arange(len(c.images))], atol=1e-4)


def test_makespan_packs_longest_first():
    assert makespan([4, 3, 3, 2], 2) == 6  # 4+2 | 3+3
    assert makespan([5], 2) == 5 and makespan([], 2) == 0


def test_avalanche_end_to_end_and_loop_only_train_the_same_way(tmp_path, cache_dir):
    """Same seed, same order, same features: the two Avalanche variants differ only in where the
    image features come from, so their scores agree (they differ from the harness's: other loss)."""
    pytest.importorskip("avalanche", reason="avalanche-lib is optional (requirements-perf.txt)")
    from bench.perf import avalanche_run, pixel_splits
    wl = Workload(quick=True, steps=2, cache_dir=cache_dir, scratch=tmp_path)
    cfg = wl.config("finetune", [("val_checks", "0"), ("precision", "fp32")])
    loop, end_to_end = avalanche_run("finetune", cfg, wl), avalanche_run("finetune", cfg, wl, pixel_splits(cfg, wl))
    assert len(loop) == len(end_to_end) == 4
    assert all(a == pytest.approx(b, abs=1.0) for x, y in zip(loop, end_to_end) for a, b in zip(x, y, strict=True))
