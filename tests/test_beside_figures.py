"""The figures of the scores kept beside the matrix (bench/figures.py novel_bars, retention_curves),
from a report over fake finished runs with "novel" and "probe" results: the drawn bars, ticks,
error bars and lines read back from matplotlib's artists equal means over the runs' metrics.json
computed here; at 3.3 and 7 inches no text overlaps another or leaves the figure, and the PDFs embed
TrueType fonts. A report without such runs draws neither."""
import base64

import numpy as np
import pytest

from bench.figures import STD_LABEL
from bench.report import ReportOptions, write_report
from fake_runs import TASKS, write_run
from figure_checks import capture

METHODS = ("finetune", "adapter", "er", "l2p", "frozen")
SEEDS = (0, 1)
PROBES = ["vqa_yesno", "digits"]


def beside(rng) -> dict:
    """A run's "novel" and "probe" entries as bench/novel.py and bench/probe.py write them, random;
    the probe's first task is unscored after task 1 in every run (a None, as a joint method's rows)."""
    N = [[float(rng.uniform(10, 90)) if j in (0, 3) and j <= i else None for j in range(4)] for i in range(4)]
    retention = [[float(rng.uniform(0.6, 1.1)) for _ in PROBES] for _ in range(4)]
    retention[1][0] = None
    seen = float(rng.uniform(40, 95))
    return {"novel": {"tasks": [TASKS[0], TASKS[3]], "matrix": N,
                      "summary": {"novel_final": float(np.mean([N[3][0], N[3][3]])), "seen_final": seen}},
            "probe": {"tasks": PROBES, "retention": retention,
                      "summary": {"retention_final": float(np.mean(retention[-1])), "retention_mean": 1.0}}}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("beside")
    saved, runs = {}, []
    for width in (3.3, 7.0):
        out = root / f"w{width}"
        runs = []
        for k, method in enumerate(METHODS):
            for seed in SEEDS:
                rng = np.random.default_rng(10 * k + seed)
                A = [[float(rng.uniform(40, 100)) if j <= i else None for j in range(4)] for i in range(4)]
                runs.append(write_run(out, method, seed, A, beside=beside(rng)))
        with capture(saved, out / "figures"):
            write_report(out, ReportOptions(figure_width=width))
    plain = root / "plain"  # whether the figures are drawn does not depend on the width
    write_run(plain, "finetune", 0, runs[0]["matrix"])
    write_report(plain, ReportOptions())
    assert not any((plain / "figures" / name).exists() for name in ("novel.png", "retention.png"))
    return root, runs, saved


def per_method(runs, value) -> dict:
    return {m: [value(r) for r in runs if r["method"] == m] for m in METHODS}


def test_novel_bars_are_the_runs_final_novel_scores_with_the_seen_ones_ticked(reported):
    _, runs, saved = reported
    novel = per_method(runs, lambda r: r["novel"]["summary"]["novel_final"])
    seen = per_method(runs, lambda r: r["novel"]["summary"]["seen_final"])
    for width in (3.3, 7.0):
        shown = saved[(width, "novel")]
        order = shown["yticks"]  # bottom to top: the best on top
        assert sorted(order) == sorted(METHODS)
        widths = [w for w, _ in shown["bars"]]
        assert widths == pytest.approx([np.mean(novel[m]) for m in order]) and widths == sorted(widths)
        for m, (low, high) in shown["errorbars"][STD_LABEL].items():
            spread = np.std(novel[m], ddof=1)
            assert (low, high) == pytest.approx((np.mean(novel[m]) - spread, np.mean(novel[m]) + spread))
        ticks = np.asarray(shown["points"]["seen compositions (test split)"])
        assert ticks[:, 0].tolist() == pytest.approx([np.mean(seen[m]) for m in order])
        assert ticks[:, 1].tolist() == pytest.approx(range(len(order)))  # each on its method's bar
        assert "seen compositions (test split)" in shown["legend"]


def test_retention_curves_are_the_runs_retention_after_each_task(reported):
    _, runs, saved = reported

    def curve(r):  # % of the score before, averaged over the probe tasks; NaN where one is unscored
        return [np.nan if None in row else 100.0 * np.mean(row) for row in r["probe"]["retention"]]
    curves = per_method(runs, curve)
    for width in (3.3, 7.0):
        shown = saved[(width, "retention")]
        (lines,) = shown["lines"]
        assert {k for k in lines if not k.startswith("_")} == set(METHODS)
        for m in METHODS:
            x, y = lines[m]
            assert list(x) == [1, 2, 3, 4]
            np.testing.assert_allclose(y, np.mean(curves[m], axis=0))
            assert np.isnan(y).tolist() == [False, True, False, False]  # the unscored probe task's row
        (reference,) = [v for k, v in lines.items() if k.startswith("_")]  # the line at 100 %
        assert set(reference[1]) == {100}
        assert shown["titles"][0] == "default / default: probe vqa_yesno, digits"
        assert set(shown["legend"]) == set(METHODS)


def test_both_figures_keep_labels_apart_at_their_width_with_truetype(reported):
    root, _, saved = reported
    for width in (3.3, 7.0):
        for name in ("novel", "retention"):
            shown = saved[(width, name)]
            assert shown["overlaps"] == [] and shown["outside"] == [], (width, name)
            assert shown["size"][0] == pytest.approx(width)
            data = (root / f"w{width}" / "figures" / f"{name}.pdf").read_bytes()
            assert b"/FontFile2" in data and b"/Type3" not in data


def test_results_page_shows_the_novel_and_retention_figures(reported):
    root, _, _ = reported
    out = root / "w7.0"
    index = (out / "index.html").read_text()
    for name in ("novel", "retention"):
        png = base64.b64encode((out / "figures" / f"{name}.png").read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{png}" in index
