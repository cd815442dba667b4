"""The on-disk cache shared by every run, method, seed and output directory.

Location: `--set cache_dir=DIR`, else $MMCL_CACHE, else $XDG_CACHE_HOME/mmcl-bench, else
~/.cache/mmcl-bench. Every entry is written atomically (temp file + rename) and recomputed when
it cannot be read, so a killed writer or a damaged file never yields wrong features.

    images/<encoding>/<shard>.pt   what the frozen image encoder makes of each image (this file)
    splits/<encoding>/<task>/...   encoded splits: token ids + the split's image features (bench/data.py)
    prefix/<encoding>/<task>/...   outputs of a frozen backbone prefix per example (bench/prefix.py)

Image features are stored per image, keyed by the backbone's encoding (`Backbone.cache_key`:
model + preprocessing) and the image's stable id, so every task, split, cap and seed over the same
images (the easy-VQA tasks share 5,000 images) encodes each image once, ever.
"""
import fcntl
import hashlib
import inspect
import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bench.store import load_tensors, save_tensors

N_SHARDS = 256  # images spread over shard files by id hash: few files, small rewrites


def default_cache_dir() -> Path:
    if os.environ.get("MMCL_CACHE"):
        return Path(os.environ["MMCL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmcl-bench"


def safe_name(key: str) -> str:
    """A file-name-safe, collision-free directory name for a cache key (keys may hold ':' or '/')."""
    readable = re.sub(r"[^A-Za-z0-9._+-]", "_", key)[:80]
    return readable if readable == key else f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


@lru_cache(maxsize=None)
def _file_digest(path: str | None) -> bytes:
    try:
        return hashlib.sha1(Path(path).read_bytes()).digest()
    except (OSError, TypeError):  # no source file (defined interactively): its name stands in
        return hashlib.sha1(str(path).encode()).digest()


def code_digest(*objects) -> str:
    """Digest of the source files defining `objects` (classes, modules, functions): part of the key
    of every derived cache entry, so changed code never reads a stale entry."""
    h = hashlib.sha1()
    for obj in objects:
        try:
            path = inspect.getsourcefile(obj)
        except TypeError:  # a built-in
            path = None
        h.update(_file_digest(path))
    return h.hexdigest()[:12]


def image_key(image, image_id: str | None = None) -> str:
    """A global key for one image: the task's stable id when it gives one, else the file path with
    its size and modification time, else a hash of the pixels."""
    if image_id is not None:
        return f"id:{image_id}"
    if isinstance(image, (str, os.PathLike)):
        st = os.stat(image)
        return f"path:{os.path.abspath(image)}:{st.st_size}:{st.st_mtime_ns}"
    pixels = np.ascontiguousarray(np.asarray(image))
    h = hashlib.sha1(pixels.tobytes())
    h.update(f"{pixels.shape}{pixels.dtype}".encode())
    return f"pixels:{h.hexdigest()}"


@contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock (runs side by side must not lose each other's entries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ImageFeatureStore:
    """Per-image frozen features of one encoding, sharded on disk."""

    def __init__(self, cache_dir: Path, encoding: str):
        self.dir = Path(cache_dir) / "images" / safe_name(encoding)
        self.encoded = 0  # images this store had to encode (the rest came from disk)

    def _shard(self, key: str) -> Path:
        return self.dir / f"{int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % N_SHARDS:03d}.pt"

    @staticmethod
    def _read(path: Path) -> dict:
        """{key: features} of one shard; {} when absent or unreadable (its images are recomputed)."""
        if not path.exists():
            return {}
        try:
            blob = load_tensors(path)
            if len(blob["keys"]) != len(blob["feats"]):
                raise ValueError("keys and features differ in length")
            return dict(zip(blob["keys"], blob["feats"]))
        except Exception:
            return {}

    def features(self, keys: list[str], images: list, encode) -> torch.Tensor:
        """Features [M, ...] of `images` (one per key): read from disk, the missing ones encoded with
        `encode(images) -> Tensor[M, ...]` in one call and stored."""
        shards = {}
        for key in keys:
            shards.setdefault(self._shard(key), []).append(key)
        found = {}
        for path in shards:
            found.update(self._read(path))
        if any(k not in found for k in keys):
            with file_lock(self.dir / ".lock"):  # one encoder at a time; re-read what others wrote meanwhile
                todo = {path: self._read(path) for path, ks in shards.items() if any(k not in found for k in ks)}
                for entries in todo.values():
                    found.update(entries)
                missing = list(dict.fromkeys(k for k in keys if k not in found))
                if missing:
                    position = {k: i for i, k in enumerate(keys)}
                    feats = encode([images[position[k]] for k in missing])
                    if len(feats) != len(missing):
                        raise ValueError(f"image encoder returned {len(feats)} features for {len(missing)} images")
                    new = dict(zip(missing, feats))
                    self.encoded += len(new)
                    found.update(new)
                    for path, entries in todo.items():
                        added = {k: new[k] for k in shards[path] if k in new}
                        if added:
                            entries.update(added)
                            save_tensors(path, {"keys": list(entries),
                                                "feats": torch.stack([v.contiguous() for v in entries.values()])})
        if not keys:
            return encode([])
        return torch.stack([found[k] for k in keys])
