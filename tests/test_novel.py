"""The compositional test's splits (VQACL's novel compositions, bench/novel.py): no held-out
(question type, concept) pair reaches training, validation or the usual test split, and the novel
split holds them. Checked on the examples themselves against each image's shape and colour read
from its pixels, which the task never looks at (it reads concepts from the questions)."""
from functools import lru_cache
from statistics import mean

import numpy as np
import pytest

from bench.config import TASK_PARTS, TaskPlan, plan_tasks
from bench.errors import BenchError
from bench.novel import planned_task
from conftest import plugin, run_method
from word_tasks import CLASSES, DOMAINS, TEST_COPIES, Memoriser, approx_matrix, expected_matrix, register, sequence_file


def plan(name: str, holdout) -> TaskPlan:
    return TaskPlan(name=name, steps=1, train_cap=None, test_cap=None, val_size=64, shots=None, lr=None, holdout=holdout)


@lru_cache(maxsize=None)
def drawn(path: str) -> tuple[bool, tuple]:
    """(is the shape a circle, its median RGB) from the image, by the share of its bounding box it
    fills: pi/4 for a disc, 1/2 for a triangle, all for a rectangle. With easy-VQA's anti-aliased
    edges, over all 5,000 images: triangles 0.51-0.69, circles 0.73-0.90, rectangles 0.91-1."""
    from PIL import Image
    x = np.asarray(Image.open(path).convert("RGB")).astype(int)
    background = np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]), axis=0)  # a shape may touch an edge
    mask = np.abs(x - background).sum(-1) > 60
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return bool(0.7 < fill < 0.905), tuple(np.median(x[mask], axis=0))


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
    # and nothing else was lost: every known raw question of the type is in one split, but the
    # held-out ones of the training data
    for source, parts in (("train", ("train", "val")), ("test", ("test", "novel"))):
        kept = sorted(key(ex) for s in parts for ex in splits[s])
        everything = planned_task(plan(name, None)).examples(source)
        assert len(everything) == len(raw_questions(source, task.labels))
        assert kept == sorted(key(ex) for ex in everything
                              if ex["concept"] is not None and (source == "test" or not about(ex)))


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


def test_holdout_and_probe_enter_the_run_id(tmp_path):
    """One sequence file, edited: each holdout and probe list is another run."""
    from bench.config import resolve
    from bench.registry import METHODS
    path = tmp_path / "seq.yaml"
    ids, plans = {}, {}
    for name, text in {"plain": "tasks: [vqa_color]\n", "circle": "tasks: [{name: vqa_color, holdout: [circle]}]\n",
                       "triangle": "tasks: [{name: vqa_color, holdout: [triangle]}]\n",
                       "probe": "tasks: [vqa_color]\nprobe: [digits]\n"}.items():
        path.write_text(text)
        cfg = resolve("finetune", METHODS.get("finetune"), [], sequence=str(path))
        ids[name], plans[name] = cfg.run_id, [plan_tasks(cfg, part) for part in TASK_PARTS]
    assert len(set(ids.values())) == len(ids)
    # `base` gives what writing it out gives
    (tmp_path / "plain.yaml").write_text("tasks: [vqa_color]\n")
    path.write_text(f"base: {tmp_path / 'plain.yaml'}\nprobe: [digits]\n")
    cfg = resolve("finetune", METHODS.get("finetune"), [], sequence=str(path))
    assert cfg.run_id == ids["probe"] and [plan_tasks(cfg, part) for part in TASK_PARTS] == plans["probe"]


HOLDOUTS = {"class": (CLASSES, {"words_a": ["cat", "sun"], "words_d": ["green", "cat"]}),
            "domain": (DOMAINS, {"words_a": ["sun"], "words_c": ["red", "blue"]})}


@pytest.mark.parametrize("setting", ["class", "domain", "task"])
def test_novel_compositions_without_task_id_score_as_computed_by_hand(monkeypatch, setting, tmp_path, cache_dir):
    """VQACL's novel test without task ids: the novel split is scored as the test split is (union
    labels, predictions over the classes seen so far, index i for a method of one model), so a
    memorising method's N is computed by hand (tests/word_tasks.py): e.g. in `class` after task 0
    the unknown words go to z, the latest class seen, not to w, which is not seen yet (60 = 6/10)."""
    tasks, holdout = HOLDOUTS.get(setting, HOLDOUTS["class"])
    register(monkeypatch, tasks)
    plugin(monkeypatch, "memoriser", Memoriser)
    monkeypatch.setattr(Memoriser, "log", [])
    m = run_method("memoriser", tmp_path, cache_dir, sequence=sequence_file(tmp_path / "seq.yaml", setting, tasks, holdout))
    assert m["setting"] == setting and m["matrix"] == approx_matrix(expected_matrix(tasks, setting, holdout))
    N = expected_matrix(tasks, setting, holdout, "novel")
    assert m["novel"]["matrix"] == approx_matrix(N) and m["novel"]["tasks"] == list(holdout)
    assert m["novel"]["examples"] == {name: sum(TEST_COPIES[w] for w in words) for name, words in holdout.items()}
    assert m["novel"]["summary"]["novel_final"] == pytest.approx(mean(v for v in N[-1] if v is not None))
    if setting != "task":  # every prediction after task i, novel ones too, took index i
        assert {(trained, given) for trained, given, _ in Memoriser.log} == {(i, i) for i in range(len(tasks))}


