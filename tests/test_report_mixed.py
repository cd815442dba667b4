"""The report on a mixed results folder, as a real one is after the harness grew: most runs with
per-example scores (examples.npz), older runs without (lwf), a failed run, and composition
diagnostics (adapter_fusion stayed at its initialisation on one task in one seed, scalearn never).
Checked: the bar figures' error bars are the table's 95 % CIs where it has them and ± std where it
has not (read back from the drawn artists), every figure written keeps its labels apart, is the
requested width and embeds TrueType fonts; the leaderboard (md, csv, tex, results page) marks the
composition that stayed at its initialisation and diagnostics.md has its numbers; claims about
methods not run, or left out of the statistics, say so."""
import numpy as np
import pandas as pd
import pytest

from bench import figures
from bench.figures import CI_LABEL, STD_LABEL
from bench.report import ReportOptions, write_report
from bench.stats import write_ci_figure
from fake_runs import TASKS, example_matrix, leaderboard_runs, write_run
from figure_checks import capture

SCORED = ("finetune", "ewc")  # runs with examples.npz
OLD = ("lwf",)  # runs made before examples.npz
SEEDS = (0, 1)
WIDTH = 3.3


def sites(task: int, seed: int) -> list[dict]:
    """Two sites of a fusion over task + 1 adapters; seed 0's task 2 stays uniform."""
    n = task + 1
    if (task, seed) == (2, 0):
        return [{"entropy_vs_uniform": 1.0, "top_weight": 1 / n, "uniform": 1 / n, "mean_weight": [1 / n] * n}] * 2
    rng = np.random.default_rng(10 * task + seed)
    out = []
    for _ in range(2):
        w = rng.dirichlet(np.ones(n)).tolist()
        out.append({"entropy_vs_uniform": float(rng.uniform(0.2, 0.9)), "top_weight": max(w), "uniform": 1 / n,
                    "mean_weight": w})
    return out


def fusion_diagnostics(seed: int) -> dict:
    return {"0": {}, **{str(t): {"sites": sites(t, seed), "at_init": (t, seed) == (2, 0)} for t in (1, 2, 3)}}


def scalearn_diagnostics(seed: int) -> dict:
    return {str(t): {"init": 2 / (t + 1), "sites": [{"mean": [0.5 + 0.1 * seed] * (t + 1), "std": [0.01] * (t + 1)}],
                     "moved": 0.2, "at_init": False} for t in range(4)}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "results"
    runs = leaderboard_runs(out, seeds=SEEDS, methods=SCORED, examples=40, downstream=("imdb",))
    runs += leaderboard_runs(out, seeds=SEEDS, methods=OLD, downstream=("imdb",))
    for k, (method, diagnostics) in enumerate((("adapter_fusion", fusion_diagnostics), ("scalearn", scalearn_diagnostics))):
        for seed in SEEDS:
            A, examples = example_matrix(np.random.default_rng(100 + 10 * k + seed), 40)
            runs.append(write_run(out, method, seed, A, examples=examples, diagnostics=diagnostics(seed)))
    (out / "runs" / "default-er-s0-broken").mkdir()
    (out / "runs" / "default-er-s0-broken" / "FAILED").write_text("killed\n")
    saved = {}
    mp = pytest.MonkeyPatch()  # one method's matrix and curves (test_figures.py checks those): a faster test
    real = figures.by_method
    mp.setattr(figures, "by_method", lambda runs: real(runs)[:1])
    try:
        with capture(saved, out / "figures"):
            report = write_report(out, ReportOptions(figure_width=WIDTH))
    finally:
        mp.undo()
    table = pd.read_csv(out / "leaderboard.csv")
    with capture(saved, out / "more"), figures.plt.rc_context(figures.STYLE):
        figures.forgetting_bars(table, out / "more", 7.0)  # the CI figures at two-column width too
        write_ci_figure(table.rename(columns={"final_avg_mean": "final_avg"}), out / "more" / "ci", 7.0)
        figures.forgetting_bars(table.dropna(subset=["forgetting_ci_low"]), out / "more" / "all_ci", WIDTH)
    return out, runs, report, saved, table.set_index("method")


def test_error_bars_are_the_tables_ci_else_std(reported):
    _, runs, _, saved, table = reported
    shown = saved[(WIDTH, "forgetting")]
    with_ci = set(table.index[table["forgetting_ci_low"].notna()])
    assert with_ci == set(SCORED + ("adapter_fusion", "scalearn"))  # every run with examples, none without
    ci, std = shown["errorbars"][CI_LABEL], shown["errorbars"][STD_LABEL]
    assert set(ci) == with_ci and set(std) == set(OLD)
    for method, (low, high) in ci.items():
        assert (low, high) == pytest.approx((table.at[method, "forgetting_ci_low"], table.at[method, "forgetting_ci_high"]))
        assert low < high
    for method, (low, high) in std.items():  # mean ± sample std of the runs' own forgetting
        values = [r["summary"]["forgetting"] for r in runs if r["method"] == method]
        assert (low, high) == pytest.approx((np.mean(values) - np.std(values, ddof=1), np.mean(values) + np.std(values, ddof=1)))
    assert shown["title"].endswith("mean, 95 % CI (black), ± std where none (grey)")
    assert {CI_LABEL, STD_LABEL} <= set(shown["legend"])
    only_ci = saved[(WIDTH, "all_ci/forgetting")]  # every method has a CI
    assert list(only_ci["errorbars"]) == [CI_LABEL] and only_ci["title"].endswith("mean, 95 % CI over seeds and test examples")
    down = saved[(WIDTH, "downstream")]  # the statistics have no downstream CI
    assert list(down["errorbars"]) == [STD_LABEL] and down["title"].endswith("mean ± std over seeds")


def test_every_figure_written_keeps_labels_apart_at_its_width_with_truetype(reported):
    out, _, report, saved, _ = reported
    written = {p.relative_to(out / "figures").with_suffix("").as_posix() for p in (out / "figures").rglob("*.png")}
    assert {name for width, name in saved if width == WIDTH} == written | {"all_ci/forgetting"}
    assert {name for width, name in saved if width == 7.0} == {"forgetting", "ci"} and "ci-default-default" in written
    for key, shown in saved.items():  # every PNG written
        assert shown["overlaps"] == [] and shown["outside"] == [], key
        assert shown["size"][0] == pytest.approx(key[0]), key
    for pdf in out.rglob("*.pdf"):
        data = pdf.read_bytes()
        assert b"/FontFile2" in data and b"/Type3" not in data, pdf.name


def test_leaderboard_marks_a_composition_that_stayed_at_its_initialisation(reported):
    out, _, _, _, table = reported
    note = "adapter_fusion: the composition stayed at its initialisation on digits (seed 0 of 2); see diagnostics.md"
    assert table.at["adapter_fusion", "at_init"] == "digits (seed 0 of 2)"
    assert table["at_init"].notna().sum() == 1
    md = (out / "leaderboard.md").read_text()
    assert "| adapter_fusion † |" in md and "| scalearn |" in md and f"† {note}" in md
    tex = (out / "leaderboard.tex").read_text()
    assert r"adapter\_fusion $^\dagger$ &" in tex and "\\par $^\\dagger$ " + note.replace("_", r"\_") in tex
    page = (out / "index.html").read_text()
    assert "<td data-sort=\"adapter_fusion\">adapter_fusion †</td>" in page and f"† {note}" in page
    assert "Failed runs" in md and "default-er-s0-broken" in page


def test_results_page_shows_ci_beside_mean_and_std(reported):
    out, runs, _, _, table = reported
    page = (out / "index.html").read_text()
    for method in SCORED:
        finals = [r["summary"]["final_avg"] for r in runs if r["method"] == method]
        low, high = table.at[method, "final_avg_ci_low"], table.at[method, "final_avg_ci_high"]
        assert f">{np.mean(finals):.1f} ± {np.std(finals, ddof=1):.1f} [{low:.1f}, {high:.1f}]<" in page


def test_diagnostics_md_averages_sites_then_seeds(reported):
    out, _, _, _, _ = reported
    md = (out / "diagnostics.md").read_text()
    section = md.split("### adapter_fusion (default / default)")[1].split("###")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == "| task | seeds at init | entropy_vs_uniform | top_weight | uniform | mean_weight |"
    for task in (1, 2, 3):  # a bare loop: each site's values, averaged over sites, then seeds
        per_seed = [sites(task, s) for s in SEEDS]
        top = np.mean([np.mean([x["top_weight"] for x in ss]) for ss in per_seed])
        entropy = np.mean([np.mean([x["entropy_vs_uniform"] for x in ss]) for ss in per_seed])
        per_source = np.mean([np.mean([x["mean_weight"] for x in ss], axis=0) for ss in per_seed], axis=0)
        at_init = sum((task, s) == (2, 0) for s in SEEDS)
        assert (f"| {TASKS[task]} | {at_init} of 2 | {entropy:.3g} | {top:.3g} | {1 / (task + 1):.3g} | "
                f"{per_source.min():.3g}–{per_source.max():.3g} |") in lines
    assert len(lines) == 2 + 3  # task 0 (no fusion) has no row
    # scalearn: init, moved, then per source (equal over sources: one value) its mean and std
    assert "| vqa_color | 0 of 2 | 2 | 0.2 | 0.55 | 0.01 |" in md and "| digits | 0 of 2 | 0.667 | 0.2 | 0.55 | 0.01 |" in md


def test_claims_say_which_methods_were_not_run_or_left_out(reported):
    out, _, _, _, _ = reported
    claims = (out / "claims.md").read_text()
    assert "| DER++ forgets less than ER (Buzzega et al.) | forgetting (derpp vs er) | – | – | not run |" in claims
    assert "| finetune forgets more than lwf | forgetting (finetune vs lwf) | – | – | left out of the statistics |" in claims
    assert "| lwf forgets more than adapter | forgetting (lwf vs adapter) | – | – | not run |" in claims
    row = next(line for line in claims.splitlines() if line.startswith("| finetune forgets more than ewc |"))
    assert row.endswith(("| reproduced |", "| not reproduced |", "| not distinguishable at this budget |"))
    left = "Left out (no per-example scores that match its score matrix): `default-lwf-s0-fake`, `default-lwf-s1-fake`."
    assert left in claims

