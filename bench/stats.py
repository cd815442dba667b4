"""Uncertainty of the leaderboard: 95 % confidence intervals of each method's final average,
forgetting and transfer, probability of improvement over a baseline, and groups of methods that
are statistically indistinguishable, all from one bootstrap over seeds and test examples of the
runs' per-example scores (bench/examples.py).

The bootstrap. A score mixes two sources of noise: the seed (initialisation, data order) and the
finite test set (200 examples per task: a binomial sd of ~3 points at 80 %). Every method of a
setting is scored on the same test examples at every seed (a test split does not depend on the
seed), so seeds and examples are crossed factors, shared by all methods. One replicate draws
seeds with replacement, and for each task its test examples with replacement (stratified by
task: each task keeps its size), and recomputes every cell A[i][j] of every run on them; the
metrics follow from the cells as in bench/metrics.py, per seed, then averaged over the drawn
seeds. Every method sees the same draws, so differences between methods are paired.
`scipy.stats.bootstrap` does the drawing and the percentile intervals: its samples are the seed
indices and each task's example indices, resampled independently, which is exactly this scheme.
rliable's stratified bootstrap (arch's IIDBootstrap) resamples runs within tasks only and so
misses the test-set noise, which is the larger part here. Percentile, not BCa: BCa's jackknife
over 3 seeds is unreliable and it fails on degenerate metrics (adapters' forgetting is exactly 0).

Probability of improvement is rliable's (Agarwal et al. 2021): the mean over tasks of
P(X > Y) for a random seed of X and one of Y on that task's final score, ties counting 1/2 (the
Mann-Whitney U statistic over m n), evaluated on each replicate's drawn seeds and examples.

Indistinguishable groups: every pair of methods is tested on the paired difference of the metric
(Wald test with the bootstrap's standard error; percentile p-values cannot go below 1/B, and
Holm over the ~400 pairs of a leaderboard needs ~1e-4), Holm-corrected over all pairs
(statsmodels); a group is a maximal run of consecutive methods in rank order of which no two
differ, as the bars of a critical-difference diagram."""
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.examples import RunExamples
from bench.settings import labelled
from bench.store import finished_runs, runs_dir

METRICS = ("final_avg", "forgetting", "transfer_mean")  # the leaderboard's columns (bench/report.py COLUMNS)
CONFIDENCE = 0.95


@dataclass
class Run:
    """One finished run's per-example scores: cells[(i, j)] is row i, task j, values in [0, 1]."""
    method: str
    seed: int
    cells: dict[tuple[int, int], np.ndarray]
    chance: list[float]  # R_j, %


@dataclass
class Setting:
    """The runs of one (sequence, backbone) that the statistics use, and those left out (run id -> why)."""
    sequence: str
    backbone: str
    runs: list[Run]
    excluded: dict[str, str] = field(default_factory=dict)


def load_settings(out) -> list[Setting]:
    """Every finished run with per-example scores, by (sequence, backbone). A run is left out when
    it has no examples.npz (made before it existed), when its vectors do not give back its score
    matrix, or when its test splits differ from the setting's (its examples would not pair)."""
    settings: dict[tuple[str, str], Setting] = {}
    keys: dict[tuple[str, str], list[tuple]] = {}
    for m in map(labelled, finished_runs(out)):
        setting = settings.setdefault((m["sequence"], m["backbone"]), Setting(m["sequence"], m["backbone"], []))
        examples = RunExamples.load(runs_dir(out) / m["run_id"])
        if examples is None or not examples.agrees_with(m["matrix"]):
            setting.excluded[m["run_id"]] = "no per-example scores that match its score matrix"
            continue
        setting.runs.append(Run(m["method"], m["seed"], examples.cells, m["chance"]))
        keys.setdefault((m["sequence"], m["backbone"]), []).append((m["run_id"], tuple(sorted(examples.splits.items()))))
    for where, run_keys in keys.items():
        common = Counter(k for _, k in run_keys).most_common(1)[0][0]
        setting = settings[where]
        setting.excluded.update({rid: "scored other test examples" for rid, k in run_keys if k != common})
        setting.runs = [run for (_, k), run in zip(run_keys, setting.runs) if k == common]
    return list(settings.values())


def balanced(runs: list[Run]) -> tuple[list[Run], list[int], list[str]]:
    """The runs on the seed set most methods have (pairing needs the same seeds for everyone), one
    run per (method, seed); returns (runs, seeds, methods left out for lacking one of the seeds)."""
    by_method: dict[str, dict[int, Run]] = {}
    for r in runs:
        by_method.setdefault(r.method, {}).setdefault(r.seed, r)
    seeds = sorted(Counter(frozenset(s) for s in by_method.values()).most_common(1)[0][0])
    kept = [by_method[m][s] for m in by_method if set(seeds) <= set(by_method[m]) for s in seeds]
    lacking = [m for m in by_method if not set(seeds) <= set(by_method[m])]
    return kept, seeds, lacking


@dataclass
class Bootstrap:
    """Per metric: point estimates (mean over seeds of the per-seed metric) and bootstrap
    replicates, per method (NaN rows for a metric a method does not have); `ci` is scipy's
    percentile interval of each defined row. Replicates of all methods share their draws."""
    methods: list[str]
    seeds: list[int]
    point: dict[str, np.ndarray]  # metric -> [M]
    replicates: dict[str, np.ndarray]  # metric -> [M, B]
    ci: dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (low [M], high [M])
    lacking: list[str] = field(default_factory=list)  # methods left out for lacking seeds

    def index(self, method: str) -> int:
        return self.methods.index(method)


class CellMatrix:
    """All runs' cells of a setting stacked per task j: X_j [K_j, n_j] (per-example scores), and
    where each row goes in the array A[method, seed, row i, task j]; `cells()` turns example counts
    (one bootstrap draw per row) into A in %, `per_seed()` A into the per-seed metrics."""

    def __init__(self, runs: list[Run], methods: list[str], seeds: list[int], reference: str | None, baseline: str | None):
        self.T = 1 + max(j for r in runs for (_, j) in r.cells)
        self.shape = (len(methods), len(seeds), self.T, self.T)
        self.chance = np.asarray(runs[0].chance, dtype=float)
        self.ref = methods.index(reference) if reference in methods else None
        self.base = methods.index(baseline) if baseline in methods else None
        self.tasks = []
        for j in range(self.T):
            cells = [((methods.index(r.method), seeds.index(r.seed), i), v) for r in runs for (i, jj), v in r.cells.items() if jj == j]
            m, s, i = np.array([c for c, _ in cells]).T
            where = np.ravel_multi_index((m, s, i, np.full(len(cells), j)), self.shape)
            self.tasks.append((np.stack([v.astype(np.float32) for _, v in cells]), where))

    def sizes(self) -> list[int]:
        return [X.shape[1] for X, _ in self.tasks]

    def cells(self, example_counts: list[np.ndarray]) -> np.ndarray:
        """A [M, S, T, T, B] in % on the drawn examples (NaN where a run has no such cell). The sums
        run in float32 (twice as fast): exact for accuracy (integers below 2^24), within 1e-5 points
        for VQA scores."""
        B = len(example_counts[0])
        A = np.full((int(np.prod(self.shape)), B), np.nan)
        for (X, where), counts in zip(self.tasks, example_counts):
            A[where] = (X @ counts.T) * (100.0 / X.shape[1])
        return A.reshape(*self.shape, B)

    def per_seed(self, A: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric per method and seed [M, S, B], as bench/metrics.py defines it."""
        T, last = self.T, A[:, :, self.T - 1]
        out = {"final_avg": last.mean(axis=2)}
        if T > 1:  # Chaudhry: best of rows j..T-2 (fmax skips unevaluated cells) minus the last row
            best = np.stack([np.fmax.reduce(A[:, :, j:T - 1, j], axis=2) for j in range(T - 1)], axis=2)
            out["forgetting"] = (best - last[:, :, :T - 1]).mean(axis=2)
        else:
            out["forgetting"] = np.full_like(out["final_avg"], np.nan)
        out["transfer_mean"] = self.transfer(A)
        if self.base is not None:
            out["poi"] = self.poi(last)
        return out

    def transfer(self, A: np.ndarray) -> np.ndarray:
        """CLiMB transfer 100 (A[j][j] - S_j) / (S_j - R_j) against the reference at the same seed,
        averaged over the tasks j >= 1 where it is defined."""
        if self.ref is None or self.T < 2:
            return np.full(A.shape[:2] + A.shape[-1:], np.nan)
        diag = np.stack([A[:, :, j, j] for j in range(1, self.T)], axis=2)  # [M, S, T-1, B]
        S, R = diag[self.ref][None], self.chance[1:, None]
        with np.errstate(divide="ignore", invalid="ignore"):  # undefined where S_j = R_j, as in metrics
            per_task = np.where(S == R, np.nan, 100.0 * (diag - S) / (S - R))
            defined = ~np.isnan(per_task)
            return np.where(defined, per_task, 0).sum(axis=2) / defined.sum(axis=2)  # none defined: NaN

    def poi(self, last: np.ndarray) -> np.ndarray:
        """Improvement over the baseline of each method's seed s against the baseline's seed s' on
        each task's final score: [M, S, S', T, B], 1 (x > y), 1/2 (tie), 0 (NaN: no final row)."""
        x, y = last[:, :, None], last[self.base][None, None]
        return (x > y) + 0.5 * (x == y) + np.where(np.isnan(x) | np.isnan(y), np.nan, 0)


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of n items is drawn in each row of `indices` [B, k] -> [B, n]."""
    B = len(indices)
    return np.bincount((indices + n * np.arange(B)[:, None]).ravel(), minlength=B * n).reshape(B, n).astype(np.float32)


def _statistic(cm: CellMatrix, n_seeds: int, metrics: tuple[str, ...]):
    """The vectorised statistic for scipy.stats.bootstrap: ([seed indices,] task 0's example
    indices, ..., task T-1's) -> every metric of every method [len(metrics) * M, B], each averaged
    over the drawn seeds. Without seed indices (a single seed) every draw has that seed."""
    def statistic(*indices, axis=-1):
        indices = [np.atleast_2d(i) for i in indices]
        seed_idx = indices[0] if len(indices) > cm.T else np.zeros((len(indices[0]), 1), dtype=int)
        w = _counts(seed_idx, n_seeds).astype(np.float64) / seed_idx.shape[1]  # [B, S]
        per_seed = cm.per_seed(cm.cells([_counts(e, n) for e, n in zip(indices[-cm.T:], cm.sizes())]))
        rows = []
        for k in metrics:
            if k == "poi":  # rliable: mean over tasks of the U statistic / (m n) on the drawn seed multisets
                rows.append(np.einsum("mstjb,bs,bt->mb", per_seed[k], w, w) / cm.T)
            else:
                rows.append(np.einsum("msb,bs->mb", per_seed[k], w))
        return np.concatenate(rows)
    return statistic


def bootstrap(runs: list[Run], *, reference: str | None = "single_task", baseline: str | None = None,
              n_resamples: int = 10_000, seed: int = 0, batch: int = 500) -> Bootstrap:
    """The bootstrap of one setting's runs (see the module doc); deterministic given `seed`.
    `reference`: the single-task method giving S_j for transfer; `baseline`: the method that
    probability of improvement ("poi") is measured against."""
    from scipy.stats import bootstrap as scipy_bootstrap
    if not runs:
        raise BenchError("no runs with per-example scores to bootstrap")
    runs, seeds, lacking = balanced(runs)
    methods = list(dict.fromkeys(r.method for r in runs))
    cm = CellMatrix(runs, methods, seeds, reference, baseline)
    metrics = METRICS + (("poi",) if cm.base is not None else ())
    statistic = _statistic(cm, len(seeds), metrics)
    # scipy needs two observations per sample: with one seed only the examples are drawn
    samples = ((np.arange(len(seeds)),) if len(seeds) > 1 else ()) + tuple(np.arange(n) for n in cm.sizes())
    point = statistic(*samples)[:, 0]
    defined = ~np.isnan(point)  # a metric a method does not have (multitask's forgetting) is not bootstrapped
    res = scipy_bootstrap(samples, lambda *idx, axis=-1: statistic(*idx)[defined], n_resamples=n_resamples,
                          batch=batch, vectorized=True, paired=False, confidence_level=CONFIDENCE,
                          method="percentile", rng=np.random.default_rng(seed))
    reps = _scatter(res.bootstrap_distribution, defined)
    low, high = _scatter(res.confidence_interval.low, defined), _scatter(res.confidence_interval.high, defined)
    M = len(methods)

    def by_metric(a):
        return {k: a[n * M:(n + 1) * M] for n, k in enumerate(metrics)}
    lows, highs = by_metric(low), by_metric(high)
    return Bootstrap(methods, seeds, by_metric(point), by_metric(reps), {k: (lows[k], highs[k]) for k in metrics}, lacking)


def _scatter(values: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Rows of the defined outputs back into their place among all outputs (NaN elsewhere)."""
    out = np.full((len(defined),) + values.shape[1:], np.nan)
    out[defined] = values
    return out


def ci_table(boot: Bootstrap, sequence: str = "", backbone: str = "") -> "pd.DataFrame":
    """One row per method for the leaderboard: each metric's point estimate and its 95 % CI
    (`<metric>`, `<metric>_ci_low`, `<metric>_ci_high`; poi when a baseline was given), the number
    of seeds, and `group`: letters shared by methods statistically indistinguishable on the final
    average (a letter per group of `indistinguishable_groups`)."""
    import pandas as pd
    table = pd.DataFrame({"sequence": sequence, "backbone": backbone, "method": boot.methods, "n_seeds": len(boot.seeds)})
    for k, point in boot.point.items():
        table[k], table[f"{k}_ci_low"], table[f"{k}_ci_high"] = point, *boot.ci[k]
    letters = {m: "" for m in boot.methods}
    for n, group in enumerate(indistinguishable_groups(boot)):
        for m in group:
            letters[m] += _letter(n)
    table["group"] = table["method"].map(letters)
    return table


def _letter(n: int) -> str:
    return chr(ord("a") + n % 26) * (1 + n // 26)


def pairwise_different(boot: Bootstrap, metric: str = "final_avg", alpha: float = 0.05) -> tuple[list[str], np.ndarray]:
    """(methods having `metric`, [M, M] bool: the pair differs) by paired Wald tests on the bootstrap
    standard error of each difference, Holm-corrected over all pairs."""
    from scipy.stats import norm
    from statsmodels.stats.multitest import multipletests
    have = ~np.isnan(boot.point[metric])
    methods = [m for m, h in zip(boot.methods, have) if h]
    point, reps = boot.point[metric][have], boot.replicates[metric][have]
    a, b = np.triu_indices(len(methods), k=1)
    effect, se = point[a] - point[b], (reps[a] - reps[b]).std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # se 0: no noise, so any non-zero effect is real
        p = np.where(se > 0, 2 * norm.sf(np.abs(effect) / se), (effect == 0).astype(float))
    different = np.zeros((len(methods), len(methods)), dtype=bool)
    if len(p):
        different[a, b] = different[b, a] = multipletests(p, alpha=alpha, method="holm")[0]
    return methods, different


def indistinguishable_groups(boot: Bootstrap, metric: str = "final_avg", alpha: float = 0.05) -> list[list[str]]:
    """Maximal runs of methods, consecutive in rank order (best first), no two of which differ
    significantly on `metric` (pairwise_different); a method that differs from both its
    neighbours is a group of its own."""
    methods, different = pairwise_different(boot, metric, alpha)
    point = boot.point[metric][[boot.index(m) for m in methods]]
    order = np.argsort(-point, kind="stable")
    groups, reach = [], -1
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and not different[np.ix_(order[start:end + 2], order[start:end + 2])].any():
            end += 1
        if end > reach:  # not inside the group that an earlier start reached
            groups.append([methods[k] for k in order[start:end + 1]])
            reach = end
    return groups


def write_ci_figure(table: "pd.DataFrame", path: Path, width: float = 7.0, metric: str = "final_avg") -> list[Path]:
    """Ranked confidence intervals of `metric` (one row per method, best on top; PNG + PDF, `width`
    inches wide, in the report's figure style), each labelled with its indistinguishability group
    letters."""
    from bench.figures import STYLE, _save, plt  # bench.figures selects the Agg backend
    rows = table.dropna(subset=[metric, f"{metric}_ci_low", f"{metric}_ci_high"]).sort_values(metric)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(width, 0.18 * len(rows) + 1.2), layout="constrained")  # long names stay inside
        y = np.arange(len(rows))
        low, high = rows[f"{metric}_ci_low"].to_numpy(), rows[f"{metric}_ci_high"].to_numpy()
        # centred on the interval: a percentile interval need not contain the point estimate
        ax.errorbar((low + high) / 2, y, xerr=(high - low) / 2, fmt="none", capsize=2, elinewidth=0.6)
        ax.plot(rows[metric], y, "o", markersize=3, color="C0")
        ax.set_yticks(y, [f"{m}  ({g})" if g else m for m, g in zip(rows["method"], rows.get("group", [""] * len(rows)))])
        ax.set_xlabel(f"{metric}, {CONFIDENCE:.0%} CI\n(bootstrap over seeds and test examples)")
        ax.set_title("shared letters: not distinguishable\n(paired tests, Holm)")
        ax.grid(axis="x", alpha=0.3)
        return _save(fig, Path(path))
