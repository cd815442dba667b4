"""The on-disk cache shared by every run, method, seed and output directory.

Location: `--set cache_dir=DIR`, else $MMCL_CACHE, else $XDG_CACHE_HOME/mmcl-bench, else
~/.cache/mmcl-bench. Every entry is written atomically (temp file + rename) and recomputed when
it cannot be read, so a killed writer or a damaged file never yields wrong features.

    images/<encoding>/<shard>.pt   what the frozen image encoder makes of each image (this file)
    splits/<encoding>/<task>/...   encoded splits, memory-mapped arrays: token ids, labels and the
                                   split's image features (bench/data.py)
    prefix/<encoding>/<task>/...   outputs of a frozen backbone prefix per example (bench/prefix.py)

Image features are stored per image, keyed by the backbone's encoding (`Backbone.cache_key`:
model + preprocessing) and the image's stable id, so every task, split, cap and seed over the same
images (the easy-VQA tasks share 5,000 images) encodes each image once, ever. Shards are
append-only: each encoded chunk of images becomes one new file, written whole, so a killed encode
keeps every finished chunk and resumes after it, nothing is ever rewritten, and a read maps a shard
(memory-mapped) instead of loading it.
"""
import fcntl
import hashlib
import inspect
import os
import re
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bench.store import save_tensors

IMAGE_CHUNK = 256  # images encoded and written to one shard at a time (ViLT: 380 MB of pixels)


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
    """Per-image frozen features of one encoding, in append-only shard files {"keys", "feats"}."""

    def __init__(self, cache_dir: Path, encoding: str):
        self.dir = Path(cache_dir) / "images" / safe_name(encoding)
        self.encoded = 0  # images this store had to encode (the rest came from disk)
        self._feats: dict[Path, torch.Tensor] = {}  # shard -> its features, memory-mapped
        self._where: dict[str, tuple[Path, int]] = {}  # image key -> (shard, row)

    def _scan(self, remove_unreadable: bool = False) -> None:
        """Index the shards not seen yet. An unreadable one is skipped (its images are encoded
        again); under the lock it is removed."""
        for path in sorted(self.dir.glob("*.pt")) if self.dir.is_dir() else []:
            if path in self._feats:
                continue
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                keys, feats = blob["keys"], blob["feats"]
                if len(keys) != len(feats):
                    raise ValueError("keys and features differ in length")
            except Exception:
                if remove_unreadable:
                    path.unlink(missing_ok=True)
                continue
            self._feats[path] = feats
            for row, key in enumerate(keys):
                self._where.setdefault(key, (path, row))

    def features(self, keys: list[str], images: list, encode) -> torch.Tensor:
        """Features [M, ...] of `images` (one per key): read from disk, the missing ones encoded with
        `encode(images) -> Tensor[M, ...]` (IMAGE_CHUNK at a time) and stored."""
        self._scan()
        if any(k not in self._where for k in keys):
            with file_lock(self.dir / ".lock"):  # one encoder at a time; index what others wrote meanwhile
                self._scan(remove_unreadable=True)
                missing = list(dict.fromkeys(k for k in keys if k not in self._where))
                position = {k: i for i, k in enumerate(keys)}
                for i in range(0, len(missing), IMAGE_CHUNK):
                    chunk = missing[i:i + IMAGE_CHUNK]
                    feats = encode([images[position[k]] for k in chunk])
                    if len(feats) != len(chunk):
                        raise ValueError(f"image encoder returned {len(feats)} features for {len(chunk)} images")
                    path = self.dir / f"{time.time_ns():x}-{os.getpid()}.pt"
                    save_tensors(path, {"keys": chunk, "feats": feats.contiguous()})
                    self.encoded += len(chunk)
                    self._scan()
        if not keys:
            return encode([])
        return torch.stack([self._feats[path][row] for path, row in map(self._where.__getitem__, keys)])
