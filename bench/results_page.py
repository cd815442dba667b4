"""The results page: `results/index.html` and one page per setting (sequence / backbone) under
`results/pages/`, self-contained (figures inlined as data URIs, styles and the sorting script
inline; nothing is fetched), so it can be mailed or opened from a laptop. Every table sorts by any
column (a click sorts best first, a second click reverses; undefined values stay last). Shows the
leaderboard with its column groups (downstream, novel compositions, retention; confidence
intervals where the table has them, and a note per method whose composition stayed at its
initialisation), the figures, each method's score matrix (mean ± std over seeds), and per run its
provenance, stage costs and log (`log.jsonl` of `--log jsonl`, or the reason it failed)."""
import base64
import json
from pathlib import Path

import numpy as np

from bench.cache import safe_name
from bench.store import runs_dir, write_text

TEMPLATE = Path(__file__).with_name("results_page.html.j2")
FIGURES = ("forgetting", "forgetting_settings", "novel", "retention", "downstream", "score_vs_params", "score_vs_compute")
LOG_LINES = 200  # the end of a run's log.jsonl shown on the page


def matrix_view(runs: list[dict]) -> dict:
    """One method's score matrix over its seeds: cells `mean ± std` with a heat colour."""
    stack = np.array([[[np.nan if v is None else v for v in row] for row in r["matrix"]] for r in runs], dtype=float)
    rows = []
    for i, task in enumerate(runs[0]["tasks"]):
        cells = []
        for j in range(len(runs[0]["tasks"])):
            values = stack[:, i, j][~np.isnan(stack[:, i, j])]
            if len(values) == 0:
                cells.append({"text": "", "sort": None, "shade": None})
                continue
            mean = float(values.mean())
            text = f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {values.std(ddof=1):.1f}"
            cells.append({"text": text, "sort": mean, "shade": int(round(min(100.0, max(0.0, mean))))})
        rows.append({"task": task, "cells": cells})
    return {"tasks": runs[0]["tasks"], "rows": rows, "seeds": sorted(r["seed"] for r in runs)}


def run_view(run: dict, run_dir: Path) -> dict:
    log = run_dir / "log.jsonl"
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_LINES:] if log.exists() else []
    return {"run_id": run["run_id"], "method": run["method"], "seed": run["seed"],
            "final": run["summary"].get("final_avg"), "train_s": sum(run["time"]["train_s_per_task"]),
            "device": run["provenance"].get("device"), "git": run["provenance"].get("git"),
            "provenance": json.dumps(run["provenance"], indent=1, default=str),
            "stages": json.dumps(run.get("stages", []), indent=1), "log": "\n".join(lines),
            "downstream": run.get("downstream") or []}


def _data_uri(path: Path) -> str | None:
    if not path.exists():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def setting_name(sequence: str, backbone: str) -> str:
    return safe_name(f"{Path(sequence).stem}-{backbone}")


def write_results_page(out, runs: list[dict], leaderboards: dict, failed: list[tuple[str, str]],
                       metric_help: list[tuple[str, str]]) -> Path:
    """Write index.html (every setting's leaderboard and the figures) and a page per setting.
    `leaderboards` maps (sequence, backbone) to its sortable table (bench/report.py `sortable_rows`)."""
    import jinja2
    out = Path(out)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    settings = []
    for (sequence, backbone), leaderboard in sorted(leaderboards.items()):
        name = setting_name(sequence, backbone)
        mine = [r for r in runs if (r["sequence"], r["backbone"]) == (sequence, backbone)]
        methods = {}
        for r in sorted(mine, key=lambda r: (r["method"], r["seed"])):
            methods.setdefault(r["method"], []).append(r)
        settings.append({
            "name": name, "title": f"{Path(sequence).stem} / {backbone}", "href": f"pages/{name}.html",
            "leaderboard": leaderboard,
            "matrices": [{"method": m, **matrix_view(rs)} for m, rs in methods.items()],
            "runs": [run_view(r, runs_dir(out) / r["run_id"]) for r in sorted(mine, key=lambda r: r["run_id"])]})
    figures = [{"name": f, "src": src} for f in FIGURES if (src := _data_uri(out / "figures" / f"{f}.png"))]
    failed_rows = [{"run_id": rid, "why": why} for rid, why in failed]
    write_text(out / "index.html", template.render(page="index", settings=settings, figures=figures,
                                                   failed=failed_rows, metric_help=metric_help, root=""))
    for s in settings:
        write_text(out / s["href"], template.render(page="setting", setting=s, settings=settings, figures=[],
                                                    failed=[], metric_help=metric_help, root="../"))
    return out / "index.html"
