"""A toy where the score matrix is known by hand, for the class- and domain-incremental settings
(tests/test_settings.py, tests/test_novel.py): text tasks whose inputs are single words, each task
mapping its words to label strings (one word = one concept, so a task may hold words out as novel
compositions), and a method that memorises its last training split exactly.

`Memoriser` keeps, in the head it trains (`self.heads[t].memory`), each training input's label.
It predicts a memorised input's label, and for an input it never trained on it prefers the last
label of the union (logits 0, 1, ..., C-1): under the seen-classes mask that is the latest class
seen so far. So with one shared head a prediction is a function of the word and of the last task
trained only: `expected_matrix` computes every cell from the tasks' word maps, without the harness.
Every `predict` call is logged as (task being trained, index given, id of the head used)."""
import torch

from bench.method import Method
from bench.registry import TASKS
from bench.task import Task

TRAIN_COPIES = 20  # of each word in the training source: val (1/5 at most) never takes all of one
TEST_COPIES = {"red": 1, "green": 2, "blue": 3, "cat": 4, "dog": 5, "sun": 6}  # unequal, so cells are not 0/100
# one label space; each later domain contradicts the earlier ones on some words
DOMAINS = {"words_a": {"red": "x", "green": "y", "blue": "z", "cat": "x", "dog": "y", "sun": "z"},
           "words_b": {"red": "y", "green": "x", "blue": "z", "cat": "x", "dog": "y", "sun": "z"},
           "words_c": {"red": "y", "green": "x", "blue": "z", "cat": "z", "dog": "y", "sun": "x"}}
# class-incremental: the second task adds label w (union x, y, z, w) and keeps z
CLASSES = {"words_a": DOMAINS["words_a"], "words_d": {"red": "z", "green": "w", "blue": "w", "cat": "z"}}


class WordTask(Task):
    """Task `name`: each word of `mapping` is an example ("concept" = the word), labelled with its
    label string; the labels in order of first appearance."""

    def __init__(self, name: str, mapping: dict[str, str]):
        super().__init__(name, "text", list(dict.fromkeys(mapping.values())), n_images=0, concepts=list(mapping))
        self.mapping = mapping

    def examples(self, split, data_root=None):
        copies = {w: TRAIN_COPIES for w in self.mapping} if split == "train" else TEST_COPIES
        return [{"text": w, "label": self.labels.index(label), "concept": w}
                for w, label in self.mapping.items() for _ in range(copies[w])]


def register(monkeypatch, tasks: dict[str, dict[str, str]]) -> None:
    """Register the word tasks {name: word map} for one test."""
    TASKS.names()
    for name, mapping in tasks.items():
        monkeypatch.setitem(TASKS._items, name, lambda name=name, mapping=mapping: WordTask(name, mapping))


def sequence_file(path, setting: str, tasks: dict[str, dict[str, str]], holdout: dict[str, list[str]] = {}) -> str:
    entries = ", ".join(f"{{name: {n}, holdout: [{', '.join(holdout[n])}]}}" if n in holdout else n for n in tasks)
    path.write_text(f"setting: {setting}\ntasks: [{entries}]\noptions: {{steps: 1, val_size: 16}}\n")
    return str(path)


def words_of(batch) -> list[tuple]:
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


class Memoriser(Method):
    log: list = []  # (task being trained, index given to predict, id of the head it read), per call

    def begin_task(self, ctx):
        self.current = ctx.task
        split = ctx.train_data[ctx.task]
        batch = split.batch(torch.arange(len(split)))
        self.heads[ctx.task].memory = dict(zip(words_of(batch), batch["label"].tolist()))

    def predict(self, batch, t):
        head = self.heads[t]
        Memoriser.log.append((self.current, t, id(head)))
        n = self.tasks[t].n_classes
        out = torch.arange(n, dtype=torch.float32).repeat(len(batch["label"]), 1)
        for row, key in enumerate(words_of(batch)):
            if key in head.memory:
                out[row, head.memory[key]] = n
        return out.to(batch["label"].device)


def expected_matrix(tasks: dict[str, dict[str, str]], setting: str, holdout: dict[str, list[str]] = {},
                    split: str = "test") -> list[list]:
    """Memoriser's score (%) on task j's `split` after task i (lower triangle; None above and, for
    the novel split, where task j holds nothing out): in
    `task` task j's own head, whose unknown words go to task j's last label; else the shared head
    of task i, whose unknown words go to the last label of the union seen through task i (labels in
    order of first appearance)."""
    names = list(tasks)
    union = list(dict.fromkeys(label for name in names for label in tasks[name].values()))
    out = []
    for i in range(len(names)):
        seen = {label for name in names[:i + 1] for label in tasks[name].values()}
        row = []
        for j, name in enumerate(names):
            if j > i or (split == "novel" and name not in holdout):
                row.append(None)
                continue
            words = [w for w in tasks[name] if (w in holdout.get(name, [])) == (split == "novel")]
            head = names[j] if setting == "task" else names[i]
            trained = {w: label for w, label in tasks[head].items() if w not in holdout.get(head, [])}
            own = list(dict.fromkeys(tasks[name].values()))  # task-IL: task j's labels, in its order
            fallback = own[-1] if setting == "task" else max(seen, key=union.index)
            right = sum(TEST_COPIES[w] for w in words if trained.get(w, fallback) == tasks[name][w])
            row.append(100.0 * right / sum(TEST_COPIES[w] for w in words))
        out.append(row)
    return out


def approx_matrix(rows: list[list]):
    """pytest.approx for a matrix with None cells (approx does not nest)."""
    import pytest
    return [[None if v is None else pytest.approx(v) for v in row] for row in rows]
