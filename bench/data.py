"""Encoded task data: texts tokenised and images passed through the frozen image encoder once,
cached on disk (image features per image, whole splits keyed by backbone encoding + task + split
options + loader code; see bench/cache.py), then served as tensor slices so the training loop has
no per-step Python data work.

A cached split is a directory of NumPy arrays (one per field), memory-mapped when read, and the
rows of the image store holding its distinct images (`image_rows.npy`, bench/cache.py
`ImageRows`): the images' encodings are on disk once, in the store's shards, and a batch reads
its own rows from them (pread, through the kernel's page cache, which workers share). The process
holds the batch, never a copy of the split, nor the pages of images earlier batches read. The data stays on the host;
`to(device)` makes each batch go there (pinned, non-blocking), so the device holds the model and
the batch in flight. Soft targets (VQA: a few scored answers of thousands) are stored sparse and
densified per batch. An image that cannot be decoded stops the encoding with one error naming it,
or, with `skip_bad_images`, its examples are dropped from the split and counted (`skipped`)."""
import dataclasses
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.cache import IMAGE_CHUNK, ImageFeatureStore, ImageRows, code_digest, image_key, safe_name
from bench.columns import Examples
from bench.errors import BenchError
from bench.images import BadImage, encode_readable
from bench.peak_memory import release_freed_heap
from bench.task import Task


@dataclass
class EncodedSplit:
    fields: dict  # per-example tensors, first dim N: text fields, "label", optional "image_index" [N, n_images]
    images: torch.Tensor | ImageRows | None  # [M, ...] frozen encodings of the distinct images (cached: store rows)
    derive: Callable[[dict], dict] | None = None  # extra fields computed per batch (an uncached frozen prefix)
    key: str | None = None  # names the split's content in the cache ("<task>/<split>-<digest>"); None: uncached
    n_classes: int | None = None  # set: "label" holds sparse soft targets, scores [N, K] of classes "label_classes"
    device: torch.device | None = None  # where batches are sent; None: where the data is
    skipped: dict | None = None  # with skip_bad_images: {"images", "examples" dropped, "first": an error}

    def __len__(self) -> int:
        return len(self.fields["label"])

    def batch(self, idx: torch.Tensor) -> dict:
        out = {k: v[idx] for k, v in self.fields.items()}
        if "image_index" in out:
            out["image_feats"] = self.images[out.pop("image_index")]
        if self.device is not None and self.device.type != "cpu":
            # host fields pinned (CUDA) and copied without a sync; fields already there (a frozen
            # prefix's states computed on the device) stay
            pin = self.device.type == "cuda"
            out = {k: (v.pin_memory() if pin else v).to(self.device, non_blocking=True) if v.device.type == "cpu" else v
                   for k, v in out.items()}
        if self.n_classes is not None:
            classes, scores = out.pop("label_classes"), out["label"]
            out["label"] = scores.new_zeros(len(scores), self.n_classes).scatter_add_(1, classes, scores)
        if self.derive is not None:
            out.update(self.derive(out))
        return out

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Batches in order, or shuffled with `generator`."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        order = order.to(self.fields["label"].device)
        for i in range(0, len(self), batch_size):
            yield self.batch(order[i:i + batch_size])

    def head(self, fraction: float) -> "EncodedSplit":
        """The first `fraction` of the examples (the split is already in a fixed random order)."""
        if fraction >= 1:
            return self
        n = max(1, round(len(self) * fraction))
        return dataclasses.replace(self, fields={k: v[:n] for k, v in self.fields.items()}, key=None)  # a subset: no key

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a batch is read from."""
        images = self.images.tensors() if isinstance(self.images, ImageRows) else [self.images]
        return [*self.fields.values(), *(x for x in images if x is not None)]

    def to(self, device) -> "EncodedSplit":
        """The split with its batches sent to `device` (its data stays where it is)."""
        return dataclasses.replace(self, device=torch.device(device))


def encode(backbone, task: Task, examples: list[dict], skip_bad: bool = False) -> EncodedSplit:
    """Token ids, labels and the features of the split's distinct images, without a cache."""
    fields, (keys, unique) = encode_examples(backbone, task, examples)
    images, skipped = None, None
    if keys:
        parts, bad = [], {}
        for i in range(0, len(unique), IMAGE_CHUNK):
            with hint_at_skipping():
                feats, failed = encode_readable(backbone.encode_images, unique[i:i + IMAGE_CHUNK], skip_bad)
            parts += [feats] if feats is not None else []
            bad.update((keys[i + j], error) for j, error in failed.items())
        fields, skipped = drop_unreadable(task, fields, keys, bad) if skip_bad else (fields, None)
        images = torch.cat(parts)
    return EncodedSplit(fields, images, n_classes=task.n_classes if "label_classes" in fields else None,
                        skipped=skipped)


@contextmanager
def hint_at_skipping():
    """An unreadable image's error says how to skip such images instead."""
    try:
        yield
    except BadImage as e:
        raise BadImage(f"{e}; --set skip_bad_images=true drops the examples of unreadable images and counts them "
                       "instead") from None


def drop_unreadable(task: Task, fields: dict, keys: list[str], bad: dict) -> tuple[dict, dict]:
    """`fields` without the examples that have an unreadable image (`bad`: {image key: error}), their
    image indices renumbered over the readable images, and what was dropped."""
    readable = torch.tensor([k not in bad for k in keys], dtype=torch.bool)
    index = fields["image_index"]
    keep = readable[index].all(1)
    if not keep.any():
        raise BenchError(f"task '{task.name}': every example of this split has an unreadable image "
                         f"(first: {next(iter(bad.values()))})")
    fields = {k: v[keep] for k, v in fields.items()}
    fields["image_index"] = (readable.cumsum(0) - 1)[fields["image_index"]]
    skipped = {"images": len(bad), "examples": int((~keep).sum()), **({"first": next(iter(bad.values()))} if bad else {})}
    return fields, skipped


def encode_examples(backbone, task: Task, examples: list[dict]) -> tuple[dict, tuple[list, list]]:
    """(per-example fields, (keys, images) of the split's distinct images, in first-use order)."""
    if not examples:
        raise BenchError(f"task '{task.name}' has no examples for this split (check data_root and caps)")
    texts = [ex.get("text") or "" for ex in examples] if task.kind != "image" else [""] * len(examples)
    if task.choices:  # one string per choice, encoded flat then viewed as [N, C, ...]
        if any(not isinstance(t, list) or len(t) != task.choices for t in texts):
            raise BenchError(f"task '{task.name}': every example needs a list of {task.choices} choice texts")
        flat = dict(backbone.encode_texts([c for t in texts for c in t]))
        fields = {k: v.view(len(texts), task.choices, *v.shape[1:]) for k, v in flat.items()}
    else:
        if any(not isinstance(t, str) for t in texts):
            raise BenchError(f"task '{task.name}': text must be a string (or set `choices` for multiple choice)")
        fields = dict(backbone.encode_texts(texts))
    labels = [ex["label"] for ex in examples]
    if task.loss == "soft_bce":
        fields["label_classes"], fields["label"] = sparse_targets(labels)
    else:
        fields["label"] = torch.tensor(labels, dtype=torch.long)
    keys, unique = {}, []
    if task.kind != "text":
        index = []
        for ex in examples:
            ids = ex.get("image_ids") or [None] * len(ex["images"])
            if len(ex["images"]) != task.n_images or len(ids) != task.n_images:
                raise BenchError(f"task '{task.name}': example has {len(ex['images'])} images, task expects {task.n_images}")
            row = []
            for key, im in zip(map(image_key, ex["images"], ids), ex["images"]):
                if key not in keys:
                    keys[key] = len(unique)
                    unique.append(im)
                row.append(keys[key])
            index.append(row)
        fields["image_index"] = torch.tensor(index, dtype=torch.long)
    return fields, (list(keys), unique)


def sparse_targets(labels: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets as (classes, scores), both [N, K] with K the most scored classes of one example
    (padding: class 0, score 0), from sparse {class index: score} dicts or dense score lists."""
    pairs = [sorted(lab.items()) if isinstance(lab, dict) else [(k, v) for k, v in enumerate(lab) if v] for lab in labels]
    width = max(1, max(map(len, pairs)))
    classes, scores = torch.zeros(len(pairs), width, dtype=torch.long), torch.zeros(len(pairs), width)
    for i, row in enumerate(pairs):
        if row:
            classes[i, :len(row)] = torch.tensor([k for k, _ in row])
            scores[i, :len(row)] = torch.tensor([v for _, v in row], dtype=torch.float32)
    return classes, scores


def soft_targets(labels: list, n_classes: int) -> torch.Tensor:
    """[N, C] soft targets from dense score lists or sparse {class index: score} dicts (VQA
    loaders give dicts: a few scored answers out of thousands)."""
    if not any(isinstance(lab, dict) for lab in labels):
        return torch.tensor(labels, dtype=torch.float32)
    out = torch.zeros(len(labels), n_classes)
    for i, lab in enumerate(labels):
        if isinstance(lab, dict):
            for k, v in lab.items():
                out[i, k] = v
        else:
            out[i] = torch.as_tensor(lab, dtype=torch.float32)
    return out


def code_version(task: Task) -> str:
    """Digest of the code that turns a task's files into encoded examples (its loader and the
    classes it inherits, such as FileTask's readers; the Task split logic; the example columns; this
    module), so a changed loader never reads a stale split from the shared cache."""
    return code_digest(*type(task).__mro__[:-1], Examples, encode)


def load_split(backbone, task: Task, split: str, cache_dir: Path | None, *, limit=None, shots=None,
               seed=0, data_root=None, val_size=200, files: str | None = None, skip_bad: bool = False) -> EncodedSplit:
    """Encoded examples of one split, from the on-disk cache when present; `files` is the digest of
    the task's files (bench/identity.py), part of the cache key. `skip_bad` drops the examples of
    images that cannot be decoded (counted in `skipped`) instead of raising."""
    opts = dict(task=task.name, split=split, limit=limit, val_size=val_size, data_root=data_root,
                shots=shots, seed=seed if shots is not None else None, enc=backbone.cache_key, code=code_version(task),
                **({"files": files} if files else {}), **({"holdout": list(task.holdout)} if task.holdout else {}),
                **({"skip_bad": True} if skip_bad else {}))
    load = lambda: task.load(split, limit=limit, shots=shots, seed=seed, data_root=data_root, val_size=val_size)  # noqa: E731
    if cache_dir is None:
        return encode(backbone, task, load(), skip_bad)
    key = f"{safe_name(task.name)}/{split}-{hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:16]}"
    path = Path(cache_dir) / "splits" / safe_name(backbone.cache_key) / key
    store = ImageFeatureStore(cache_dir, backbone.cache_key)
    if path.is_dir():
        try:
            return read_split(path, key, store.dir)
        except Exception:  # a corrupt cache entry (or one whose image shards are gone) is recomputed, never trusted
            shutil.rmtree(path, ignore_errors=True)
    fields, (keys, unique) = encode_examples(backbone, task, load())
    rows, skipped = None, None
    if keys:
        with hint_at_skipping():
            rows, bad = store.rows(keys, unique, backbone.encode_images, skip_bad)
        del unique
        release_freed_heap()  # the pixels decoded and freed while encoding, else resident for the whole process
        if skip_bad:
            fields, skipped = drop_unreadable(task, fields, keys, bad)
    write_split(path, fields, rows, task.n_classes if "label_classes" in fields else None, skipped)
    return read_split(path, key, store.dir)


def write_split(path: Path, fields: dict, rows: ImageRows | None, n_classes: int | None, skipped: dict | None) -> None:
    """The split directory, written whole into a temporary one and renamed: readers never see a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, tensor in fields.items():
            np.save(tmp / f"{name}.npy", tensor.numpy())
        if rows is not None:
            np.save(tmp / "image_rows.npy", torch.stack([rows.shard_of, rows.row_of], 1).numpy())
        (tmp / "split.json").write_text(json.dumps({"fields": list(fields), "n_classes": n_classes, "skipped": skipped,
                                                    "shards": None if rows is None else rows.shards}))
        try:
            os.rename(tmp, path)
        except OSError:  # another process wrote the same split first: keep its copy
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_split(path: Path, key: str, store: Path) -> EncodedSplit:
    """A split directory's arrays, memory-mapped (copy-on-write: nothing is read until used), its
    images the rows of the image store's shards in directory `store`."""
    meta = json.loads((path / "split.json").read_text())
    load = lambda name: torch.from_numpy(np.load(path / f"{name}.npy", mmap_mode="c"))  # noqa: E731
    fields = {name: load(name) for name in meta["fields"]}
    if len({len(v) for v in fields.values()}) != 1:
        raise ValueError("fields differ in length")
    images = None if meta["shards"] is None else ImageRows(store, meta["shards"], torch.from_numpy(np.load(path / "image_rows.npy")))
    return EncodedSplit(fields, images, key=key, n_classes=meta["n_classes"], skipped=meta["skipped"])
