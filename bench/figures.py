"""Figures of a report, each saved as PNG and PDF: per method (and setting) the score matrix as a
heatmap and the per-task score curves, both averaged over its seeds; forgetting bars per method;
final score and transfer vs stored parameters."""
import warnings
from pathlib import Path

import numpy as np

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from bench.cache import safe_name  # noqa: E402
from bench.store import write_atomic  # noqa: E402


def _save(fig, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        write_atomic(p, lambda f: fig.savefig(f, format=ext, dpi=130, bbox_inches="tight"))
        paths.append(p)
    plt.close(fig)
    return paths


def _matrix(run) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in run["matrix"]], dtype=float)


def by_method(runs) -> list[tuple[str, list, np.ndarray, int]]:
    """(name, tasks, score matrix averaged over seeds, number of seeds) per method and setting; the
    name is `<sequence>-<backbone>-<method>` (file-name safe)."""
    groups = {}
    for r in runs:
        groups.setdefault((Path(r["sequence"]).stem, r["backbone"], r["method"]), []).append(r)
    out = []
    for (sequence, backbone, method), group in sorted(groups.items()):
        with np.errstate(all="ignore"), warnings.catch_warnings():  # never-evaluated cells stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            A = np.nanmean(np.stack([_matrix(r) for r in group]), axis=0)
        out.append((safe_name(f"{sequence}-{backbone}-{method}"), group[0]["tasks"], A, len(group)))
    return out


def heatmap(name: str, tasks: list, A: np.ndarray, n: int, folder: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(1.1 * len(A) + 2, 0.9 * len(A) + 1.5))
    im = ax.imshow(A, vmin=0, vmax=100, cmap="viridis")
    for (i, j), v in np.ndenumerate(A):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=8)
    ax.set_xticks(range(len(A)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(A)), [f"after {t}" for t in tasks])
    ax.set_title(f"{name}: score on task j after task i\n(mean of {n} seed{'s' if n > 1 else ''})")
    fig.colorbar(im, ax=ax, label="score %")
    return _save(fig, folder / "matrix" / name)


def forgetting_bars(table, folder: Path) -> list[Path]:
    t = table.dropna(subset=["forgetting_mean"])
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(t) + 2), 3.5))
    ax.bar(t["method"], t["forgetting_mean"], yerr=t["forgetting_std"].fillna(0), capsize=3, color="tab:red")
    ax.set_ylabel("forgetting (points, lower is better)")
    ax.tick_params(axis="x", rotation=45)
    ax.set_title("Average forgetting (Chaudhry et al.), mean ± std over seeds")
    return _save(fig, folder / "forgetting")


def score_vs_params(table, folder: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, col, label in ((axes[0], "final_avg_mean", "final average score %"),
                           (axes[1], "transfer_mean_mean", "knowledge transfer % (CLiMB)")):
        t = table.dropna(subset=[col])
        ax.scatter(t["stored"], t[col])
        for _, r in t.iterrows():
            ax.annotate(r["method"], (r["stored"], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        # parameter counts in millions: log-scale default labels overlap over a narrow range
        millions = FuncFormatter(lambda v, _: f"{v / 1e6:.3g}M")
        ax.xaxis.set_major_formatter(millions)
        ax.xaxis.set_minor_formatter(millions)
        ax.set_xlabel("parameters stored after the sequence")
        ax.set_ylabel(label)
    axes[0].set_title("Score vs stored parameters")
    axes[1].set_title("Transfer vs stored parameters")
    return _save(fig, folder / "score_vs_params")


def task_curves(name: str, tasks: list, A: np.ndarray, n: int, folder: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for j, task in enumerate(tasks):
        ax.plot(range(len(tasks)), A[:, j], marker="o", label=task)
    ax.set_xticks(range(len(tasks)), [f"after {t}" for t in tasks], rotation=30, ha="right")
    ax.set_ylabel("score %")
    ax.set_ylim(0, 100)
    ax.set_title(f"{name}: per-task score over the sequence (mean of {n})", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, folder / "curves" / name)


def write_figures(runs, table, folder: Path) -> list[Path]:
    paths = []
    for method in by_method(runs):
        paths += heatmap(*method, folder) + task_curves(*method, folder)
    paths += forgetting_bars(table, folder)
    paths += score_vs_params(table, folder)
    return paths
