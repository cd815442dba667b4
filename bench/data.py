"""Encoded task data: texts tokenised and images passed through the frozen image encoder once,
cached on disk (image features per image, whole splits keyed by backbone encoding + task + split
options + loader code; see bench/cache.py), then served as tensor slices so the training loop has
no per-step Python data work."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench.cache import ImageFeatureStore, code_digest, image_key, safe_name
from bench.errors import BenchError
from bench.store import load_tensors, save_tensors
from bench.task import Task


@dataclass
class EncodedSplit:
    fields: dict  # per-example tensors, first dim N: text fields, "label", optional "image_index" [N, n_images]
    images: torch.Tensor | None  # [M, ...] frozen encodings of the distinct images
    derive: Callable[[dict], dict] | None = None  # extra fields computed per batch (an uncached frozen prefix)
    key: str | None = None  # names the split's content in the cache ("<task>/<split>-<digest>"); None: uncached

    def __len__(self) -> int:
        return len(self.fields["label"])

    def batch(self, idx: torch.Tensor) -> dict:
        out = {k: v[idx] for k, v in self.fields.items()}
        if "image_index" in out:
            out["image_feats"] = self.images[out.pop("image_index")]
        if self.derive is not None:
            out.update(self.derive(out))
        return out

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Batches in order, or shuffled with `generator`."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        device = self.fields["label"].device
        if device.type == "cuda":  # one pinned, non-blocking copy per pass: no host-device sync
            order = order.pin_memory()
        order = order.to(device, non_blocking=True)
        for i in range(0, len(self), batch_size):
            yield self.batch(order[i:i + batch_size])

    def head(self, fraction: float) -> "EncodedSplit":
        """The first `fraction` of the examples (the split is already in a fixed random order)."""
        if fraction >= 1:
            return self
        n = max(1, round(len(self) * fraction))
        return EncodedSplit({k: v[:n] for k, v in self.fields.items()}, self.images, self.derive)  # a subset: no key

    def to(self, device) -> "EncodedSplit":
        return EncodedSplit({k: v.to(device) for k, v in self.fields.items()},
                            None if self.images is None else self.images.to(device), self.derive, self.key)


def encode(backbone, task: Task, examples: list[dict], store: ImageFeatureStore | None = None) -> EncodedSplit:
    """Token ids, labels and the features of the split's distinct images (from `store` when given)."""
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
        fields["label"] = soft_targets(labels, task.n_classes)
    else:
        fields["label"] = torch.tensor(labels, dtype=torch.long)
    images = None
    if task.kind != "text":
        keys, index, unique = {}, [], []
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
        encode_images = chunked(backbone.encode_images)
        images = store.features(list(keys), unique, encode_images) if store else encode_images(unique)
    return EncodedSplit(fields, images)


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


IMAGE_CHUNK = 512  # images loaded and encoded at a time: a split's images are paths, never all in memory


def chunked(encode_images):
    def encode(images: list) -> torch.Tensor:
        return torch.cat([encode_images(images[i:i + IMAGE_CHUNK]) for i in range(0, len(images), IMAGE_CHUNK)])
    return encode


def code_version(task: Task) -> str:
    """Digest of the code that turns a task's files into encoded examples (its loader, the Task
    split logic, this module), so a changed loader never reads a stale split from the shared cache."""
    return code_digest(type(task), Task, encode)


def load_split(backbone, task: Task, split: str, cache_dir: Path | None, *, limit=None, shots=None,
               seed=0, data_root=None, val_size=200, files: str | None = None) -> EncodedSplit:
    """Encoded examples of one split, from the on-disk cache when present; `files` is the digest of
    the task's files (bench/identity.py), part of the cache key."""
    opts = dict(task=task.name, split=split, limit=limit, val_size=val_size, data_root=data_root,
                shots=shots, seed=seed if shots is not None else None, enc=backbone.cache_key, code=code_version(task),
                **({"files": files} if files else {}))
    path = store = key = None
    if cache_dir is not None:
        key = f"{safe_name(task.name)}/{split}-{hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:16]}"
        path = Path(cache_dir) / "splits" / safe_name(backbone.cache_key) / f"{key}.pt"
        store = ImageFeatureStore(cache_dir, backbone.cache_key)
        if path.exists():
            try:
                blob = load_tensors(path)
                return EncodedSplit(blob["fields"], blob["images"], key=key)
            except Exception:  # a corrupt cache entry is recomputed, never trusted
                path.unlink(missing_ok=True)
    examples = task.load(split, limit=limit, shots=shots, seed=seed, data_root=data_root, val_size=val_size)
    data = encode(backbone, task, examples, store)
    if path is not None:
        save_tensors(path, {"fields": data.fields, "images": data.images})
    data.key = key
    return data
