"""Claims of the papers checked against the leaderboard: each claim names a metric, a method `a`
and what it is compared with (`b`: another method, or a number), and gets the effect a - b, its
95 % CI from the paired bootstrap (bench/stats.py: both methods' replicates share their seeds
and test examples, so the interval is that of the difference, not of two separate means) and a
verdict:
- "reproduced": the CI lies on the claimed side of 0 (">" or "<"), or inside +-margin ("=");
- "not reproduced": it lies on the other side of 0, or (for "=") wholly outside +-margin;
- "not distinguishable at this budget": otherwise.
The CI is the percentile interval of the replicates, as scipy.stats.bootstrap(method="percentile")
gives for a single method's metric."""
from dataclasses import dataclass

import numpy as np

from bench.stats import CONFIDENCE, Bootstrap

REPRODUCED, NOT_REPRODUCED, UNDECIDED = "reproduced", "not reproduced", "not distinguishable at this budget"


@dataclass(frozen=True)
class Claim:
    text: str  # the claim as the paper or the README states it
    metric: str  # a bench.stats metric: final_avg, forgetting, transfer_mean
    a: str  # the method the claim is about
    b: str | float = 0.0  # the method it is compared with, or a value (e.g. 0 forgetting)
    direction: str = ">"  # ">": a - b > 0; "<": a - b < 0; "=": |a - b| <= margin
    margin: float = 1.0  # points; only for "="


# The papers' claims (issue #18 item 9), as the README prints them with their verdicts.
PAPER_CLAIMS = [
    *(Claim(f"{m} does not forget (adapters: frozen backbone)", "forgetting", m, 0.0, "=", margin=0.5)
      for m in ("adapter", "pfeiffer", "adapter_fusion", "i2i", "scalearn", "atlas")),
    Claim("I2I transfers more than adapter (same inference cost)", "transfer_mean", "i2i", "adapter", ">"),
    Claim("I2I transfers more than adapter trained for I2I's steps (improvisation, not extra training)",
          "transfer_mean", "i2i", "adapter_i2i_budget", ">"),
    Claim("ScaLearn is on par with AdapterFusion (final avg within 1 point)", "final_avg", "scalearn", "adapter_fusion", "=",
          margin=1.0),
    Claim("ScaLearn transfers as much as AdapterFusion (within 1 point)", "transfer_mean", "scalearn", "adapter_fusion", "=",
          margin=1.0),
    Claim("ATLAS transfers more than adapter", "transfer_mean", "atlas", "adapter", ">"),
    *(Claim(f"finetune forgets more than {m}", "forgetting", "finetune", m, ">") for m in ("ewc", "er", "lwf")),
    *(Claim(f"{m} forgets more than adapter", "forgetting", m, "adapter", ">") for m in ("ewc", "er", "lwf")),
]


def effect_replicates(boot: Bootstrap, claim: Claim) -> tuple[float, np.ndarray]:
    """(a - b, its bootstrap replicates) on the claim's metric."""
    point, reps = boot.point[claim.metric], boot.replicates[claim.metric]
    a = boot.index(claim.a)
    if isinstance(claim.b, str):
        b = boot.index(claim.b)
        return float(point[a] - point[b]), reps[a] - reps[b]
    return float(point[a] - claim.b), reps[a] - claim.b


def verdict(direction: str, low: float, high: float, margin: float) -> str:
    if direction == "=":
        if -margin <= low and high <= margin:
            return REPRODUCED
        return NOT_REPRODUCED if low > margin or high < -margin else UNDECIDED
    sign = {">": 1, "<": -1}[direction]
    lo, hi = sorted((sign * low, sign * high))  # in the claimed direction
    return REPRODUCED if lo > 0 else NOT_REPRODUCED if hi < 0 else UNDECIDED


def judge(claims: list[Claim], boot: Bootstrap) -> "pd.DataFrame":
    """One row per claim: claim, metric, effect, ci_low, ci_high, verdict. A claim about a method
    the runs lack (or a metric it does not have) gets effect NaN and the verdict "no runs"."""
    import pandas as pd
    tail = 100 * (1 - CONFIDENCE) / 2
    rows = []
    for c in claims:
        row = {"claim": c.text, "metric": c.metric, "a": c.a, "b": c.b, "direction": c.direction}
        known = c.a in boot.methods and (not isinstance(c.b, str) or c.b in boot.methods)
        effect, reps = effect_replicates(boot, c) if known else (np.nan, None)
        if reps is None or np.isnan(effect):
            rows.append({**row, "effect": np.nan, "ci_low": np.nan, "ci_high": np.nan, "verdict": "no runs"})
            continue
        low, high = np.percentile(reps, [tail, 100 - tail])
        rows.append({**row, "effect": effect, "ci_low": low, "ci_high": high, "verdict": verdict(c.direction, low, high, c.margin)})
    return pd.DataFrame(rows)


def claims_markdown(verdicts: "pd.DataFrame") -> str:
    """The claims table for the README / report: claim, metric, effect with its 95 % CI, verdict."""
    lines = [f"| Claim | Metric | Effect (a − b) | {CONFIDENCE:.0%} CI | Verdict |", "|---|---|---|---|---|"]
    for r in verdicts.itertuples(index=False):
        ci = "–" if np.isnan(r.effect) else f"[{r.ci_low:.1f}, {r.ci_high:.1f}]"
        effect = "–" if np.isnan(r.effect) else f"{r.effect:+.1f}"
        lines.append(f"| {r.claim} | {r.metric} ({r.a} vs {r.b}) | {effect} | {ci} | {r.verdict} |")
    return "\n".join(lines)
