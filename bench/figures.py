"""Figures of a report, each saved as PNG and PDF, sized for papers (`figure_width`: 3.3 inches for
one column, 7 for two), fonts embedded in the PDF as TrueType (pdf.fonttype 42, what publishers
ask for), methods coloured by family (bench/families.py) with a legend, bars sorted by the value
shown, and no two labels overlapping (scatter labels are placed where they collide with nothing;
one that fits nowhere is named in a note instead). Per method (and setting): the score matrix as a
heatmap and the per-task score curves, both averaged over its seeds. Over methods: forgetting,
downstream scores (CLiMB phase II) and novel-composition scores (VQACL) as bars with error bars
(the statistics' 95 % CI where the table has one, else ± std over seeds), retention of pretrained
ability after each task as curves, and final score / transfer against stored parameters and
against training compute."""
import warnings
from pathlib import Path

import numpy as np

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from bench.cache import safe_name  # noqa: E402
from bench.families import ORDER, family_of  # noqa: E402
from bench.store import write_atomic  # noqa: E402

STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7,
         "xtick.labelsize": 6, "ytick.labelsize": 6, "legend.fontsize": 6, "figure.dpi": 100}
FAMILY_COLOURS = dict(zip(ORDER, plt.get_cmap("tab10").colors))


def _save(fig, path: Path) -> list[Path]:
    _drop_colliding_ticklabels(fig)
    fig.set_layout_engine("none")  # keep the layout the labels were placed in: hidden ticks must not move the axes
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        write_atomic(p, lambda f: fig.savefig(f, format=ext, dpi=200))
        paths.append(p)
    plt.close(fig)
    return paths


def _texts(fig) -> list:
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]


def _drop_colliding_ticklabels(fig) -> None:
    """Hide each tick label whose box meets another text (a neighbour on a dense log axis, the
    other axis's label in a corner): ticks are the one text a reader can do without."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = {id(t) for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
    texts = _texts(fig)
    kept = [t.get_window_extent(renderer) for t in texts if id(t) not in ticks]
    for t in texts:
        if id(t) in ticks:
            box = t.get_window_extent(renderer)
            if any(box.overlaps(other) for other in kept):
                t.set_visible(False)
            else:
                kept.append(box)


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False)


def _matrix(run) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in run["matrix"]], dtype=float)


def by_method(runs) -> list[tuple[str, str, list, np.ndarray, int]]:
    """(name, title, tasks, score matrix averaged over seeds, number of seeds) per method and
    setting; the name is `<sequence>-<backbone>-<method>` (file-name safe)."""
    groups = {}
    for r in runs:
        groups.setdefault((Path(r["sequence"]).stem, r["backbone"], r["method"]), []).append(r)
    out = []
    for (sequence, backbone, method), group in sorted(groups.items()):
        with np.errstate(all="ignore"), warnings.catch_warnings():  # never-evaluated cells stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            A = np.nanmean(np.stack([_matrix(r) for r in group]), axis=0)
        title = f"{method}\n{sequence} / {backbone}, mean of {len(group)} seed{'s' if len(group) > 1 else ''}"
        out.append((safe_name(f"{sequence}-{backbone}-{method}"), title, group[0]["tasks"], A, len(group)))
    return out


def heatmap(name: str, title: str, tasks: list, A: np.ndarray, n: int, folder: Path, width: float) -> list[Path]:
    T = len(A)
    fig, ((ax,),) = _figure(width, min(0.8 * width, 0.3 * T + 1.6))
    im = ax.imshow(A, vmin=0, vmax=100, cmap="viridis")
    size = min(7.0, 110 / max(T, 1) / max(1.0, 7 / width))  # cell text shrinks with the cell
    for (i, j), v in np.ndenumerate(A):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=size)
    # columns by number, rows by number and name: task names side by side would collide
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [f"{i + 1} {t}" for i, t in enumerate(tasks)])
    ax.set_xlabel("score on task j")
    ax.set_ylabel("after training task i")
    fig.suptitle(title)
    fig.colorbar(im, ax=ax, label="score %", shrink=0.8)
    return _save(fig, folder / "matrix" / name)


def task_curves(name: str, title: str, tasks: list, A: np.ndarray, n: int, folder: Path, width: float) -> list[Path]:
    T = len(tasks)
    fig, ((ax,),) = _figure(width, 0.6 * width + 0.3)
    for j, task in enumerate(tasks):
        ax.plot(range(T), A[:, j], marker="o", markersize=3, label=f"{j + 1} {task}")
    ax.set_xticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_xlabel("after training task i")
    ax.set_ylabel("score %")
    ax.set_ylim(0, 100)
    fig.suptitle(title)
    fig.legend(loc="outside lower center", title="score on task j", ncols=2 if width < 5 else 4, frameon=False)
    return _save(fig, folder / "curves" / name)


def _family_legend(fig, methods, note: str | None = None, extra=()) -> None:
    """The families' colours (and `extra` (handle, label) pairs after them) under the figure."""
    families = sorted({family_of(m) for m in methods}, key=ORDER.index)
    handles = [plt.Rectangle((0, 0), 1, 1, color=FAMILY_COLOURS[f]) for f in families] + [h for h, _ in extra]
    labels = families + [label for _, label in extra]
    columns = 2 if fig.get_figwidth() < 5 else 3
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, len(labels)), frameon=False,
               title=note, title_fontsize=5)


CI_LABEL, STD_LABEL = "95 % CI", "± std over seeds"


def ranked_bars(table, key: str, label: str, title: str, path: Path, width: float, higher_is_better: bool,
                marker: tuple[str, str] | None = None) -> list[Path]:
    """Horizontal bars of one metric per method (the mean over seeds), best first, coloured by
    family. Error bars: the 95 % CI of the statistics (`<key>_ci_low/_ci_high`, bootstrapped over
    seeds and test examples) where the table has one, else ± std over seeds (runs without
    per-example scores, metrics the statistics do not cover), drawn apart (black / grey) and named
    in the title and legend. `marker` (column, legend label): another metric's mean drawn as a
    black tick on each bar, for comparison."""
    t = table.dropna(subset=[f"{key}_mean"]).sort_values(f"{key}_mean", ascending=not higher_is_better)
    t = t.iloc[::-1]  # barh draws from the bottom: the best ends on top
    fig, ((ax,),) = _figure(width, 0.18 * len(t) + 1.2)
    setting = t["sequence"].astype(str) + "/" + t["backbone"].astype(str)
    names = t["method"] if setting.nunique() <= 1 else t["method"] + " (" + setting + ")"
    y, mean = np.arange(len(t)), t[f"{key}_mean"].to_numpy(dtype=float)
    ax.barh(y, mean, color=[FAMILY_COLOURS[family_of(m)] for m in t["method"]])
    low, high = (t[c].to_numpy(dtype=float) if c in t else np.full(len(t), np.nan) for c in (f"{key}_ci_low", f"{key}_ci_high"))
    ci = ~(np.isnan(low) | np.isnan(high))
    std = t[f"{key}_std"].fillna(0).to_numpy(dtype=float)
    style = {"fmt": "none", "capsize": 1.5, "elinewidth": 0.6, "capthick": 0.6}
    bars = []  # each kind of error bar drawn, labelled for the legend
    if ci.any():  # centred on the interval, so its ends are the CI's even where it excludes the mean
        bars.append(ax.errorbar((low + high)[ci] / 2, y[ci], xerr=(high - low)[ci] / 2, ecolor="k", label=CI_LABEL, **style))
    if not ci.all():
        bars.append(ax.errorbar(mean[~ci], y[~ci], xerr=std[~ci], ecolor="0.55", label=STD_LABEL, **style))
    if marker is not None:
        bars.append(ax.scatter(t[f"{marker[0]}_mean"].to_numpy(dtype=float), y, marker="|", s=40, c="k", zorder=3,
                               label=marker[1]))
    if ci.all():
        spread = "mean, 95 % CI over seeds and test examples"
    else:
        spread = "mean, 95 % CI (black), ± std where none (grey)" if ci.any() else "mean ± std over seeds"
    ax.set_yticks(y, names)
    ax.set_xlabel(label)
    ax.set_title(f"{title}\n{spread}")
    _family_legend(fig, t["method"], extra=[(b, b.get_label()) for b in bars])
    return _save(fig, path)


def forgetting_bars(table, folder: Path, width: float) -> list[Path]:
    return ranked_bars(table, "forgetting", "forgetting (points, lower is better)",
                       "Average forgetting (Chaudhry et al.)", folder / "forgetting", width,
                       higher_is_better=False) + forgetting_by_setting(table, folder, width)


def forgetting_by_setting(table, folder: Path, width: float) -> list[Path]:
    """With runs in several settings (task / class / domain, bench/settings.py): their forgetting
    side by side, one panel per setting on one scale, the methods in one order (least mean
    forgetting on top)."""
    t = table.dropna(subset=["forgetting_mean"])
    settings = [s for s in ("task", "class", "domain") if s in set(t.get("setting", []))]
    if len(settings) < 2:
        return []
    from bench.task_id import ORACLE_MARK
    label = t["method"] + np.where(t["task_id"] == "oracle", ORACLE_MARK, "")
    order = list(t.assign(label=label).groupby("label")["forgetting_mean"].mean().sort_values(ascending=False).index)
    fig, (axes,) = _figure(width, 0.18 * len(order) + 1.4, ncols=len(settings))
    for ax, setting in zip(axes, settings):
        mine = t[t["setting"] == setting].assign(label=label).groupby("label")
        mean, std = mine["forgetting_mean"].mean(), mine["forgetting_std"].mean().fillna(0)
        rows = [m for m in order if m in mean.index]
        ax.barh([order.index(m) for m in rows], mean[rows], xerr=std[rows], capsize=1.5, error_kw={"elinewidth": 0.6},
                color=[FAMILY_COLOURS[family_of(m.split(" ")[0])] for m in rows])
        ax.set_yticks(range(len(order)), order if ax is axes[0] else [""] * len(order))
        ax.set_title(f"{setting}-IL")
    top = float((t["forgetting_mean"] + t["forgetting_std"].fillna(0)).max())
    for ax in axes:  # one scale, so the panels compare
        ax.set_xlim(min(0.0, float(t["forgetting_mean"].min())), 1.05 * top if top > 0 else 1.0)
    fig.suptitle("Average forgetting per setting\n(points, lower is better; mean ± std over seeds)")
    _family_legend(fig, t["method"])
    return _save(fig, folder / "forgetting_settings")


def novel_bars(table, folder: Path, width: float) -> list[Path]:
    """With held-out compositions (bench/novel.py): the final novel-composition score per method,
    the same tasks' usual test score (seen compositions) as a tick on each bar."""
    if "novel_final_mean" not in table or table["novel_final_mean"].isna().all():
        return []
    return ranked_bars(table, "novel_final", "final score % on the tasks with held-out compositions",
                       "Novel compositions (VQACL), after the last task", folder / "novel", width,
                       higher_is_better=True, marker=("seen_final", "seen compositions (test split)"))


def retention_curves(runs, folder: Path, width: float) -> list[Path]:
    """With probe tasks (bench/probe.py): retention of pretrained ability (% of the probe score
    before the first task, averaged over the probe tasks) after each task, one line per method
    (mean over seeds), coloured by family, a marker per method; one panel per sequence / backbone."""
    groups = {}
    for r in runs:
        if r.get("probe"):
            groups.setdefault(f"{Path(r['sequence']).stem} / {r['backbone']}", {}).setdefault(r["method"], []).append(r)
    if not groups:
        return []
    methods = sorted({m for g in groups.values() for m in g}, key=lambda m: (ORDER.index(family_of(m)), m))
    markers = dict(zip(methods, "osD^v<>pXh*" * (len(methods) // 11 + 1)))
    fig, axes = _figure(width, (0.45 * width + 0.4) * len(groups) + 0.15 * len(methods) + 0.6, nrows=len(groups))
    for (ax,), (name, by_method) in zip(axes, sorted(groups.items())):
        for method in (m for m in methods if m in by_method):
            curves = []
            for r in by_method[method]:
                R = np.array([[np.nan if v is None else v for v in row] for row in r["probe"]["retention"]], dtype=float)
                curves.append(100.0 * R.mean(axis=1))  # a row with an unscored probe task stays NaN
            y = np.mean(curves, axis=0)
            ax.plot(np.arange(1, len(y) + 1), y, marker=markers[method], markersize=3, linewidth=0.8,
                    color=FAMILY_COLOURS[family_of(method)], label=method)
        tasks = by_method[next(iter(by_method))][0]["tasks"]
        ax.axhline(100, color="0.6", linewidth=0.6, linestyle=":")
        ax.set_xticks(range(1, len(tasks) + 1), [str(i + 1) for i in range(len(tasks))])
        ax.set_xlabel("after training task i")
        ax.set_ylabel("retention %")
        ax.set_title(f"{name}: probe {', '.join(by_method[next(iter(by_method))][0]['probe']['tasks'])}")
    fig.suptitle("Retention of pretrained ability\n(probe score after / before training, mean over seeds)")
    handles = {line.get_label(): line for (ax,) in axes for line in ax.get_lines() if not line.get_label().startswith("_")}
    fig.legend([handles[m] for m in methods], methods, loc="outside lower center", ncols=3 if width < 5 else 6,
               frameon=False)
    return _save(fig, folder / "retention")


def downstream_bars(table, folder: Path, width: float, keys: list[str]) -> list[Path]:
    """Mean downstream score over the downstream tasks (CLiMB phase II), per method; `keys` are the
    table's downstream score columns (`down:<task>`). The statistics have no CI for them: ± std."""
    if not keys:
        return []
    t = table.copy()
    per_seed_std = [t[f"{k}_std"] for k in keys]  # the spread shown is the mean of the per-task spreads
    t["downstream_mean"] = t[[f"{k}_mean" for k in keys]].mean(axis=1, skipna=False)
    t["downstream_std"] = sum(s.fillna(0) for s in per_seed_std) / len(keys)
    tasks = ", ".join(k.partition(":")[2] for k in keys)
    return ranked_bars(t, "downstream", f"mean score % on {tasks}", "Downstream tasks (CLiMB phase II)",
                       folder / "downstream", width, higher_is_better=True)


LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 1.8, 2.8, 4, 5.5, 7) for dx, dy in  # points, nearest first
                 ((4, 3), (4, -9), (-4, 3), (-4, -9), (0, 7), (0, -13), (8, -3), (-8, -3), (6, 8), (-6, 8), (6, -14),
                  (-6, -14))]


def _label_points(ax, points: list[tuple[str, float, float]]) -> list[str]:
    """Annotate each (label, x, y) at the first nearby spot whose text box meets no other text of
    the figure and stays inside the axes; returns the labels that fit nowhere. Candidate boxes are
    computed from the label's measured size, so only the chosen spot becomes an artist."""
    fig = ax.figure
    fig.canvas.draw()  # the layout is final before boxes are measured
    renderer = fig.canvas.get_renderer()
    taken = [t.get_window_extent(renderer) for t in _texts(fig)]
    inside = ax.get_window_extent(renderer)
    pixels = fig.dpi / 72
    unplaced = []
    for label, x, y in sorted(points, key=lambda p: -p[2]):
        probe = ax.text(0, 0, label, fontsize=5.5, transform=None)
        size = probe.get_window_extent(renderer)
        probe.remove()
        px, py = ax.transData.transform((x, y))
        for dx, dy in LABEL_OFFSETS:
            x0 = px + dx * pixels - (size.width if dx < 0 else 0)
            box = matplotlib.transforms.Bbox.from_bounds(x0, py + dy * pixels, size.width, size.height)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in taken):
                ann = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=5.5,
                                  ha="right" if dx < 0 else "left", va="bottom",
                                  arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "0.5"}
                                  if max(abs(dx), abs(dy)) > 10 else None)
                ann.set_in_layout(False)
                taken.append(box)
                break
        else:
            unplaced.append(label)
    return unplaced


def score_vs_cost(table, cost: str, cost_label: str, title: str, path: Path, width: float, formatter) -> list[Path]:
    """Final score and transfer (two panels: side by side at two-column width, stacked at one)
    against a cost per method, points coloured by family and labelled where a label fits."""
    wide = width >= 5
    fig, axes = _figure(width, 0.42 * width + 0.6 if wide else 1.5 * width, 1 if wide else 2, 2 if wide else 1)
    axes = axes.ravel()
    panels = ((axes[0], "final_avg_mean", "final average score %"),
              (axes[1], "transfer_mean_mean", "knowledge transfer % (CLiMB)"))
    for ax, col, label in panels:
        t = table.dropna(subset=[col, cost])
        ax.scatter(t[cost], t[col], s=10, c=[FAMILY_COLOURS[family_of(m)] for m in t["method"]], zorder=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # a few labelled ticks even within one decade
        ax.xaxis.set_major_formatter(formatter)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(cost_label)
        ax.set_ylabel(label)
        ax.margins(x=0.25, y=0.2)  # room for the labels
    fig.suptitle(title)
    noted = []  # labels that fit nowhere are named in the legend's title; that moves the axes, so place again
    for _ in range(4):
        for f_legend in list(fig.legends):
            f_legend.remove()
        _family_legend(fig, table["method"], f"not labelled (no room): {', '.join(noted)}" if noted else None)
        for ax, _, _ in panels:
            for text in list(ax.texts):
                text.remove()
        unplaced = []
        for ax, col, _ in panels:
            t = table.dropna(subset=[col, cost])
            unplaced += _label_points(ax, list(zip(t["method"], t[cost], t[col])))
        if set(unplaced) <= set(noted):
            break
        noted = list(dict.fromkeys(noted + unplaced))
    return _save(fig, path)


def write_figures(runs, table, folder: Path, width: float = 7.0, downstream: list[str] = ()) -> list[Path]:
    """Every figure; `downstream` are the table's downstream score columns (bench/report.py)."""
    paths = []
    millions = FuncFormatter(lambda v, _: f"{v / 1e6:.3g}M")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    with plt.rc_context(STYLE):
        for method in by_method(runs):
            paths += heatmap(*method, folder, width) + task_curves(*method, folder, width)
        paths += forgetting_bars(table, folder, width)
        paths += downstream_bars(table, folder, width, list(downstream))
        paths += novel_bars(table, folder, width) + retention_curves(runs, folder, width)
        paths += score_vs_cost(table, "stored", "parameters stored after the sequence",
                               "Score and transfer vs stored parameters", folder / "score_vs_params", width, millions)
        paths += score_vs_cost(table, "train_s", "training time per run (s)",
                               "Score and transfer vs training compute", folder / "score_vs_compute", width, plain)
    return paths
