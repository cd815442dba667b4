"""Finished runs written without training (metrics.json + DONE), for tests whose subject is the
report: every method of the default leaderboard, with the parameter counts and training times of
results/reference/all-methods/leaderboard.csv (so points cluster as in the real figures), and seeded random
score matrices; optionally with per-example scores (examples.npz, for the statistics) and
composition diagnostics."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.examples import RunExamples, cell_score

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["vqa_color", "text_mention", "digits", "vqa_shape"]
CHANCE = [12.5, 100 / 11, 10.0, 100 / 3]


def write_run(out: Path, method: str, seed: int, matrix, *, sequence="default", backbone="default", stored=1e6,
              trainable=1e5, train_s=10.0, downstream=None, single=None, examples: RunExamples | None = None,
              diagnostics=None, beside: dict | None = None) -> dict:
    run_id = f"{sequence}-{method}-s{seed}-fake"
    m = {"run_id": run_id, "method": method, "sequence": sequence, "backbone": backbone, "seed": seed,
         "tasks": TASKS[:len(matrix)], "matrix": matrix, "chance": CHANCE[:len(matrix)], "single_task": single,
         "summary": M.summary(matrix, CHANCE[:len(matrix)], single),
         "params": {"trainable_per_task": [trainable] * len(matrix), "stored": stored, "inference": stored,
                    "transient_per_task": [0] * len(matrix)},
         "time": {"train_s_per_task": [train_s / len(matrix)] * len(matrix), "total_s": train_s + 1},
         "peak_mem_mb": 100.0, "stages": [],
         "provenance": {"config": {"method": method, "seed": seed}, "versions": {"torch": "x"}, "git": "abc",
                        "host": "h", "device": "cpu"}}
    if downstream is not None:
        m["downstream"] = downstream
    if diagnostics is not None:
        m["diagnostics"] = diagnostics
    m.update(beside or {})  # "novel", "probe" (bench/novel.py, bench/probe.py)
    run_dir = out / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(m))
    (run_dir / "DONE").write_text(run_id + "\n")
    if examples is not None:
        examples.save(run_dir)
    return m


def example_matrix(rng, n: int) -> tuple[list, RunExamples]:
    """A lower-triangular score matrix made of per-example scores (n test examples per task, the
    same examples in every run: each task's split key is fixed), and those scores."""
    examples = RunExamples()
    for i in range(4):
        for j in range(i + 1):
            examples.record(i, j, rng.random(n) < rng.uniform(0.4, 1.0), f"fake/{TASKS[j]}")
    return [[cell_score(examples.cells[(i, j)]) if j <= i else None for j in range(4)] for i in range(4)], examples


def leaderboard_runs(out: Path, seeds=(0, 1, 2), downstream=("imdb", "sst2"), methods=None,
                     sequence="default", examples: int = 0) -> list[dict]:
    """Every reference method (or `methods`) x seeds; upstream matrices lower-triangular (made of
    `examples` per-example scores per task, stored with the run, when non-zero), downstream scores
    per task."""
    ref = pd.read_csv(ROOT / "results" / "reference" / "all-methods" / "leaderboard.csv")
    runs = []
    for k, r in enumerate(ref.itertuples()):
        if methods is not None and r.method not in methods:
            continue
        for seed in seeds:
            rng = np.random.default_rng(1000 * k + seed)
            A = [[float(np.round(rng.uniform(40, 100), 2)) if j <= i else None for j in range(4)] for i in range(4)]
            per_example = None
            if examples:
                A, per_example = example_matrix(rng, examples)
            single = [float(np.round(rng.uniform(60, 100), 2)) for _ in range(4)]
            down = [{"task": t, "score": float(np.round(rng.uniform(50, 95), 2)), "chance": 50.0, "shots": 16,
                     "train_examples": 32, "trainable": 1000, "train_s": 1.0, "single_task": 70.0,
                     "transfer": float(np.round(rng.uniform(-20, 20), 2))} for t in downstream]
            runs.append(write_run(out, r.method, seed, A, stored=r.stored, trainable=r.trainable, train_s=r.train_s,
                                  downstream=down if downstream else None, single=single, sequence=sequence,
                                  examples=per_example))
    return runs
