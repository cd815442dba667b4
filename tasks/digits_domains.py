"""Image-only domains of scikit-learn's handwritten digits (tasks/digits.py): the same ten classes
and the same train / test split under a fixed image transformation each, for the domain-incremental
sequence (`default_domain`): the label space stays, the input distribution moves."""
import numpy as np

from bench.registry import TASKS
from tasks.digits import DigitsTask

NOISE_STD = 32  # grey levels (of 255): at 64 a single task at this budget stayed at chance (13.8 %, seed 0)


def rotated(image: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(image).copy()


def inverted(image: np.ndarray, k: int) -> np.ndarray:
    return 255 - image


def noisy(image: np.ndarray, k: int) -> np.ndarray:
    """Gaussian noise seeded by the image's index: the same noisy image in every run."""
    noise = np.random.default_rng(k).normal(0, NOISE_STD, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


DOMAINS = {"rot90": rotated, "inverted": inverted, "noise": noisy}
# image ids key the image feature cache (bench/cache.py): a changed transformation needs a new one
IMAGE_TAGS = {"rot90": "rot90", "inverted": "inverted", "noise": f"noise{NOISE_STD}"}


class DigitsDomainTask(DigitsTask):
    def examples(self, split, data_root=None):
        domain = self.name.removeprefix("digits_")
        out = super().examples(split, data_root)
        for ex in out:
            k = int(ex["image_ids"][0].removeprefix("digits/"))
            ex["images"], ex["image_ids"] = [DOMAINS[domain](ex["images"][0], k)], [f"digits-{IMAGE_TAGS[domain]}/{k}"]
        return out


for _name in DOMAINS:
    TASKS.register(f"digits_{_name}")(lambda name=f"digits_{_name}": DigitsDomainTask(name, "image", [str(k) for k in range(10)]))
