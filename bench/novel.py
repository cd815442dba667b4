"""Compositional generalisation, as VQACL's novel-composition test (Zhang et al., CVPR 2023): a task
holds out (question type, concept) pairs -- colour questions about circles -- from training and
validation; its "novel" split holds them, from the official test data (bench/task.py `Task.load`).
A task planned with `holdout: [circle]` (a per-task option of the sequence file) has that split;
after each task the runner scores the novel split of every seen task with the same model as the
score matrix, into a matrix N of the same shape (None where a task has no holdout or was not
scored); in class- and domain-IL as the test split is scored, without the task id (union labels,
classes seen so far, the task index chosen as for the test split: bench/task_id.py). The held-out
concepts are the task's own (`Task.concepts`: for vqa_color the shape the question is about, for
vqa_shape its colour); the answer space is the task's whole label set, as in VQACL, where a novel
composition is a seen answer about an unseen pairing."""
from statistics import mean

from bench.errors import BenchError, did_you_mean
from bench.registry import TASKS

COLUMN_GROUP = "Novel compositions (VQACL)"
COLUMNS = [("novel_final", "Novel final"), ("seen_final", "Seen final")]  # (key, label), higher is better


def planned_task(plan):
    """The task of a plan (bench/config.py TaskPlan), with the plan's held-out concepts."""
    task = TASKS.get(plan.name)()
    holdout = plan.holdout
    if holdout is None:
        return task
    holdout = [holdout] if isinstance(holdout, str) else holdout
    if not isinstance(holdout, list) or not all(isinstance(c, str) for c in holdout):
        raise BenchError(f"task '{plan.name}': holdout must be a list of concept names, got {plan.holdout!r}")
    if not task.concepts:
        raise BenchError(f"task '{plan.name}' has no concepts to hold out (holdout needs a task whose examples "
                         f"name their concept, e.g. vqa_color, vqa_shape)")
    for concept in holdout:
        if concept not in task.concepts:
            raise did_you_mean(concept, task.concepts, f"concept of task '{plan.name}' in its holdout")
    if set(holdout) >= set(task.concepts):
        raise BenchError(f"task '{plan.name}': holdout {holdout} leaves no concept to train on")
    task.holdout = tuple(holdout)
    return task


def score_row(method, novel: dict, seen: list[int], T: int, batch_size: int, precision: str, route) -> list:
    """Row of N after a task: the novel split's score (%) of each task j in `seen` that has one.
    `route(j)`: in class- / domain-IL, the task index each of its examples is predicted with, chosen
    as for the test split (bench/task_id.py); None in task-IL (task j's own)."""
    from bench import evaluate
    from bench.examples import cell_score
    return [cell_score(evaluate.per_example_scores(method, j, novel[j], batch_size, precision, models=route(j)))
            if j in novel and j in seen else None for j in range(T)]


def result(rows: list, A: list, tasks, novel: dict) -> dict:
    """metrics.json "novel": the held-out concepts per task, N, the novel examples per task, and the last
    row's mean over the tasks with a holdout beside the same tasks' usual (seen-composition) test
    scores A[T-1][j]. Both means are None where a cell is missing (multitask's earlier rows are)."""
    held = [j for j, t in enumerate(tasks) if t.holdout]
    last_novel, last_seen = [rows[-1][j] for j in held], [A[-1][j] for j in held]
    return {"tasks": [tasks[j].name for j in held], "holdout": {tasks[j].name: list(tasks[j].holdout) for j in held},
            "matrix": rows, "examples": {tasks[j].name: len(novel[j]) for j in held},
            "summary": {"novel_final": None if None in last_novel else mean(last_novel),
                        "seen_final": None if None in last_seen else mean(last_seen)}}


def report_columns(run: dict) -> dict:
    """The run's leaderboard columns (bench/report.py): its final novel and seen scores."""
    novel = run.get("novel")
    return dict(novel["summary"]) if novel else {}
