"""The leaderboard's downstream column group (CLiMB phase II) and its cells: mean ± std over
seeds, with [low, high] beside it where the table carries a confidence interval; the report's
intervals are bench/stats.py's for the runs' per-example scores."""
import numpy as np
import pytest
import pandas as pd

from bench import report
from bench.examples import RunExamples
from bench.stats import bootstrap, ci_table, load_settings
from fake_runs import leaderboard_runs, write_run


def test_downstream_columns_are_the_means_over_seeds(tmp_path):
    runs = leaderboard_runs(tmp_path, seeds=(0, 1), methods=("finetune", "adapter"), downstream=("imdb", "sst2", "piqa"))
    table = report.leaderboard(report.runs_frame(runs)).set_index("method")
    for method in ("finetune", "adapter"):
        mine = [r for r in runs if r["method"] == method]
        for task in ("imdb", "sst2"):
            scores = [next(d["score"] for d in r["downstream"] if d["task"] == task) for r in mine]
            assert table.loc[method, f"down:{task}_mean"] == pytest.approx(np.mean(scores))
            assert table.loc[method, f"down:{task}_std"] == pytest.approx(np.std(scores, ddof=1))
        transfers = [np.mean([d["transfer"] for d in r["downstream"]]) for r in mine]
        assert table.loc[method, "down_transfer_mean"] == pytest.approx(np.mean(transfers))
    shown = report.pretty(table.reset_index())
    assert list(shown.columns[7:11]) == ["DS imdb", "DS sst2", "DS piqa", "DS transfer"]


def test_cells_show_a_confidence_interval_when_the_table_has_one():
    row = pd.Series({"final_avg_mean": 80.0, "final_avg_std": 2.0, "n": 3})
    assert report.cell(row, "final_avg") == "80.0 ± 2.0"
    ci = pd.concat([row, pd.Series({"final_avg_ci_low": 77.25, "final_avg_ci_high": 82.5})])
    assert report.cell(ci, "final_avg") == "80.0 ± 2.0 [77.2, 82.5]"
    assert report.cell(pd.Series({"final_avg_mean": np.nan, "final_avg_std": np.nan, "n": 3}), "final_avg") == "–"


def test_the_leaderboard_carries_the_bootstrap_intervals_of_the_runs_per_example_scores(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    for method, p in (("finetune", 0.5), ("adapter", 0.8), ("single_task", 0.7)):
        for seed in (0, 1):
            cells = {(i, j): rng.random(n) < p for i in range(2) for j in range(i + 1)}
            matrix = [[100.0 * cells[i, j].mean() if j <= i else None for j in range(2)] for i in range(2)]
            single = [100.0 * cells[j, j].mean() for j in range(2)]
            run = write_run(tmp_path, method, seed, matrix, single=single)
            RunExamples(cells, {0: "t0", 1: "t1"}).save(tmp_path / "runs" / run["run_id"])
    result = report.write_report(tmp_path)
    table = pd.read_csv(tmp_path / "leaderboard.csv").set_index("method")
    [setting] = load_settings(tmp_path)
    expected = ci_table(bootstrap(setting.runs, baseline="finetune")).set_index("method")
    for method in ("finetune", "adapter"):
        for key in ("final_avg", "forgetting"):
            assert table.loc[method, f"{key}_ci_low"] == pytest.approx(expected.loc[method, f"{key}_ci_low"])
            assert table.loc[method, f"{key}_ci_high"] == pytest.approx(expected.loc[method, f"{key}_ci_high"])
    shown = result["table"].set_index("Method")
    low, high = table.loc["adapter", "final_avg_ci_low"], table.loc["adapter", "final_avg_ci_high"]
    assert shown.loc["adapter", "Final avg"].endswith(f"[{low:.1f}, {high:.1f}]")
    assert shown.loc["adapter", "Group"] != shown.loc["finetune", "Group"]  # 80 % vs 50 % correct: told apart
    assert "adapter" in (tmp_path / "claims.md").read_text()
