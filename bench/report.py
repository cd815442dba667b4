"""Leaderboard tables (CSV, Markdown, LaTeX; mean ± std over seeds, 95 % CIs where the runs have
per-example scores), the papers' claims (claims.md), what the compositions learned
(diagnostics.md), figures (PNG + PDF) and the results page (results/index.html) from every
finished run in a results directory."""
import dataclasses
import typing
from pathlib import Path

import numpy as np
import pandas as pd

from bench import novel, probe
from bench.errors import BenchError
from bench.settings import labelled
from bench.store import finished_runs, runs_dir, write_text

COLUMNS = [  # (column, label, higher is better)
    ("final_avg", "Final avg", True), ("avg_incremental", "Avg incr.", True), ("bwt", "BWT", True),
    ("forgetting", "Forgetting", False), ("climb_forgetting_mean", "CLiMB forg.", False),
    ("transfer_mean", "Transfer", True),
]
# CLiMB phase II (metrics.json "downstream"): a column group of one score per downstream task
# (`down:<task>`) and their mean transfer
DOWN_PREFIX = "down:"
DOWN_TRANSFER = "down_transfer"


@dataclasses.dataclass
class ReportOptions:
    figure_width: float = 7.0  # inches: 3.3 for a one-column figure, 7 for a two-column one

    @classmethod
    def from_sets(cls, sets: list[tuple[str, str]]) -> tuple["ReportOptions", list[tuple[str, str]]]:
        """(the report's options, the other --set pairs): `--set figure_width=3.3` goes to the
        report, everything else to the runs."""
        from bench.config import _coerce
        hints = typing.get_type_hints(cls)
        mine = {k: _coerce(k, raw, hints[k]) for k, raw in sets if k in hints}
        options = cls(**mine)
        if not 2 <= options.figure_width <= 20:
            raise BenchError(f"bad figure_width={options.figure_width}: must be inches from 2 to 20 "
                             "(3.3 for one column, 7 for two)")
        return options, [(k, raw) for k, raw in sets if k not in hints]


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        row = {"method": r["method"], "sequence": r["sequence"], "backbone": r["backbone"], "seed": r["seed"],
               "setting": r.get("setting", "task"), "task_id": r.get("task_id", "given")}
        row.update({k: r["summary"].get(k) for k, _, _ in COLUMNS})
        row.update({"trainable": float(np.mean(r["params"]["trainable_per_task"])), "stored": r["params"]["stored"],
                    "inference": r["params"]["inference"], "train_s": sum(r["time"]["train_s_per_task"]),
                    "total_s": r["time"]["total_s"]})
        down = r.get("downstream") or []
        row.update({f"{DOWN_PREFIX}{d['task']}": d["score"] for d in down})
        transfers = [d["transfer"] for d in down if d.get("transfer") is not None]
        if down:
            row[DOWN_TRANSFER] = float(np.mean(transfers)) if transfers else None
        for beside in (novel, probe):
            row.update(beside.report_columns(r))
        rows.append(row)
    return pd.DataFrame(rows)


def downstream_keys(frame: pd.DataFrame) -> list[str]:
    """The downstream columns present (`down:<task>`, then the mean transfer), in first-seen order."""
    keys = [c for c in frame.columns if c.startswith(DOWN_PREFIX) and not c.endswith(("_mean", "_std"))]
    keys = keys or list(dict.fromkeys(c[:-5] for c in frame.columns if c.startswith(DOWN_PREFIX) and c.endswith("_mean")))
    return keys + ([DOWN_TRANSFER] if keys else [])


def beside_columns() -> list[tuple[str, str, str]]:
    """(key, label, column group) of the scores kept beside the matrix: novel compositions
    (bench/novel.py) and retention of pretrained ability (bench/probe.py)."""
    return [(key, label, m.COLUMN_GROUP) for m in (novel, probe) for key, label in m.COLUMNS]


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    metrics = [k for k, _, _ in COLUMNS] + downstream_keys(df) + [k for k, _, _ in beside_columns() if k in df]
    g = df.groupby(["sequence", "backbone", "method"], sort=False)
    table = g[metrics].agg(["mean", "std"])
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table["n"] = g.size()
    for k in ("trainable", "stored", "inference", "train_s"):
        table[k] = g[k].mean()
    for k in ("setting", "task_id"):  # one per (sequence, backbone, method): bench/settings.py labelled
        table[k] = g[k].first()
    return table.reset_index().sort_values(["sequence", "backbone", "final_avg_mean"], ascending=[True, True, False])


def cell(row, key: str) -> str:
    """`mean ± std` over seeds, or `mean [low, high]` where the table has a confidence interval
    (`<key>_ci_low`, `<key>_ci_high` columns), `–` where the metric is undefined."""
    mean, std, n = row[f"{key}_mean"], row.get(f"{key}_std"), row["n"]
    if pd.isna(mean):
        return "–"
    text = f"{mean:.1f}" if n < 2 or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if low is not None and high is not None and not (pd.isna(low) or pd.isna(high)):
        return f"{text} [{low:.1f}, {high:.1f}]"
    return text


def metric_columns(table: pd.DataFrame) -> list[tuple[str, str, bool, str]]:
    """(key, label, higher is better, column group) of every score column the table has."""
    cols = [(k, label, higher, "") for k, label, higher in COLUMNS]
    for key in downstream_keys(table):
        label = "DS transfer" if key == DOWN_TRANSFER else f"DS {key[len(DOWN_PREFIX):]}"
        cols.append((key, label, True, "Downstream (CLiMB phase II)"))
    return cols + [(key, label, True, group) for key, label, group in beside_columns() if f"{key}_mean" in table]


def _human(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


# what LaTeX reads as markup in the notes under the table (to_latex escapes the table's own cells)
LATEX_SPECIAL = str.maketrans({c: "\\" + c for c in "_&%#$"})

COST_COLUMNS = [("trainable", "Trainable/task"), ("stored", "Stored"), ("inference", "Inference"), ("train_s", "Train s")]


def method_names(table: pd.DataFrame) -> pd.Series:
    """Method names as the tables show them: marked where the composition stayed at its
    initialisation (`at_init`, bench/diagnostics.py), and where a method was given the true task id
    in class- / domain-IL (bench/task_id.py)."""
    from bench.diagnostics import AT_INIT_MARK
    from bench.task_id import ORACLE_MARK
    flagged = table["at_init"].fillna("").astype(bool) if "at_init" in table else False
    oracle = table["task_id"] == "oracle" if "task_id" in table else False
    return table["method"] + np.where(flagged, f" {AT_INIT_MARK}", "") + np.where(oracle, ORACLE_MARK, "")


def pretty(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"Method": method_names(table)})
    if table["sequence"].nunique() > 1 or table["backbone"].nunique() > 1:
        out.insert(0, "Setting", table["sequence"] + " / " + table["backbone"] + " / " + table["setting"] + "-IL")
    for k, label, _, _ in metric_columns(table):
        out[label] = [cell(row, k) for _, row in table.iterrows()]
    out["Trainable/task"] = table["trainable"].map(_human)
    out["Stored"] = table["stored"].map(_human)
    out["Inference"] = table["inference"].map(_human)
    out["Train s"] = table["train_s"].map(lambda v: f"{v:.0f}")
    if "group" in table:
        out["Group"] = table["group"].fillna("")
    out["n"] = table["n"]
    return out


def _number(v):
    return None if v is None or pd.isna(v) else float(v)


def sortable_rows(table: pd.DataFrame) -> dict:
    """The results page's table: header cells (label, column group, best-first direction) and rows
    of cells (text as shown, value to sort by)."""
    nice = pretty(table)
    # a setting without downstream tasks shows no empty downstream group
    metrics = [m for m in metric_columns(table) if not (m[3] and table[f"{m[0]}_mean"].isna().all())]
    header = [{"label": "Method", "group": "", "dir": "asc", "kind": "text"}]
    header += [{"label": label, "group": group, "dir": "desc" if higher else "asc", "kind": "number"}
               for _, label, higher, group in metrics]
    header += [{"label": label, "group": "Cost", "dir": "asc", "kind": "number"} for _, label in COST_COLUMNS]
    header += [{"label": "n", "group": "", "dir": "desc", "kind": "number"}]
    rows = []
    for (_, row), (_, shown) in zip(table.iterrows(), nice.iterrows()):
        cells = [{"text": shown["Method"], "sort": row["method"]}]
        cells += [{"text": cell(row, key), "sort": _number(row[f"{key}_mean"])} for key, _, _, _ in metrics]
        cells += [{"text": shown[label], "sort": _number(row[key])} for key, label in COST_COLUMNS]
        cells += [{"text": str(row["n"]), "sort": float(row["n"])}]
        rows.append(cells)
    groups = []  # (group label, colspan) over the header, for the column-group row
    for h in header:
        if groups and groups[-1][0] == h["group"]:
            groups[-1][1] += 1
        else:
            groups.append([h["group"], 1])
    from bench.diagnostics import at_init_notes
    return {"header": header, "rows": rows, "groups": groups, "notes": at_init_notes(table)}


def failed_runs(out) -> list[tuple[str, str]]:
    root = runs_dir(out)
    return [(d.name, (d / "FAILED").read_text().strip()) for d in sorted(root.glob("*")) if (d / "FAILED").exists()] if root.exists() else []


def write_report(out="results", options: ReportOptions | None = None) -> dict:
    options = options or ReportOptions()
    out = Path(out)
    runs = [labelled(m) for m in finished_runs(out)]
    if not runs:
        raise BenchError(f"no finished runs under {out}/runs (run `python run_bench.py run` first)")
    df = runs_frame(runs)
    table, claims = with_statistics(leaderboard(df), out, options.figure_width)
    from bench.diagnostics import at_init_notes, at_init_table, diagnostics_markdown
    table = table.merge(at_init_table(runs), on=["sequence", "backbone", "method"], how="left")
    nice = pretty(table)
    notes = at_init_notes(table)
    write_text(out / "leaderboard.csv", table.to_csv(index=False))
    md = "\n\n".join([_markdown(nice)] + notes)
    failed = failed_runs(out)
    if failed:
        md += "\n\nFailed runs:\n" + "\n".join(f"- `{rid}`: {why}" for rid, why in failed)
    write_text(out / "leaderboard.md", md + "\n")
    tex = "\n".join([nice.to_latex(index=False, escape=True)] + [f"\\par {n.translate(LATEX_SPECIAL)}" for n in notes])
    write_text(out / "leaderboard.tex", tex.replace("±", r"$\pm$").replace("†", r"$^\dagger$"))
    if claims:
        write_text(out / "claims.md", claims + "\n")
    diagnostics = diagnostics_markdown(runs)
    if diagnostics:
        write_text(out / "diagnostics.md", diagnostics + "\n")
    from bench.figures import write_figures
    scores = [k for k in downstream_keys(table) if k != DOWN_TRANSFER]
    figures = write_figures(runs, table, out / "figures", options.figure_width, scores)
    from bench.results_page import write_results_page
    leaderboards = {setting: sortable_rows(part) for setting, part in table.groupby(["sequence", "backbone"])}
    page = write_results_page(out, runs, leaderboards, failed, [(label, key) for key, label, _ in COLUMNS])
    return {"table": nice, "paths": [out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.tex"],
            "figures": figures, "failed": failed, "page": page}


def with_statistics(table: pd.DataFrame, out: Path, figure_width: float = 7.0) -> tuple[pd.DataFrame, str]:
    """`table` with 95 % CIs of the final average, forgetting and transfer (`<key>_ci_low/high`) and
    the groups of statistically indistinguishable methods (`group`), bootstrapped over seeds and
    test examples from the runs' per-example scores (bench/stats.py); a ranked-CI figure per
    setting; and the papers' claims judged on them (bench/claims.py), as Markdown."""
    from bench.cache import safe_name
    from bench.claims import PAPER_CLAIMS, claims_markdown, judge, left_out
    from bench.stats import bootstrap, ci_table, load_settings, write_ci_figure
    cis, claims = [], []
    for s in load_settings(out):
        if not s.runs:  # older runs only: nothing to bootstrap, and the claims say why
            claims.append("\n\n".join([f"### {s.sequence} / {s.backbone}",
                                         "No claim judged: no run has per-example scores.", *left_out(s.excluded, [], [])]))
            continue
        ran = table.loc[(table["sequence"] == s.sequence) & (table["backbone"] == s.backbone), "method"]
        boot = bootstrap(s.runs, baseline="finetune" if any(r.method == "finetune" for r in s.runs) else None)
        ci = ci_table(boot, s.sequence, s.backbone)
        write_ci_figure(ci, out / "figures" / f"ci-{safe_name(Path(s.sequence).stem)}-{safe_name(s.backbone)}", figure_width)
        cis.append(ci)
        claims.append("\n\n".join([f"### {s.sequence} / {s.backbone}", claims_markdown(judge(PAPER_CLAIMS, boot, ran)),
                                     *left_out(s.excluded, boot.lacking, boot.seeds)]))
    if cis:
        ci = pd.concat(cis)
        keep = ["sequence", "backbone", "method", "group"] + [c for c in ci.columns if c.endswith(("_ci_low", "_ci_high"))]
        table = table.merge(ci[keep], on=["sequence", "backbone", "method"], how="left")
    return table, "\n\n".join(claims)


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep] + body)
