"""Leaderboard tables (CSV, Markdown, LaTeX; mean ± std over seeds) and figures (PNG + PDF)
from every finished run in a results directory."""
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.store import finished_runs, runs_dir, write_text

COLUMNS = [  # (column, label, higher is better)
    ("final_avg", "Final avg", True), ("avg_incremental", "Avg incr.", True), ("bwt", "BWT", True),
    ("forgetting", "Forgetting", False), ("climb_forgetting_mean", "CLiMB forg.", False),
    ("transfer_mean", "Transfer", True),
]


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        row = {"method": r["method"], "sequence": r["sequence"], "backbone": r["backbone"], "seed": r["seed"]}
        row.update({k: r["summary"].get(k) for k, _, _ in COLUMNS})
        row.update({"trainable": float(np.mean(r["params"]["trainable_per_task"])), "stored": r["params"]["stored"],
                    "inference": r["params"]["inference"], "train_s": sum(r["time"]["train_s_per_task"]),
                    "total_s": r["time"]["total_s"]})
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    metrics = [k for k, _, _ in COLUMNS]
    g = df.groupby(["sequence", "backbone", "method"], sort=False)
    table = g[metrics].agg(["mean", "std"])
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table["n"] = g.size()
    for k in ("trainable", "stored", "inference", "train_s"):
        table[k] = g[k].mean()
    return table.reset_index().sort_values(["sequence", "backbone", "final_avg_mean"], ascending=[True, True, False])


def _pm(mean, std, n):
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if n < 2 or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _human(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def pretty(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"Method": table["method"]})
    if table["sequence"].nunique() > 1 or table["backbone"].nunique() > 1:
        out.insert(0, "Setting", table["sequence"] + " / " + table["backbone"])
    for k, label, _ in COLUMNS:
        out[label] = [_pm(m, s, n) for m, s, n in zip(table[f"{k}_mean"], table[f"{k}_std"], table["n"])]
    out["Trainable/task"] = table["trainable"].map(_human)
    out["Stored"] = table["stored"].map(_human)
    out["Inference"] = table["inference"].map(_human)
    out["Train s"] = table["train_s"].map(lambda v: f"{v:.0f}")
    out["n"] = table["n"]
    return out


def failed_runs(out) -> list[tuple[str, str]]:
    root = runs_dir(out)
    return [(d.name, (d / "FAILED").read_text().strip()) for d in sorted(root.glob("*")) if (d / "FAILED").exists()] if root.exists() else []


def write_report(out="results") -> dict:
    out = Path(out)
    runs = finished_runs(out)
    if not runs:
        raise BenchError(f"no finished runs under {out}/runs (run `python run_bench.py run` first)")
    df = runs_frame(runs)
    table = leaderboard(df)
    nice = pretty(table)
    write_text(out / "leaderboard.csv", table.to_csv(index=False))
    md = _markdown(nice)
    failed = failed_runs(out)
    if failed:
        md += "\n\nFailed runs:\n" + "\n".join(f"- `{rid}`: {why}" for rid, why in failed)
    write_text(out / "leaderboard.md", md + "\n")
    write_text(out / "leaderboard.tex", nice.to_latex(index=False, escape=True).replace("±", r"$\pm$"))
    from bench.figures import write_figures
    figures = write_figures(runs, table, out / "figures")
    return {"table": nice, "paths": [out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.tex"],
            "figures": figures, "failed": failed}


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep] + body)
