"""The on-disk cache shared by every run, method, seed and output directory.

Location: `--set cache_dir=DIR`, else $MMCL_CACHE, else $XDG_CACHE_HOME/mmcl-bench, else
~/.cache/mmcl-bench. Every entry is written atomically (temp file + rename) and recomputed when
it cannot be read, so a killed writer or a damaged file never yields wrong features.

    images/<encoding>/<shard>.pt   what the frozen image encoder makes of each image (this file)
    splits/<encoding>/<task>/...   encoded splits, memory-mapped arrays: token ids, labels and
                                   where the split's images are in the shards above (bench/data.py)
    prefix/<encoding>/<task>/...   outputs of a frozen backbone prefix per example (bench/prefix.py)

Image features are stored per image, keyed by the backbone's encoding (`Backbone.cache_key`:
model + preprocessing) and the image's stable id, so every task, split, cap and seed over the same
images (the easy-VQA tasks share 5,000 images) encodes each image once, ever. Shards are
append-only: each encoded chunk of images becomes one new file, written whole, so a killed encode
keeps every finished chunk and resumes after it, nothing is ever rewritten, and a read takes the
rows it needs from a shard's file (`Shard`) instead of loading it. A split refers to its images'
rows (`ImageRows`) instead of copying them, so each image's encoding is on disk once, however many
splits use it.
"""
import fcntl
import hashlib
import inspect
import os
import re
import struct
import threading
import time
import zipfile
from collections import OrderedDict
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


def load_shard(path: Path) -> "Shard":
    """One image store shard's keys and row layout; read once per process and version of the file
    (shards are never rewritten, but a damaged one is replaced)."""
    st = os.stat(path)
    version = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    shard = _SHARDS.get(version)
    if shard is None:
        shard = _SHARDS[version] = Shard(Path(path), version)
    return shard


class Shard:
    """Where an image store shard's feature rows are in its file. Rows are read with pread into the
    caller's batch, never through a memory map: a mapped row's pages count in the process's resident
    memory (RssFile) for as long as the mapping lives, and the kernel maps whole large folios around
    each touched page (measured: 2.5 MB per 1.48 MB ViLT canvas), so a run's peak grew with the
    distinct images it had read (perf g: +1.35 GB at 8x the data). Read this way, the pages stay in
    the kernel's page cache (shared, reclaimable) and the process holds only the batch; a pread is
    also faster than first-touch faults (measured: 16 vs 270 ms per 32 canvases, 0.15 vs 0.24 ms per
    32 default rows)."""

    def __init__(self, path: Path, version: tuple):
        self.path, self.version = path, version
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the keys; the features untouched
        self.keys, feats = blob["keys"], blob["feats"]
        if len(self.keys) != len(feats) or not feats.is_contiguous():
            raise ValueError("keys and features differ in length, or the features are not contiguous")
        self.row_shape, self.dtype = tuple(feats.shape[1:]), feats.dtype
        self.row_bytes = feats[0].numel() * feats.element_size() if len(feats) else 0
        self.offset = storage_offset(path, feats.untyped_storage().nbytes()) + feats.storage_offset() * feats.element_size()

    def __len__(self) -> int:
        return len(self.keys)


def storage_offset(path: Path, nbytes: int) -> int:
    """Byte offset in a torch.save file holding one tensor of the data record of its storage
    (`nbytes` long; torch stores records uncompressed)."""
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        records = [i for i in z.infolist() if re.fullmatch(r"[^/]+/data/\d+", i.filename)]
        if len(records) != 1 or records[0].file_size != nbytes or records[0].compress_type != zipfile.ZIP_STORED:
            raise ValueError("not a shard of one stored tensor")
        f.seek(records[0].header_offset)
        header = f.read(30)  # the local file header: its name and extra field lengths at 26 and 28
        if header[:4] != b"PK\x03\x04":
            raise ValueError("no zip record header where the index says")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return records[0].header_offset + 30 + name_len + extra_len


# Shards' keys and layouts, per process (small: the image keys); the files opened to read rows, the
# most recently read ones only (a split can span more shards than a process may open files)
_SHARDS: dict[tuple, Shard] = {}
_OPEN: "OrderedDict[tuple, int]" = OrderedDict()
OPEN_SHARDS = 64
_READING = threading.Lock()


def _descriptor(shard: Shard) -> int:
    fd = _OPEN.pop(shard.version, None)
    if fd is None:
        fd = os.open(shard.path, os.O_RDONLY)
        if os.fstat(fd).st_ino != shard.version[1]:  # names are never reused: this one was replaced
            os.close(fd)
            raise ValueError(f"image store shard {shard.path} changed on disk")
        while len(_OPEN) >= OPEN_SHARDS:
            os.close(_OPEN.popitem(last=False)[1])
    _OPEN[shard.version] = fd
    return fd


class ImageRows:
    """A split's images as rows of the image store's shards, instead of a copy of them: indexed like
    a tensor [M, ...] (`rows[index]`, any index shape: a new tensor), each indexed row read from its
    shard's file (`Shard`), so a batch reads its own images and nothing else, and the process holds
    no other. `shards` are file names in `directory`."""

    def __init__(self, directory: Path, shards: list[str], where: torch.Tensor):
        self.directory, self.shards = Path(directory), list(shards)
        self.shard_of, self.row_of = where[:, 0].contiguous(), where[:, 1].contiguous()  # [M] each
        self.files = [load_shard(self.directory / name) for name in self.shards]
        sizes = torch.tensor([len(f) for f in self.files], dtype=torch.long)
        if len(where) and (self.shard_of.max() >= len(self.files) or (self.row_of >= sizes[self.shard_of]).any()):
            raise ValueError("image rows point past their shards")

    def __len__(self) -> int:
        return len(self.shard_of)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.files[0].row_shape)

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.as_tensor(index)
        flat = index.reshape(-1)
        first = self.files[0]
        out = torch.empty((len(flat), *first.row_shape), dtype=first.dtype)
        rows = out.view(-1).view(torch.uint8).view(len(flat), first.row_bytes).numpy()
        with _READING:  # one reader at a time may open and close the cached descriptors
            for k, (s, r) in enumerate(zip(self.shard_of[flat].tolist(), self.row_of[flat].tolist())):
                shard = self.files[s]
                if os.preadv(_descriptor(shard), [rows[k]], shard.offset + r * shard.row_bytes) != shard.row_bytes:
                    raise ValueError(f"image store shard {shard.path} is shorter than its rows")
        return out.view(*index.shape, *first.row_shape)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a gather reads (the data, for bench/evaluate.py's trace of model reads)."""
        return [self.shard_of, self.row_of]

    @property
    def identity(self) -> bytes:
        """Names the rows' contents: shards are written whole once under unique names, never changed."""
        return (f"{self.directory.name}/{','.join(self.shards)}/".encode()
                + self.shard_of.numpy().tobytes() + self.row_of.numpy().tobytes())


class ImageFeatureStore:
    """Per-image frozen features of one encoding, in append-only shard files {"keys", "feats"}."""

    def __init__(self, cache_dir: Path, encoding: str):
        self.dir = Path(cache_dir) / "images" / safe_name(encoding)
        self.encoded = 0  # images this store had to encode (the rest came from disk)
        self._seen: set[Path] = set()  # shards indexed
        self._where: dict[str, tuple[Path, int]] = {}  # image key -> (shard, row)

    def _scan(self, remove_unreadable: bool = False) -> None:
        """Index the shards not seen yet. An unreadable one is skipped (its images are encoded
        again); under the lock it is removed."""
        for path in sorted(self.dir.glob("*.pt")) if self.dir.is_dir() else []:
            if path in self._seen:
                continue
            try:
                keys = load_shard(path).keys
            except Exception:
                if remove_unreadable:
                    path.unlink(missing_ok=True)
                continue
            self._seen.add(path)
            for row, key in enumerate(keys):
                self._where.setdefault(key, (path, row))

    def rows(self, keys: list[str], images: list, encode, skip_bad: bool = False) -> tuple[ImageRows, dict]:
        """The stored rows of `images` (one per key), the missing ones first encoded with
        `encode(images) -> Tensor[M, ...]` (IMAGE_CHUNK at a time) and stored. Returns (rows,
        {key: error} of the images that cannot be decoded): with `skip_bad` those are left out of
        the rows, else the first one raises bench.images.BadImage."""
        from bench.images import encode_readable
        self._scan()
        bad = {}
        if any(k not in self._where for k in keys):
            with file_lock(self.dir / ".lock"):  # one encoder at a time; index what others wrote meanwhile
                self._scan(remove_unreadable=True)
                missing = list(dict.fromkeys(k for k in keys if k not in self._where))
                position = {k: i for i, k in enumerate(keys)}
                for i in range(0, len(missing), IMAGE_CHUNK):
                    chunk = missing[i:i + IMAGE_CHUNK]
                    feats, failed = encode_readable(encode, [images[position[k]] for k in chunk], skip_bad)
                    bad.update((chunk[j], error) for j, error in failed.items())
                    chunk = [k for j, k in enumerate(chunk) if j not in failed]
                    if not chunk:
                        continue
                    if len(feats) != len(chunk):
                        raise ValueError(f"image encoder returned {len(feats)} features for {len(chunk)} images")
                    path = self.dir / f"{time.time_ns():x}-{os.getpid()}.pt"
                    save_tensors(path, {"keys": chunk, "feats": feats.contiguous()})
                    self.encoded += len(chunk)
                    self._scan()
        where = [self._where[k] for k in keys if k not in bad]
        shards = sorted({path.name for path, _ in where})
        number = {name: n for n, name in enumerate(shards)}
        table = torch.tensor([[number[path.name], row] for path, row in where], dtype=torch.long).view(-1, 2)
        return ImageRows(self.dir, shards, table), bad
