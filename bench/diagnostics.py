"""What the compositions learned, for the report: metrics.json's "diagnostics" (per task, from
`Method.diagnostics`: AdapterFusion's and I2I's attention, ATLAS's weights, ScaLearn's omega, each
with "at_init") gathered over seeds. `at_init_table` names, per method, the tasks where the
composition stayed at its initialisation in any seed (the leaderboard marks those methods);
`diagnostics_markdown` is diagnostics.md: per method and task, every number of the diagnostics
averaged over sites and then over seeds; a per-source list (one value per composed adapter) is
averaged per source and shown as its range over sources, so a composition that moved away from
uniform weights shows a wide range."""
from pathlib import Path

import numpy as np
import pandas as pd

AT_INIT_MARK = "†"


def _diagnosed(runs: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """(sequence, backbone, method) -> its runs that have diagnostics, by seed."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        if r.get("diagnostics"):
            groups.setdefault((r["sequence"], r["backbone"], r["method"]), []).append(r)
    return groups


def _seeds(seeds: list[int], n: int) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} of {n}"


def at_init_table(runs: list[dict]) -> pd.DataFrame:
    """One row per (sequence, backbone, method) whose composition stayed at its initialisation on
    some task in some seed; `at_init` names those tasks and seeds, e.g. "digits (seed 2 of 3)"."""
    seeds_of: dict[tuple[str, str, str], int] = {}
    for r in runs:
        where = (r["sequence"], r["backbone"], r["method"])
        seeds_of[where] = seeds_of.get(where, 0) + 1
    rows = []
    for where, group in _diagnosed(runs).items():
        flagged: dict[str, list[int]] = {}
        for r in group:
            for t, d in r["diagnostics"].items():
                if d.get("at_init"):
                    flagged.setdefault(r["tasks"][int(t)], []).append(r["seed"])
        if flagged:
            tasks = sorted(flagged, key=group[0]["tasks"].index)
            text = "; ".join(f"{t} ({_seeds(flagged[t], seeds_of[where])})" for t in tasks)
            rows.append(dict(zip(("sequence", "backbone", "method"), where), at_init=text))
    return pd.DataFrame(rows, columns=["sequence", "backbone", "method", "at_init"])


def at_init_notes(table: pd.DataFrame) -> list[str]:
    """The leaderboard's footnotes: one per row of `table` with a non-empty `at_init` column."""
    if "at_init" not in table:
        return []
    several = table["sequence"].nunique() > 1 or table["backbone"].nunique() > 1
    return [f"{AT_INIT_MARK} {r.method}{f' ({Path(r.sequence).stem} / {r.backbone})' if several else ''}: the "
            f"composition stayed at its initialisation on {r.at_init}; see diagnostics.md"
            for r in table.itertuples(index=False) if isinstance(r.at_init, str) and r.at_init]


def _numbers(d: dict) -> dict[str, float | np.ndarray]:
    """One task's diagnostics as numbers: top-level scalars as they are, every per-site field
    averaged over the sites (a per-source list per source); flags and non-numbers left out."""
    out = {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    sites = d.get("sites") or []
    for key in dict.fromkeys(k for s in sites for k in s):
        values = [s[key] for s in sites if key in s]
        if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
            out[key] = np.mean(np.array(values, dtype=float), axis=0)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(np.mean(values))
    return out


def _shown(value) -> str:
    if np.ndim(value) == 0:
        return f"{value:.3g}"
    low, high = f"{value.min():.3g}", f"{value.max():.3g}"
    return low if low == high else f"{low}–{high}"


def diagnostics_markdown(runs: list[dict]) -> str:
    """diagnostics.md: per setting and method, a table of its diagnosed tasks: seeds at
    initialisation, then every diagnostic number (mean over sites, then seeds; a per-source list
    as the range over sources of its per-source means). Empty when no run has diagnostics."""
    sections = []
    for (sequence, backbone, method), group in _diagnosed(runs).items():
        rows = []
        for t in sorted({t for r in group for t in r["diagnostics"]}, key=int):
            per_seed = [(r["seed"], r["diagnostics"].get(t) or {}) for r in group]
            per_seed = [(s, d) for s, d in per_seed if d]
            if not per_seed:
                continue
            numbers = [_numbers(d) for _, d in per_seed]
            keys = [k for k in dict.fromkeys(k for n in numbers for k in n) if all(k in n for n in numbers)]
            at_init = [s for s, d in per_seed if d.get("at_init")]
            rows.append((group[0]["tasks"][int(t)], f"{len(at_init)} of {len(per_seed)}",
                         {k: np.mean([n[k] for n in numbers], axis=0) for k in keys}))
        if not rows:
            continue
        keys = list(dict.fromkeys(k for _, _, values in rows for k in values))
        lines = [f"### {method} ({Path(sequence).stem} / {backbone})", "",
                 "| task | seeds at init | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        lines += [f"| {task} | {seeds} | " + " | ".join(_shown(values[k]) if k in values else "–" for k in keys) + " |"
                  for task, seeds, values in rows]
        sections.append("\n".join(lines))
    if not sections:
        return ""
    head = ("# What the compositions learned\n\nFrom each run's `metrics.json` \"diagnostics\" (`Method.diagnostics`): "
            "every number is the mean over sites, then over seeds; a per-source list (one value per "
            "composed adapter) is shown as the range over sources of its per-source means. "
            "\"seeds at init\": seeds whose composition stayed at its initialisation on that task "
            f"(marked {AT_INIT_MARK} in the leaderboard).")
    return head + "\n\n" + "\n\n".join(sections)
