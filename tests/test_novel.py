"""The compositional test's splits (VQACL's novel compositions, bench/novel.py): no held-out
(question type, concept) pair reaches training, validation or the usual test split, and the novel
split holds them. Checked on the examples themselves against each image's shape and colour read
from its pixels, which the task never looks at (it reads concepts from the questions)."""
from functools import lru_cache

import numpy as np
import pytest

from bench.config import TaskPlan
from bench.errors import BenchError
from bench.novel import planned_task


def plan(name: str, holdout) -> TaskPlan:
    return TaskPlan(name=name, steps=1, train_cap=None, test_cap=None, val_size=64, shots=None, lr=None, holdout=holdout)


@lru_cache(maxsize=None)
def drawn(path: str) -> tuple[bool, tuple]:
    """(is the shape a circle, its median RGB) from the image: a disc fills pi r^2 of the pixels
    within r of its centre and less than 95 % of its bounding box (a square fills all of it)."""
    from PIL import Image
    x = np.asarray(Image.open(path).convert("RGB")).astype(int)
    mask = np.abs(x - x[0, 0]).sum(-1) > 60  # the background is one near-white colour
    ys, xs = np.nonzero(mask)
    radius2 = ((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max()
    box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    circle = mask.sum() / (np.pi * radius2) > 0.85 and mask.sum() / box < 0.95
    return bool(circle), tuple(np.median(x[mask], axis=0))


def is_circle(ex) -> bool:
    return drawn(ex["images"][0])[0]


def is_blue(ex) -> bool:
    r, g, b = drawn(ex["images"][0])[1]
    return b > 200 and r < 100 and g < 100


def raw_questions(split: str, answers) -> list[tuple[str, str]]:
    """(question, image path) of every easy-VQA question of `split` whose answer is in `answers`."""
    import easy_vqa
    texts, given, ids = easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    return [(q, paths[im]) for q, a, im in zip(texts, given, ids) if a in answers]


@pytest.mark.parametrize("name,concept,about", [("vqa_color", "circle", is_circle), ("vqa_shape", "blue", is_blue)])
def test_held_out_pairs_are_only_in_the_novel_split(name, concept, about):
    task = planned_task(plan(name, [concept]))
    splits = {s: task.load(s, val_size=64) for s in ("train", "val", "test", "novel")}
    for s in ("train", "val", "test"):
        assert splits[s] and not any(about(ex) for ex in splits[s]), f"{concept} in {s}"
    assert splits["novel"] and all(about(ex) for ex in splits["novel"])
    # the novel split is easy-VQA's test questions of this type about the concept, as the pixels
    # say, but for those whose image no question describes (the task cannot tell what they are about)
    key = lambda ex: (ex["text"], ex["images"][0])  # noqa: E731
    pairs = [p for p in raw_questions("test", task.labels) if about({"images": [p[1]]})]
    unknown = {key(ex) for ex in planned_task(plan(name, None)).examples("test") if ex["concept"] is None}
    novel = sorted(map(key, splits["novel"]))
    assert novel == sorted(p for p in pairs if p not in unknown)
    assert len(novel) >= 0.85 * len(pairs)  # few are unknown
    # and nothing else was lost: every raw question of the type is in exactly one split (or unknown)
    for source, parts in (("train", ("train", "val")), ("test", ("test", "novel"))):
        kept = sorted(key(ex) for s in parts for ex in splits[s])
        everything = planned_task(plan(name, None)).examples(source)
        assert kept == sorted(key(ex) for ex in everything if ex["concept"] is not None)
        assert len(everything) == len(raw_questions(source, task.labels))


def test_a_task_without_holdout_is_unchanged():
    task = planned_task(plan("vqa_color", None))
    assert not task.holdout
    with pytest.raises(ValueError, match="novel"):
        task.load("novel")


@pytest.mark.parametrize("name,holdout,message", [
    ("vqa_color", ["circel"], "unknown concept of task 'vqa_color' in its holdout 'circel'; did you mean 'circle'"),
    ("vqa_color", ["circle", "rectangle", "triangle"], "leaves no concept to train on"),
    ("digits", ["circle"], "task 'digits' has no concepts to hold out"),
    ("vqa_shape", [3], "holdout must be a list of concept names"),
])
def test_bad_holdout_is_one_clear_error(name, holdout, message):
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        planned_task(plan(name, holdout))
