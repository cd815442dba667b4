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
# a claim the runs cannot judge: a method absent from the results (the leaderboard may run a
# subset), one whose runs the statistics left out (no per-example scores) or that lacks a seed the
# others have, or a metric it does not have
NOT_RUN, LEFT_OUT, SEEDS_MISSING, UNDEFINED = "not run", "left out of the statistics", "not run on every seed", "undefined"


@dataclass(frozen=True)
class Claim:
    text: str  # the claim as the paper or the README states it
    metric: str  # a bench.stats metric: final_avg, forgetting, transfer_mean
    a: str  # the method the claim is about
    b: str | float = 0.0  # the method it is compared with, or a value (e.g. 0 forgetting)
    direction: str = ">"  # ">": a - b > 0; "<": a - b < 0; "=": |a - b| <= margin
    margin: float = 1.0  # points; only for "="


# The papers' claims that the default sequence (task-incremental: a head per task) can test, as the
# report prints them with their verdicts (issue #18 item 9, issue #19).
PAPER_CLAIMS = [
    *(Claim(f"{m} does not forget (adapters: frozen backbone)", "forgetting", m, 0.0, "=", margin=0.5)
      for m in ("adapter", "pfeiffer", "adapter_fusion", "i2i", "scalearn", "atlas")),
    # frozen backbone and one LoRA / set of experts + router per task (`isolates_tasks`)
    *(Claim(f"{m} does not forget (frozen backbone, its own parameters per task)", "forgetting", m, 0.0, "=",
            margin=0.5) for m in ("lora", "moe_adapters")),
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
    # Buzzega et al. 2020 (task-IL tables: DER++ above ER at the same buffer; here 500 examples vs
    # er's 128 per task, about as many by the last task)
    Claim("DER++ forgets less than ER (Buzzega et al.)", "forgetting", "derpp", "er", "<"),
    Claim("DER++ scores higher than ER (Buzzega et al.)", "final_avg", "derpp", "er", ">"),
    # none for ER-ACE (Caccia et al. 2022): its claim over ER is class-incremental (the masking
    # protects a shared head's old classes; with a head per task it masks none of them, er_ace.py)
    # Chaudhry et al. 2019: A-GEM against plain sequential training (VAN)
    Claim("A-GEM forgets less than finetune (Chaudhry et al.)", "forgetting", "agem", "finetune", "<"),
    Claim("A-GEM scores higher than finetune (Chaudhry et al.)", "final_avg", "agem", "finetune", ">"),
    # Wang et al. 2022 (L2P, DualPrompt), Smith et al. 2023 (CODA-Prompt): their tables
    Claim("L2P forgets less than finetune (Wang et al., L2P)", "forgetting", "l2p", "finetune", "<"),
    Claim("DualPrompt forgets less than L2P (Wang et al., DualPrompt)", "forgetting", "dualprompt", "l2p", "<"),
    Claim("DualPrompt scores higher than L2P (Wang et al., DualPrompt)", "final_avg", "dualprompt", "l2p", ">"),
    Claim("CODA-Prompt scores higher than DualPrompt (Smith et al.)", "final_avg", "coda_prompt", "dualprompt", ">"),
    # Wang et al. 2023 (O-LoRA: average accuracy above sequential fine-tuning, replay, EWC, LwF, L2P)
    *(Claim(f"O-LoRA scores higher than {m} (Wang et al., O-LoRA)", "final_avg", "olora", m, ">")
      for m in ("finetune", "er", "ewc", "lwf", "l2p")),
    # Liang & Li 2024 (InfLoRA: final accuracy above L2P, DualPrompt and CODA-Prompt)
    *(Claim(f"InfLoRA scores higher than {m} (Liang & Li)", "final_avg", "inflora", m, ">")
      for m in ("l2p", "dualprompt", "coda_prompt")),
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


def _unjudged(claim: Claim, boot: Bootstrap, ran: set[str]) -> str | None:
    """Why the runs cannot judge `claim`, or None when both sides are in the bootstrap."""
    absent = [m for m in (claim.a, claim.b) if isinstance(m, str) and m not in boot.methods]
    if any(m not in ran and m not in boot.lacking for m in absent):
        return NOT_RUN
    if any(m not in boot.lacking for m in absent):
        return LEFT_OUT
    return SEEDS_MISSING if absent else None


def judge(claims: list[Claim], boot: Bootstrap, ran=()) -> "pd.DataFrame":
    """One row per claim: claim, metric, effect, ci_low, ci_high, verdict. `ran`: every method with
    finished runs in the setting, also those the statistics left out. A claim the runs cannot judge
    (a method not run, left out or short of seeds; a metric undefined) gets effect NaN and says why."""
    import pandas as pd
    tail = 100 * (1 - CONFIDENCE) / 2
    rows = []
    for c in claims:
        row = {"claim": c.text, "metric": c.metric, "a": c.a, "b": c.b, "direction": c.direction}
        why = _unjudged(c, boot, set(ran))
        effect, reps = effect_replicates(boot, c) if why is None else (np.nan, None)
        if reps is None or np.isnan(effect):
            rows.append({**row, "effect": np.nan, "ci_low": np.nan, "ci_high": np.nan, "verdict": why or UNDEFINED})
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


def left_out(excluded: dict[str, str], lacking: list[str], seeds: list[int]) -> list[str]:
    """Paragraphs saying what the claims of a setting could not use: runs left out of the
    statistics (bench/stats.py load_settings), by reason, and methods lacking one of the seeds."""
    reasons: dict[str, list[str]] = {}
    for rid, why in sorted(excluded.items()):
        reasons.setdefault(why, []).append(f"`{rid}`")
    out = [f"Left out ({why}): {', '.join(rids)}." for why, rids in reasons.items()]
    if lacking:
        out.append(f"Left out for lacking one of the seeds {', '.join(map(str, seeds))}: {', '.join(lacking)}.")
    return out
