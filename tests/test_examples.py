"""Per-example scores (bench/examples.py): the vectors give back the cell scores that
bench.evaluate.score computes, and examples.npz round-trips, is written whole, and is never read
with pickle or half-read when damaged."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.context import TaskContext
from bench.data import EncodedSplit, load_split
from bench.errors import BenchError
from bench.evaluate import per_example_scores, score
from bench.examples import EXAMPLES_FILE, RunExamples, cell_score
from bench.registry import BACKBONES, METHODS, TASKS
from bench.task import Task


@pytest.fixture(scope="module")
def trained_finetune(cache_dir):
    """finetune on the toy backbone after a few steps on vqa_color (so predictions vary), and
    vqa_color's test split."""
    backbone = BACKBONES.get("toy")()
    task = TASKS.get("vqa_color")()
    train = load_split(backbone, task, "train", cache_dir, limit=96, val_size=16)
    test = load_split(backbone, task, "test", cache_dir, limit=64, val_size=16)
    cls = METHODS.get("finetune")
    torch.manual_seed(0)
    method = cls(backbone, [task], cls.HParams())
    method.setup()
    ctx = TaskContext(task=0, tasks=(0,), train_data=[train], seed=0, lr=cls.lr, head_lr=cls.head_lr, precision="fp32")
    opt = torch.optim.SGD([p for g in method.trainable_parameters(0, ctx) for p in g["params"]], lr=0.05)
    for batch in train.batches(16, torch.Generator().manual_seed(0)):
        opt.zero_grad()
        method.loss(batch, 0, ctx).backward()
        opt.step()
    return method, test


def test_accuracy_vector_gives_back_score_exactly(trained_finetune):
    method, test = trained_finetune
    values = per_example_scores(method, 0, test, batch_size=16)
    assert values.dtype == bool and values.shape == (len(test),)
    assert 0 < values.sum() < len(values)  # predictions vary: the test is not won by a constant
    assert cell_score(values) == score(method, 0, test, batch_size=16)


def test_accuracy_vector_is_each_examples_correctness(trained_finetune):
    method, test = trained_finetune
    with torch.no_grad():  # oracle: one forward of the whole split, compared example by example
        method.net.eval()
        pred = method.predict(test.batch(torch.arange(len(test))), 0).argmax(-1)
        method.net.train()
    expected = [bool(p == y) for p, y in zip(pred.tolist(), test.fields["label"].tolist())]
    assert per_example_scores(method, 0, test, batch_size=len(test)).tolist() == expected


class FixedLogits:
    """A stub method whose prediction for example k is logits[k] (k: its "row" field)."""

    def __init__(self, logits: torch.Tensor, metric: str):
        self.net, self.logits = nn.Module(), logits
        self.tasks = [Task("stub", "text", [str(c) for c in range(logits.shape[1])], metric=metric)]

    def activate(self, t, ctx):
        pass

    def predict(self, batch, t):
        return self.logits[batch["row"]]


def test_vqa_score_vector_is_the_soft_score_of_the_predicted_answer():
    g = torch.Generator().manual_seed(0)
    n, classes = 50, 5
    labels = torch.randint(0, 4, (n, classes), generator=g).float() / 3  # min(#humans/3, 1): thirds
    logits = torch.randn(n, classes, generator=g)
    data = EncodedSplit({"row": torch.arange(n), "label": labels}, None)
    method = FixedLogits(logits, "vqa_score")
    values = per_example_scores(method, 0, data, batch_size=8)
    expected = [float(labels[k, logits[k].argmax()]) for k in range(n)]
    assert values.dtype == np.float32 and values.tolist() == expected
    assert cell_score(values) == pytest.approx(score(method, 0, data, batch_size=8), abs=1e-4)  # score sums in float32


def test_round_trip_keeps_every_cell_its_dtype_and_the_split_keys(tmp_path):
    rng = np.random.default_rng(0)
    run = RunExamples()
    cells = {(0, 0): rng.random(30) < 0.5, (1, 0): rng.random(30) < 0.5,
             (1, 1): (rng.integers(0, 4, 12) / 3).astype(np.float32)}
    for (i, j), v in cells.items():
        run.record(i, j, v, split_key=f"task{j}/test-abc")
    run.save(tmp_path)
    back = RunExamples.load(tmp_path)
    assert set(back.cells) == set(cells)
    for key, v in cells.items():
        assert back.cells[key].dtype == v.dtype and np.array_equal(back.cells[key], v)
    assert back.splits == {0: "task0/test-abc", 1: "task1/test-abc"}
    assert [p.name for p in tmp_path.iterdir()] == [EXAMPLES_FILE]  # no temp file left behind


def test_agrees_with_its_score_matrix_only(tmp_path):
    run = RunExamples()
    run.record(0, 0, np.array([True, False, True, True]))
    run.record(1, 0, np.array([True, False, False, False]))
    run.record(1, 1, np.array([1, 2 / 3, 0], dtype=np.float32))
    assert run.agrees_with([[75.0, None], [25.0, 100 * (5 / 3) / 3]])
    assert not run.agrees_with([[75.0, None], [50.0, 100 * (5 / 3) / 3]])  # a score its vector does not give
    assert not run.agrees_with([[75.0, 10.0], [25.0, 100 * (5 / 3) / 3]])  # a score without its vector
    assert not run.agrees_with([[75.0]])  # vectors of cells the run never scored


def test_record_refuses_what_cannot_be_stored():
    run = RunExamples()
    with pytest.raises(BenchError, match="bool or float32"):
        run.record(0, 0, np.array([0.5, 1.0]))  # float64: the runner must pass what per_example_scores gives
    run.record(0, 0, np.array([True, False]))
    with pytest.raises(BenchError, match="has 3 examples"):
        run.record(1, 0, np.array([True, False, True]))


class Touches:
    """Unpickling it creates a file: what a crafted examples.npz could run instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_damaged_or_pickled_file_is_not_read(tmp_path):
    run = RunExamples()
    run.record(0, 0, np.array([True, False]))
    run.save(tmp_path)
    path = tmp_path / EXAMPLES_FILE
    path.write_bytes(path.read_bytes()[:40])
    assert RunExamples.load(tmp_path) is None
    marker = tmp_path / "unpickled"
    np.savez(path, cell_0_0=np.array([Touches(marker)], dtype=object), splits=np.array([""]))
    assert RunExamples.load(tmp_path) is None
    assert not marker.exists()  # the object array was never unpickled
    assert RunExamples.load(tmp_path / "missing") is None
