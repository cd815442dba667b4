"""The leaderboard's downstream column group (CLiMB phase II) and its cells: mean ± std over
seeds, or mean [low, high] where the table carries a confidence interval."""
import numpy as np
import pytest
import pandas as pd

from bench import report
from fake_runs import leaderboard_runs


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
    assert report.cell(ci, "final_avg") == "80.0 [77.2, 82.5]"
    assert report.cell(pd.Series({"final_avg_mean": np.nan, "final_avg_std": np.nan, "n": 3}), "final_avg") == "–"
