"""Image-only: handwritten digits bundled with scikit-learn (1,797 real 8x8 scans, 10 classes),
upsampled to the backbone's image size; a fixed 500-image test split."""
import random
from functools import lru_cache

import numpy as np

from bench.registry import TASKS
from bench.task import Task

N_TEST = 500


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    order = list(range(len(d.target)))
    random.Random("digits-split").shuffle(order)
    images = (d.images * (255 / 16)).astype(np.uint8)
    return images, d.target, order


class DigitsTask(Task):
    def examples(self, split, data_root=None):
        images, targets, order = _digits()
        ids = order[-N_TEST:] if split == "test" else order[:-N_TEST]
        return [{"images": [images[k]], "image_ids": [f"digits/{k}"], "text": "", "label": int(targets[k])} for k in ids]


TASKS.register("digits")(lambda: DigitsTask("digits", "image", [str(k) for k in range(10)]))
