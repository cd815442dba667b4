"""Paper-grade figures, measured on what is saved: no two text boxes intersect (matplotlib's own
renderer measures them), bars sorted by the value shown and coloured by family, the requested
width, TrueType fonts embedded in the PDFs, and the downstream and compute figures. Built from
fake finished runs with the 29-method reference leaderboard's parameter counts (clustered)."""
import numpy as np
import pandas as pd
import pytest

from bench import figures, report
from bench.families import family_of
from fake_runs import leaderboard_runs
from figure_checks import capture

SAVED = {}  # (width, file name under its folder) -> what the saved figure showed


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The figures at both widths: all methods for the figures over methods, two for the per-method ones."""
    out = tmp_path_factory.mktemp("figs")
    runs = leaderboard_runs(out)
    table = report.leaderboard(report.runs_frame(runs))
    few = [r for r in runs if r["method"] == "scalearn_uniform_pp"]
    paths = {}
    for width in (3.3, 7.0):
        down = [k for k in report.downstream_keys(table) if k != report.DOWN_TRANSFER]
        with capture(SAVED, out / f"w{width}"):
            paths[width] = figures.write_figures(few, table, out / f"w{width}", width, down)
    return runs, table, paths


def test_no_two_labels_overlap_at_either_width(drawn):
    _, _, paths = drawn
    assert {name for _, name in SAVED} == {"forgetting", "downstream", "score_vs_params", "score_vs_compute",
                                         "matrix/default-default-scalearn_uniform_pp",
                                         "curves/default-default-scalearn_uniform_pp"}
    for key, shown in SAVED.items():
        assert shown["overlaps"] == [], key
        assert shown["outside"] == [], key


def test_widths_fonts_and_formats(drawn):
    _, _, paths = drawn
    for width, files in paths.items():
        assert {p.suffix for p in files} == {".png", ".pdf"}
        for key, shown in SAVED.items():
            if key[0] == round(width, 1):
                assert shown["size"][0] == pytest.approx(width)
        pdf = next(p for p in files if p.name == "forgetting.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType embedded (pdf.fonttype 42)


def mean_over_seeds(runs, value) -> pd.Series:
    frame = pd.DataFrame([{"method": r["method"], "v": value(r)} for r in runs])
    return frame.groupby("method")["v"].mean()


def test_bars_sorted_by_value_and_coloured_by_family(drawn):
    runs, _, _ = drawn
    forgetting = mean_over_seeds(runs, lambda r: r["summary"]["forgetting"])
    shown = SAVED[(7.0, "forgetting")]
    best_first = list(forgetting.sort_values().index)  # lower forgetting is better
    assert shown["yticks"][::-1] == best_first  # best on top; every method named
    widths = [w for w, _ in shown["bars"]][::-1]
    assert widths == pytest.approx(list(forgetting.sort_values()))
    colours = {tuple(c) for _, c in shown["bars"]}
    assert len(colours) == len({family_of(m) for m in best_first}) > 3
    for (w, colour), method in zip(shown["bars"][::-1], best_first):
        assert tuple(colour[:3]) == pytest.approx(figures.FAMILY_COLOURS[family_of(method)])
    # no run has per-example scores: every error bar is the spread over seeds, and the figure says so
    assert set(shown["legend"]) == {family_of(m) for m in best_first} | {figures.STD_LABEL}
    assert list(shown["errorbars"]) == [figures.STD_LABEL] and shown["title"].endswith("mean ± std over seeds")


def test_downstream_figure_ranks_the_mean_downstream_score(drawn):
    runs, _, _ = drawn
    down = mean_over_seeds(runs, lambda r: np.mean([d["score"] for d in r["downstream"]]))
    shown = SAVED[(7.0, "downstream")]
    order = list(down.sort_values(ascending=False).index)
    assert shown["yticks"][::-1] == order
    assert [w for w, _ in shown["bars"]][::-1] == pytest.approx(list(down.sort_values(ascending=False)))


def test_score_vs_compute_plots_training_seconds(drawn):
    runs, _, _ = drawn
    seconds = mean_over_seeds(runs, lambda r: sum(r["time"]["train_s_per_task"]))
    final = mean_over_seeds(runs, lambda r: r["summary"]["final_avg"])
    (points,) = [o for o in SAVED[(7.0, "score_vs_compute")]["offsets"] if len(o)]
    want = sorted(zip(seconds[final.index], final))
    got = sorted(map(tuple, points))
    assert [x for x, _ in got] == pytest.approx([x for x, _ in want])
    assert [y for _, y in got] == pytest.approx([y for _, y in want])


def test_figure_width_is_a_report_option():
    options, rest = report.ReportOptions.from_sets([("figure_width", "3.3"), ("lr", "1e-3")])
    assert options.figure_width == 3.3 and rest == [("lr", "1e-3")]
    with pytest.raises(Exception, match="bad figure_width=100.0: must be inches from 2 to 20"):
        report.ReportOptions.from_sets([("figure_width", "100")])
