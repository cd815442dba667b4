"""The Task contract: what a task is, how its examples look, how it is scored."""
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.columns import Examples

KINDS = ("vl", "text", "image")


@dataclass
class Task:
    """One task of a sequence.

    Examples returned by `load` are dicts ``{"images": [...], "text": str | [str], "label": int | [float]}``
    (a list of strings is a multiple-choice example: one string per choice, label = right index;
    a soft label may also be a sparse ``{class index: score}`` dict);
    an image is a path, a PIL image or an HxW(xC) uint8 array, and may come with a stable
    ``"image_ids"`` list used as cache key (paths are keys by themselves).
    """

    name: str
    kind: str  # "vl" (image+text), "text" (no image), "image" (no text)
    labels: list[str]
    n_images: int = 1
    loss: str = "ce"  # "ce" or "soft_bce" (VQA soft scores)
    metric: str = "accuracy"  # "accuracy" or "vqa_score"
    chance: float = field(default=None)  # % ; defaults to uniform guessing
    choices: int = 0  # multiple choice: text is a list of `choices` strings, label the right index
    # Compositional test (VQACL, bench/novel.py): the concepts an example may be about (its
    # "concept" key: for a colour question, the shape it asks about), and those held out: their
    # examples are in no split but "novel" (from the official test data).
    concepts: list[str] = field(default_factory=list)
    holdout: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if self.chance is None:
            self.chance = 0.0 if self.metric == "vqa_score" else 100.0 / len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    # Subclasses implement `examples(split, data_root)` for split in {"train", "test"} and may
    # override `val_from_train` to use an official validation split instead.
    def examples(self, split: str, data_root: str | None) -> list[dict]:
        raise NotImplementedError

    def prepare(self, data_root: str | None) -> None:
        """Called by the runner before the method builds its heads: a task whose label space lives
        in its files (an answer vocabulary, class folders) reads it here."""

    def load(self, split: str, limit: int | None = None, shots: int | float | None = None,
             seed: int = 0, data_root: str | None = None, val_size: int = 200) -> list[dict]:
        """Examples of `split` ("train", "val", "test", or "novel" with a holdout).

        "val" is carved from the official training data with a fixed shuffle, disjoint from
        "train", so model selection never sees the reported test split. `shots` keeps a
        fraction (< 1) of the training data or k examples per class (>= 1), seeded. With a
        `holdout`, "novel" is the official test examples about the held-out concepts, the other
        splits hold none of them, and an example whose concept is unknown is in no split (it
        might be about a held-out one).
        """
        if split not in ("train", "val", "test", "novel") or (split == "novel" and not self.holdout):
            raise ValueError(f"split must be train/val/test (or novel with a holdout), got {split!r}")
        source = self.examples("test" if split in ("test", "novel") else "train", data_root)
        if not isinstance(source, Sequence):
            source = list(source)
        # positions, not examples, are filtered, shuffled and sampled: the same draws (they depend
        # on the length only), without copying the examples
        order = list(range(len(source)))
        if self.holdout:
            order = [i for i in order if source[i].get("concept") is not None
                     and (source[i]["concept"] in self.holdout) == (split == "novel")]
        if split in ("train", "val"):
            random.Random(f"val-split-{self.name}").shuffle(order)
            n_val = min(val_size, len(order) // 5)
            order = order[:n_val] if split == "val" else order[n_val:]
            if split == "train" and shots is not None:
                order = low_shot(order, shots, seed, label=lambda i: source[i]["label"])
        if limit is not None and len(order) > limit:
            order = random.Random(f"cap-{self.name}-{split}").sample(order, limit)
        return source.take(order) if isinstance(source, Examples) else [source[i] for i in order]


def majority_class(label) -> int:
    """The class of a label: itself, or the best-scored class of a soft label (list or sparse dict)."""
    if isinstance(label, int):
        return label
    if isinstance(label, dict):
        return max(sorted(label), key=label.__getitem__) if label else -1
    return max(range(len(label)), key=label.__getitem__)


def low_shot(data: list, shots: int | float, seed: int, label=lambda ex: ex["label"]) -> list:
    """A fraction of the data (shots < 1) or k examples per class (shots >= 1, the class of
    `label(item)`), seeded."""
    rng = random.Random(f"shots-{seed}")
    if shots < 1:
        return rng.sample(data, max(1, round(len(data) * shots)))
    by_class: dict = {}
    for ex in data:
        by_class.setdefault(majority_class(label(ex)), []).append(ex)
    picked = [ex for key in sorted(by_class) for ex in rng.sample(by_class[key], min(int(shots), len(by_class[key])))]
    rng.shuffle(picked)
    return picked
