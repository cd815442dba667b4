"""Statistics of the leaderboard (bench/stats.py) on synthetic per-example scores with known
properties: point estimates are bench/metrics.py's, intervals are those of a bare numpy bootstrap
loop and of the normal closed form, identical methods are indistinguishable, a large margin is
separated, probability of improvement is rliable's, groups follow the pairwise tests."""
import numpy as np
import pytest

from bench import metrics
from bench.examples import RunExamples, cell_score
from bench.stats import (Bootstrap, Run, bootstrap, ci_table, indistinguishable_groups, load_settings,
                         pairwise_different, write_ci_figure)
from bench.store import runs_dir, write_json, write_text

CHANCE = [10.0, 20.0, 25.0]


def runs_of(method: str, probs, seeds=(0, 1, 2), n=200, rng=None, cells=None) -> list[Run]:
    """Runs whose cell (i, j) scores each example correct with probability probs[i][j] (plus a
    per-seed offset when probs is callable(seed) -> matrix); `cells` picks which cells exist
    (default: the lower triangle)."""
    rng = rng or np.random.default_rng(0)
    out = []
    for s in seeds:
        p = probs(s) if callable(probs) else probs
        T = len(p)
        keep = cells or [(i, j) for i in range(T) for j in range(i + 1)]
        out.append(Run(method, s, {(i, j): rng.random(n) < p[i][j] for i, j in keep}, CHANCE[:T]))
    return out


def matrix_of(run: Run, T: int) -> list[list[float | None]]:
    return [[cell_score(run.cells[(i, j)]) if (i, j) in run.cells else None for j in range(T)] for i in range(T)]


def test_point_estimates_are_bench_metrics_of_the_cell_means():
    rng = np.random.default_rng(1)
    T = 3
    runs = (runs_of("seq", [[.8, 0, 0], [.6, .7, 0], [.5, .65, .9]], rng=rng)
            + runs_of("multitask", [[.9] * 3] * 3, rng=rng, cells=[(2, 0), (2, 1), (2, 2)])
            + runs_of("single_task", [[.85, 0, 0], [0, .6, 0], [0, 0, .7]], rng=rng, cells=[(0, 0), (1, 1), (2, 2)]))
    for r in runs[-3:]:  # the reference at chance on task 2 (25 %): transfer there is undefined
        r.cells[(2, 2)] = np.arange(200) < 50
    boot = bootstrap(runs, n_resamples=200)
    for method in ("seq", "multitask", "single_task"):
        per_seed = []
        for r in (r for r in runs if r.method == method):
            ref = next(x for x in runs if x.method == "single_task" and x.seed == r.seed)
            single = [cell_score(ref.cells[(j, j)]) for j in range(T)]
            per_seed.append(metrics.summary(matrix_of(r, T), CHANCE, single))
        for k in ("final_avg", "forgetting", "transfer_mean"):
            values = [s[k] for s in per_seed]
            expected = np.nan if None in values else np.mean(values)
            assert boot.point[k][boot.index(method)] == pytest.approx(expected, abs=1e-9, nan_ok=True), (method, k)


def numpy_bootstrap(X: dict, ref: np.ndarray, B: int, seed: int) -> dict[str, np.ndarray]:
    """The oracle, a bare loop: draw seeds, then each task's examples, with replacement; 95 %
    percentile intervals of each X's final average (X[key]: [S, T, n], the last row's vectors) and
    of X["a"]'s transfer on task 1 against `ref` (same shape: the single-task diagonal)."""
    rng = np.random.default_rng(seed)
    S, T, n = ref.shape
    out = {m: [] for m in X} | {"transfer": []}
    for _ in range(B):
        s = rng.integers(S, size=S)
        ex = [rng.integers(n, size=n) for _ in range(T)]
        for m, x in X.items():
            out[m].append(np.mean([np.mean([100 * x[k, j, ex[j]].mean() for j in range(T)]) for k in s]))
        a, r = X["a"], ref
        out["transfer"].append(np.mean([
            100 * (100 * a[k, 1, ex[1]].mean() - 100 * r[k, 1, ex[1]].mean()) / (100 * r[k, 1, ex[1]].mean() - CHANCE[1])
            for k in s]))
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in out.items()}


def test_intervals_match_a_bare_numpy_bootstrap_loop():
    """Seeds differ by 5 points and each seed scores 150 examples per task, so dropping either
    level of the resampling, or the pairing of methods, moves the intervals well past the
    Monte-Carlo tolerance. T=2 with only the diagonal and last row: final row = (1,0), (1,1)."""
    rng = np.random.default_rng(2)
    S, n = 3, 150
    a = np.stack([[rng.random(n) < .65 + .05 * s, rng.random(n) < .6 + .05 * s] for s in range(S)])
    b = a ^ (rng.random(a.shape) < 0.1)  # b = a with 10 % of the examples flipped: strongly paired
    ref = np.stack([[rng.random(n) < .7, rng.random(n) < .7 + .03 * s] for s in range(S)])
    runs = [Run(m, s, {(1, 0): x[s, 0], (1, 1): x[s, 1], (0, 0): x[s, 0]}, CHANCE[:2]) for m, x in (("a", a), ("b", b)) for s in range(S)]
    runs += [Run("single_task", s, {(0, 0): ref[s, 0], (1, 1): ref[s, 1]}, CHANCE[:2]) for s in range(S)]
    boot = bootstrap(runs, n_resamples=4000, seed=0)
    oracle = numpy_bootstrap({"a": a, "b": b, "a - b": a.astype(float) - b}, ref, B=4000, seed=123)
    tol = 0.6  # points: 3 seeds make the replicates lumpy, their quantiles move by up to ~0.4 with the RNG
    for m in ("a", "b"):
        assert np.asarray(boot.ci["final_avg"])[:, boot.index(m)] == pytest.approx(oracle[m], abs=tol)
    diff = boot.replicates["final_avg"][boot.index("a")] - boot.replicates["final_avg"][boot.index("b")]
    assert np.percentile(diff, [2.5, 97.5]) == pytest.approx(oracle["a - b"], abs=tol)
    assert np.asarray(boot.ci["transfer_mean"])[:, boot.index("a")] == pytest.approx(oracle["transfer"], abs=2.0)  # of a 33-point interval


def test_one_seed_large_sample_interval_is_the_normal_closed_form():
    rng = np.random.default_rng(3)
    n = 5000
    x = rng.random(n) < 0.7
    boot = bootstrap([Run("a", 0, {(0, 0): x}, CHANCE[:1])], n_resamples=4000)
    p = x.mean()
    half = 1.959964 * np.sqrt(p * (1 - p) / n) * 100
    assert np.asarray(boot.ci["final_avg"])[:, 0] == pytest.approx([100 * p - half, 100 * p + half], abs=0.1 * half)


def two_methods(pa, pb, n=300, same=False, seed=4) -> Bootstrap:
    rng = np.random.default_rng(seed)
    T = 2
    a = runs_of("a", [[pa] * T] * T, n=n, rng=rng)
    b = [Run("b", r.seed, dict(r.cells), r.chance) for r in a] if same else runs_of("b", [[pb] * T] * T, n=n, rng=rng)
    return bootstrap(a + b, baseline="b", n_resamples=2000)


def test_identical_methods_are_indistinguishable():
    from bench.claims import Claim, UNDECIDED, REPRODUCED, judge
    for boot in (two_methods(.7, .7, same=True), two_methods(.7, .7)):
        verdicts = judge([Claim("a beats b", "final_avg", "a", "b", ">"), Claim("b beats a", "forgetting", "b", "a", ">")], boot)
        assert list(verdicts["verdict"]) == [UNDECIDED, UNDECIDED]
        assert indistinguishable_groups(boot) == [["a", "b"]] or indistinguishable_groups(boot) == [["b", "a"]]
    same = two_methods(.7, .7, same=True)
    assert judge([Claim("a = b", "final_avg", "a", "b", "=", margin=0.5)], same)["verdict"][0] == REPRODUCED
    poi = same.point["poi"][same.index("a")], np.asarray(same.ci["poi"])[:, same.index("a")]
    assert poi[0] == pytest.approx(0.5) and poi[1] == pytest.approx([0.5, 0.5])


def test_a_large_margin_on_every_example_is_reproduced_and_its_reverse_is_not():
    from bench.claims import Claim, NOT_REPRODUCED, REPRODUCED, judge
    boot = two_methods(1.0, .5)
    verdicts = judge([Claim("a beats b", "final_avg", "a", "b", ">"), Claim("a below b", "final_avg", "a", "b", "<"),
                      Claim("a equals b", "final_avg", "a", "b", "=")], boot)
    assert list(verdicts["verdict"]) == [REPRODUCED, NOT_REPRODUCED, NOT_REPRODUCED]
    assert verdicts["effect"][0] == pytest.approx(50, abs=5) and 0 < verdicts["ci_low"][0] < verdicts["ci_high"][0]
    assert indistinguishable_groups(boot) == [["a"], ["b"]]
    assert boot.point["poi"][boot.index("a")] == pytest.approx(1)
    assert np.asarray(boot.ci["poi"])[:, boot.index("a")] == pytest.approx([1, 1])


def test_probability_of_improvement_is_rliables():
    from rliable.metrics import probability_of_improvement
    rng = np.random.default_rng(5)
    T, S, n = 3, 4, 40
    x = runs_of("x", lambda s: [[.6 + .05 * s] * T] * T, seeds=range(S), n=n, rng=rng)
    y = runs_of("y", lambda s: [[.7 - .03 * s] * T] * T, seeds=range(S), n=n, rng=rng)
    y[0].cells[(T - 1, 1)] = x[2].cells[(T - 1, 1)].copy()  # a tie between two seeds on task 1
    boot = bootstrap(x + y, baseline="y", n_resamples=100)
    last = {m: np.array([[cell_score(r.cells[(T - 1, j)]) for j in range(T)] for r in runs]) for m, runs in (("x", x), ("y", y))}
    assert boot.point["poi"][boot.index("x")] == pytest.approx(probability_of_improvement(last["x"], last["y"]))
    assert boot.point["poi"][boot.index("y")] == pytest.approx(probability_of_improvement(last["y"], last["y"]))


def fake_bootstrap(points, se, B=20000, seed=6) -> Bootstrap:
    rng = np.random.default_rng(seed)
    methods = [f"m{k}" for k in range(len(points))]
    reps = np.asarray(points, float)[:, None] + rng.normal(0, se, (len(points), B))
    return Bootstrap(methods, [0], {"final_avg": np.asarray(points, float)}, {"final_avg": reps}, {})


def test_groups_chain_where_neighbours_are_indistinguishable_but_ends_are_not():
    # difference sd 0.7: 1 point apart z = 1.43 (p = 0.15), 2 points z = 2.86 (p = 0.004 < 0.05 / 3 by Holm)
    boot = fake_bootstrap([1.0, 3.0, 2.0], se=0.7 / np.sqrt(2))
    methods, different = pairwise_different(boot)
    assert different.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert indistinguishable_groups(boot) == [["m1", "m2"], ["m2", "m0"]]



def test_pairs_are_holm_corrected():
    # difference sd 0.9: 2 points apart z = 2.22, p = 0.026: below 0.05, above Holm's 0.05 / 3
    boot = fake_bootstrap([1.0, 3.0, 2.0], se=0.9 / np.sqrt(2))
    assert not pairwise_different(boot)[1].any()
    assert indistinguishable_groups(boot) == [["m1", "m2", "m0"]]


def test_same_seed_same_numbers():
    a, b = (two_methods(.7, .6, seed=7) for _ in range(2))
    assert np.array_equal(a.replicates["final_avg"], b.replicates["final_avg"])
    runs = runs_of("a", [[.7, 0], [.6, .7]], rng=np.random.default_rng(8))
    assert not np.array_equal(bootstrap(runs, n_resamples=100, seed=0).replicates["final_avg"],
                              bootstrap(runs, n_resamples=100, seed=1).replicates["final_avg"])


def test_a_method_lacking_a_seed_is_left_out():
    rng = np.random.default_rng(9)
    runs = runs_of("a", [[.7]], rng=rng) + runs_of("b", [[.6]], rng=rng) + runs_of("c", [[.6]], seeds=(0, 1), rng=rng)
    boot = bootstrap(runs, n_resamples=100)
    assert boot.methods == ["a", "b"] and boot.seeds == [0, 1, 2] and boot.lacking == ["c"]


def test_ci_table_and_figure(tmp_path):
    boot = two_methods(.9, .5)
    table = ci_table(boot, "default", "toy")
    assert list(table["method"]) == ["a", "b"] and list(table["group"]) == ["a", "b"]
    for k in ("final_avg", "forgetting", "transfer_mean", "poi"):
        assert {k, f"{k}_ci_low", f"{k}_ci_high"} <= set(table.columns)
    row = table.iloc[0]
    assert row["final_avg_ci_low"] < row["final_avg"] < row["final_avg_ci_high"]
    paths = write_ci_figure(table, tmp_path / "ci")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and paths[0].read_bytes()[:4] == b"\x89PNG"


def test_claims_table_says_effect_ci_and_verdict():
    from bench.claims import Claim, claims_markdown, judge
    boot = two_methods(1.0, .5)
    md = claims_markdown(judge([Claim("a beats b", "final_avg", "a", "b"), Claim("c forgets nothing", "forgetting", "c", 0.0, "=")], boot))
    lines = md.splitlines()
    assert lines[2].startswith("| a beats b | final_avg (a vs b) | +") and lines[2].endswith("| reproduced |")
    assert lines[3] == "| c forgets nothing | forgetting (c vs 0.0) | – | – | not run |"


def test_claims_the_runs_cannot_judge_say_why():
    from bench.claims import LEFT_OUT, NOT_RUN, SEEDS_MISSING, UNDEFINED, Claim, judge
    rng = np.random.default_rng(10)
    runs = runs_of("a", [[.7]], rng=rng) + runs_of("b", [[.6]], rng=rng) + runs_of("c", [[.6]], seeds=(0, 1), rng=rng)
    boot = bootstrap(runs, n_resamples=100)  # c lacks seed 2; one task: forgetting is undefined
    claims = [Claim("x", "final_avg", "a", "c"), Claim("x", "final_avg", "old", "a"), Claim("x", "final_avg", "a", "new"),
              Claim("x", "forgetting", "a", "b"), Claim("x", "final_avg", "c", "old")]
    verdicts = judge(claims, boot, ran=["a", "b", "c", "old"])
    assert list(verdicts["verdict"]) == [SEEDS_MISSING, LEFT_OUT, NOT_RUN, UNDEFINED, LEFT_OUT]
    assert verdicts["effect"].isna().all()


def test_verdicts_by_hand():
    from bench.claims import NOT_REPRODUCED, REPRODUCED, UNDECIDED, verdict
    assert verdict(">", 0.1, 3, 1) == REPRODUCED and verdict(">", -3, -0.1, 1) == NOT_REPRODUCED
    assert verdict(">", -1, 1, 1) == UNDECIDED and verdict("<", -3, -0.1, 1) == REPRODUCED
    assert verdict("<", 0.1, 3, 1) == NOT_REPRODUCED and verdict("=", -0.5, 0.9, 1) == REPRODUCED
    assert verdict("=", 1.2, 3, 1) == NOT_REPRODUCED and verdict("=", 0.5, 1.5, 1) == UNDECIDED
    assert verdict("=", -2, 2, 1) == UNDECIDED  # 0 inside, but so are differences beyond the margin


def write_run(out, run_id, method, seed, matrix, examples: RunExamples | None, sequence="default"):
    d = runs_dir(out) / run_id
    write_json(d / "metrics.json", {"run_id": run_id, "method": method, "sequence": sequence, "backbone": "toy",
                                    "seed": seed, "matrix": matrix, "chance": CHANCE[:len(matrix)]})
    write_text(d / "DONE", run_id + "\n")
    if examples is not None:
        examples.save(d)


def test_load_settings_leaves_out_runs_whose_examples_do_not_pair(tmp_path):
    def examples(v, key="t0/test-1"):
        e = RunExamples()
        e.record(0, 0, v, key)
        return e
    v = np.array([True, False, True, True])
    write_run(tmp_path, "good0", "a", 0, [[75.0]], examples(v))
    write_run(tmp_path, "good1", "a", 1, [[75.0]], examples(v))
    write_run(tmp_path, "nofile", "b", 0, [[75.0]], None)
    write_run(tmp_path, "stale", "b", 1, [[50.0]], examples(v))
    write_run(tmp_path, "otherset", "c", 0, [[75.0]], examples(v, "t0/test-2"))
    write_run(tmp_path, "elsewhere", "a", 0, [[75.0]], examples(v), sequence="climb")
    settings = {s.sequence: s for s in load_settings(tmp_path)}
    default = settings["default"]
    assert [(r.method, r.seed) for r in default.runs] == [("a", 0), ("a", 1)]
    assert set(default.excluded) == {"nofile", "stale", "otherset"}
    assert [(r.method, r.seed) for r in settings["climb"].runs] == [("a", 0)]


def test_paper_claims_name_registered_methods_and_metrics():
    from bench.claims import PAPER_CLAIMS
    from bench.registry import METHODS
    from bench.stats import METRICS
    for c in PAPER_CLAIMS:
        assert c.metric in METRICS and c.direction in "<>="
        assert c.a in METHODS.names() and (not isinstance(c.b, str) or c.b in METHODS.names()), c.text
