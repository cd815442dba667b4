"""easy-VQA (PyPI `easy-vqa`, real VQA data: 64 px images, 13 answers) split by question type into
tasks of the embedded default sequence, plus a text-only task on the same questions."""
import re
from functools import lru_cache

from bench.errors import BenchError
from bench.registry import TASKS
from bench.task import Task

COLORS = ["red", "green", "blue", "black", "gray", "teal", "brown", "yellow"]
SHAPES = ["circle", "rectangle", "triangle"]


@lru_cache(maxsize=2)
def _questions(split: str):
    try:
        import easy_vqa
    except ImportError:
        raise BenchError("missing package 'easy-vqa': run `make venv`") from None
    texts, answers, image_ids = easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    return list(zip(texts, answers, image_ids)), paths


@lru_cache(maxsize=2)
def image_facts(split: str) -> dict[int, set[str]]:
    """The colour and shape words each image's questions reveal (easy-VQA ships no image
    annotations): an answer, a word a wh-question mentions ("what color is the circle?"), or the
    word of a yes/no question that asserts it (answer yes, or no to a negated question). Each
    image has one shape of one colour; some images' questions reveal only one of the two."""
    facts: dict[int, set[str]] = {}
    for q, a, im in _questions(split)[0]:
        tokens = re.findall(r"[a-z]+", q)
        words = {w for w in tokens if w in COLORS or w in SHAPES}
        asserted = a not in ("yes", "no") or (a == "yes") != ("not" in tokens or "no" in tokens)
        facts.setdefault(im, set()).update(({a} if a not in ("yes", "no") else set()) | (words if asserted else set()))
    return facts


class EasyVQATask(Task):
    """Questions whose answer lies in `labels`; image + question -> answer. With `concepts` (the
    other attribute: shapes for colour questions), each example carries its image's one as its
    "concept" (None where no question of the image reveals it), for the compositional test."""

    def examples(self, split, data_root=None):
        questions, paths = _questions(split)
        index = {a: k for k, a in enumerate(self.labels)}
        facts = image_facts(split) if self.concepts else {}
        out = []
        for q, a, im in questions:
            if a in index:
                ex = {"images": [paths[im]], "image_ids": [f"easyvqa/{split}/{im}"], "text": q, "label": index[a]}
                if self.concepts:
                    ex["concept"] = next((c for c in self.concepts if c in facts[im]), None)
                out.append(ex)
        return out


class EasyVQAMentionTask(Task):
    """Text only: which colour or shape does a yes/no question mention? (no image is fed)"""

    def examples(self, split, data_root=None):
        questions, _ = _questions(split)
        index = {w: k for k, w in enumerate(self.labels)}
        out = []
        for q, a, _ in questions:
            if a in ("yes", "no"):
                words = [w for w in re.findall(r"[a-z]+", q) if w in index]
                out.append({"images": [], "text": q, "label": index[words[0]]})
        return out


class EasyVQANegationTask(Task):
    """Text only: which colour or shape a yes/no question mentions, and whether it asks about its
    absence ("is there not a red shape?", "is no circle present?"): 11 words x 2 = 22 classes. It
    replaces `text_mention` in the default sequence, which every method solved (100 %)."""

    def examples(self, split, data_root=None):
        questions, _ = _questions(split)
        words = COLORS + SHAPES
        out = []
        for q, a, _ in questions:
            if a in ("yes", "no"):
                tokens = re.findall(r"[a-z]+", q)
                word = next(w for w in tokens if w in words)
                negated = "not" in tokens or "no" in tokens
                out.append({"images": [], "text": q, "label": 2 * words.index(word) + negated})
        return out


TASKS.register("vqa_color")(lambda: EasyVQATask("vqa_color", "vl", COLORS, concepts=SHAPES))
TASKS.register("vqa_shape")(lambda: EasyVQATask("vqa_shape", "vl", SHAPES, concepts=COLORS))
TASKS.register("vqa_yesno")(lambda: EasyVQATask("vqa_yesno", "vl", ["yes", "no"]))
TASKS.register("text_mention")(lambda: EasyVQAMentionTask("text_mention", "text", COLORS + SHAPES, n_images=0))
TASKS.register("text_negation")(lambda: EasyVQANegationTask(
    "text_negation", "text", [f"{w}{s}" for w in COLORS + SHAPES for s in ("", " absent")], n_images=0))
