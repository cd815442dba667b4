"""Generated data in CLiMB's layout (its DATA_DOWNLOAD.md `--climb_data_dir`, what tasks/climb.py
reads) for scale tests: all four upstream tasks at a chosen fraction of the real counts, images at
the datasets' typical sizes, and the odd images real dumps contain (grey, palette, transparent,
CMYK, 16-bit PNG content behind a `.jpg` name, EXIF-rotated, 1x1, extreme aspect ratios, a few
thousand pixels wide). Pictures are synthetic (a gradient and a few boxes), questions and labels
random: the data exercises size, memory and speed, it teaches nothing. Deterministic by seed.

    .venv/bin/python tools/make_climb_data.py OUT [--fraction 0.01] [--seed 0] [--odd 0.02]
    .venv/bin/python tools/make_climb_data.py OUT --tasks vqav2 --vqa-questions 2500 --vqa-images 500
"""
import argparse
import json
import pickle
import random
import sys
from pathlib import Path

import numpy as np

# The real datasets' sizes (train, test split as CLiMB reports it): examples and distinct images.
REAL = {
    "vqav2": {"train": (443_757, 82_783), "test": (214_354, 40_504)},  # questions, COCO images (train2014, val2014)
    "nlvr2": {"train": (86_373, 2 * 32_000), "test": (6_982, 2 * 2_600)},  # statements, images (two per pair)
    "snli_ve": {"train": (529_527, 29_783), "test": (17_858, 1_000)},  # hypotheses, Flickr30k images
    "vcr": {"train": (212_923, 80_000), "test": (26_534, 9_900)},  # Q->A questions, movie frames
}
TEST_TAG = {"vqav2": "val", "nlvr2": "dev", "snli_ve": "dev", "vcr": "val"}
# typical sizes (width, height) of each dataset's images, drawn uniformly
SIZES = {"vqav2": [(640, 480), (640, 427), (480, 640), (500, 375), (640, 640), (612, 612)],
         "nlvr2": [(800, 600), (1024, 768), (500, 333), (1280, 960), (300, 400), (2048, 1536)],
         "snli_ve": [(500, 375), (500, 333), (333, 500), (375, 500), (500, 400)],
         "vcr": [(1920, 1080), (1280, 720), (1920, 800), (1024, 576), (1920, 1040)]}
ODD_SIZES = [(1, 1), (2, 3), (3, 400), (600, 4), (3000, 2000)]
ODD_MODES = ["L", "P", "P-transparent", "RGBA", "LA", "CMYK", "I;16", "1", "exif"]
VQA_ANSWERS = 3_129  # the ViLT/CLiMB answer vocabulary's size (ans2label.pkl)
WORDS = ("what is the color of man woman dog cat car table left right picture two red blue green "
         "many how person holding standing near there are in on a an one image both contain").split()


def picture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8: a colour gradient with a few filled boxes (compresses like a photo, not like noise)."""
    w, h = size
    a, b = rng.integers(0, 256, (2, 3))
    t = (np.arange(w, dtype=np.float32) / max(1, w - 1))[None, :, None]
    out = np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8).copy()
    for _ in range(3):
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        out[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    return out


def write_image(path: Path, size: tuple[int, int], rng: np.random.Generator, mode: str = "RGB") -> None:
    """An image of `size` in `mode` (see ODD_MODES) at `path`. JPEG cannot hold every mode: those
    are written as PNG under the `.jpg` name, as scraped datasets have them."""
    from PIL import Image
    im = Image.fromarray(picture(size, rng))
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    extra = {}
    if mode == "exif":  # stored sideways, EXIF says rotate 90 degrees clockwise to view (orientation 6)
        im = im.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        extra["exif"] = exif
        fmt = "JPEG"
    elif mode == "P-transparent":
        im = im.convert("P")
        extra["transparency"] = 0
        fmt = "PNG"
    elif mode == "I;16":
        grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
        im = Image.fromarray(grey)  # uint16 -> mode I;16
        fmt = "PNG"
    elif mode == "CMYK":
        im = im.convert("CMYK")
        fmt = "JPEG"
    elif mode != "RGB":
        im = im.convert(mode)
        if mode in ("RGBA", "LA"):
            alpha = np.asarray(im.getchannel("A")).copy()
            alpha[: max(1, size[1] // 2)] = 0  # the top half transparent
            im.putalpha(Image.fromarray(alpha))
        if fmt == "JPEG" and mode not in ("L", "CMYK"):
            fmt = "PNG"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}), **extra)


class Images:
    """Writes a dataset's images: typical sizes, and a fraction `odd` of odd ones (size and mode
    drawn from ODD_SIZES / ODD_MODES; the first two images of every dataset are always odd)."""

    def __init__(self, sizes: list, odd: float, rng: np.random.Generator):
        self.sizes, self.odd, self.rng, self.count = sizes, odd, rng, 0

    def write(self, path: Path) -> None:
        odd = self.count < 2 or self.rng.random() < self.odd
        if odd:
            size = ODD_SIZES[self.rng.integers(len(ODD_SIZES))]
            mode = ODD_MODES[self.rng.integers(len(ODD_MODES))]
        else:
            size, mode = self.sizes[self.rng.integers(len(self.sizes))], "RGB"
        self.count += 1
        write_image(path, size, self.rng, mode)


def scaled(task: str, split: str, fraction: float) -> tuple[int, int]:
    n, m = REAL[task][split]
    return max(2, round(n * fraction)), max(2, round(m * fraction))


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def vqav2(root: Path, counts: dict, odd: float, seed: int) -> None:
    """vqav2/ questions + annotations (10 answers each, Zipf-distributed over the vocabulary),
    ans2label.pkl; ms-coco/images/<id>.jpg."""
    rng, np_rng = random.Random(f"{seed}-vqav2"), np.random.default_rng([seed, 1])
    answers = [f"answer{k}" for k in range(VQA_ANSWERS)]
    weights = 1 / np.arange(1, VQA_ANSWERS + 1)
    weights /= weights.sum()
    images = Images(SIZES["vqav2"], odd, np_rng)
    first_image = {"train": 1, "test": 10_000_000}
    for split, (n_q, n_img) in counts.items():
        tag = f"{TEST_TAG['vqav2'] if split == 'test' else 'train'}2014"
        ids = [first_image[split] + k for k in range(n_img)]
        for image_id in ids:
            images.write(root / "ms-coco" / "images" / f"{image_id:012d}.jpg")
        questions, annotations = [], []
        drawn = np_rng.choice(VQA_ANSWERS, size=(n_q, 10), p=weights)
        for k in range(n_q):
            qid, image_id = first_image[split] * 10 + k, ids[k % n_img]
            given = [answers[a] for a in drawn[k]]
            questions.append({"image_id": image_id, "question": sentence(rng) + "?", "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what",
                                "answer_type": "other", "multiple_choice_answer": max(set(given), key=given.count),
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                            for j, a in enumerate(given)]})
        write_json(root / "vqav2" / f"v2_OpenEnded_mscoco_{tag}_questions.json", {"questions": questions})
        write_json(root / "vqav2" / f"v2_mscoco_{tag}_annotations.json", {"annotations": annotations})
    with open(root / "vqav2" / "ans2label.pkl", "wb") as f:
        pickle.dump({a: k for k, a in enumerate(answers)}, f)


def nlvr2(root: Path, counts: dict, odd: float, seed: int) -> None:
    """nlvr2/data/<train|dev>.json (JSON lines) and nlvr2/images/<train|dev>/<pair>-img<0|1>.png."""
    rng, images = random.Random(f"{seed}-nlvr2"), Images(SIZES["nlvr2"], odd, np.random.default_rng([seed, 2]))
    for split, (n, n_img) in counts.items():
        tag = TEST_TAG["nlvr2"] if split == "test" else "train"
        pairs = max(1, n_img // 2)
        for p in range(pairs):
            for side in (0, 1):
                images.write(root / "nlvr2" / "images" / tag / f"{tag}-{p}-0-img{side}.png")
        write_jsonl(root / "nlvr2" / "data" / f"{tag}.json",
                    ({"identifier": f"{tag}-{k % pairs}-0-{k}", "sentence": sentence(rng),
                      "label": rng.choice(["True", "False"])} for k in range(n)))


def snli_ve(root: Path, counts: dict, odd: float, seed: int) -> None:
    """snli-ve/snli_ve_<train|dev>.jsonl and flickr30k/flickr30k_images/<id>.jpg."""
    rng, images = random.Random(f"{seed}-snli_ve"), Images(SIZES["snli_ve"], odd, np.random.default_rng([seed, 3]))
    first = {"train": 1_000_000_000, "test": 2_000_000_000}
    for split, (n, n_img) in counts.items():
        ids = [first[split] + k for k in range(n_img)]
        for image_id in ids:
            images.write(root / "flickr30k" / "flickr30k_images" / f"{image_id}.jpg")
        tag = TEST_TAG["snli_ve"] if split == "test" else "train"
        write_jsonl(root / "snli-ve" / f"snli_ve_{tag}.jsonl",
                    ({"Flickr30K_ID": str(ids[k % n_img]), "sentence2": sentence(rng),
                      "gold_label": rng.choice(["entailment", "neutral", "contradiction"])} for k in range(n)))


def vcr(root: Path, counts: dict, odd: float, seed: int) -> None:
    """vcr/vcr1annots/<train|val>.jsonl and vcr/vcr1images/<movie>/<frame>.jpg (the official layout,
    which tasks/climb.py reads when CLiMB's drawn_images/ is absent)."""
    rng, images = random.Random(f"{seed}-vcr"), Images(SIZES["vcr"], odd, np.random.default_rng([seed, 4]))
    for split, (n, n_img) in counts.items():
        tag = TEST_TAG["vcr"] if split == "test" else "train"
        frames = [f"movie_{k % 50}/{tag}_{k}.jpg" for k in range(n_img)]
        for fn in frames:
            images.write(root / "vcr" / "vcr1images" / fn)

        def record(k):
            objects = ["person", "person", "car"]
            return {"annot_id": f"{tag}-{k}", "img_fn": frames[k % n_img], "objects": objects,
                    "question": [*sentence(rng, 5).split(), [0], "?"],
                    "answer_choices": [[[rng.randrange(3)], *sentence(rng, 6).split()] for _ in range(4)],
                    "answer_label": rng.randrange(4)}
        write_jsonl(root / "vcr" / "vcr1annots" / f"{tag}.jsonl", (record(k) for k in range(n)))


WRITERS = {"vqav2": vqav2, "nlvr2": nlvr2, "snli_ve": snli_ve, "vcr": vcr}


def generate(root: Path, fraction: float = 0.01, seed: int = 0, odd: float = 0.02, tasks=tuple(WRITERS),
             counts: dict | None = None) -> Path:
    """Write the data under `root`; `counts` ({task: {split: (examples, images)}}) overrides the
    fraction for the tasks it names."""
    root = Path(root)
    for task in tasks:
        if task not in WRITERS:
            raise SystemExit(f"error: unknown task '{task}' (known: {', '.join(WRITERS)})")
        per_split = (counts or {}).get(task) or {s: scaled(task, s, fraction) for s in ("train", "test")}
        WRITERS[task](root, per_split, odd, seed)
    return root


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="make_climb_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--fraction", type=float, default=0.01, help="of the real example and image counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--odd", type=float, default=0.02, help="fraction of odd images (modes, sizes)")
    p.add_argument("--tasks", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    p.add_argument("--vqa-questions", type=int, help="VQAv2 train questions (overrides the fraction; test: a fifth)")
    p.add_argument("--vqa-images", type=int, help="VQAv2 train images (with --vqa-questions)")
    args = p.parse_args(argv)
    counts = None
    if args.vqa_questions:
        images = args.vqa_images or max(2, args.vqa_questions // 5)
        counts = {"vqav2": {"train": (args.vqa_questions, images),
                            "test": (max(2, args.vqa_questions // 5), max(2, images // 5))}}
    generate(args.out, args.fraction, args.seed, args.odd, args.tasks, counts)
    print(f"wrote {', '.join(args.tasks)} under {args.out}")


if __name__ == "__main__":
    sys.exit(main())
