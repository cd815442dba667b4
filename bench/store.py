"""Results store: one directory per run, every write atomic (temp file + rename), so a reader
sees a whole file or none; a run counts as finished only when its DONE marker and a readable
metrics.json of the same run agree (`read_done`)."""
import errno
import json
import os
import tempfile
from pathlib import Path

import torch
import xxhash

from bench.errors import BenchError

# Errors of the storage itself (full disk, quota, read-only or forbidden directory): every other run
# would hit them too, so they stop the suite instead of being recorded as one run's failure.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)


class StorageError(BenchError):
    """The results directory cannot be written."""


def write_atomic(path: Path, write, durable: bool = True) -> None:
    """Write `path` through `write(binary file)` into a unique temp file, then rename it over `path`:
    readers (and concurrent writers: two suites writing one report) see a whole file or none.
    durable=False skips the fsyncs: a killed process still leaves the whole file (the kernel has
    it), only a power cut may not; for files whose damage is detected and redone (checkpoints)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            _fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    finally:
        if tmp is not None:  # never leave a partial file behind
            Path(tmp).unlink(missing_ok=True)


def remove_partial_files(directory: Path) -> None:
    """Delete temp files that a writer killed mid-write (SIGKILL, power cut) left behind; call only
    while holding the lock of everything written in `directory`."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj) -> None:
    write_atomic(Path(path), lambda f: f.write(json.dumps(obj, indent=1, sort_keys=False).encode()))


def write_text(path: Path, text: str) -> None:
    write_atomic(Path(path), lambda f: f.write(text.encode()))


def tensor_hash():
    """The hash of model and data tensors (checkpoints' built model, prefix and stage keys): it
    guards against accidental mismatches, not forgery, and runs over a whole backbone in every
    run, so a fast non-cryptographic 128-bit one (xxh3: 90 MB in 10 ms vs 64 ms for sha1)."""
    return xxhash.xxh3_128()


def update_digest(h, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to the hash `h` (a `tensor_hash()`)."""
    t = tensor.detach().cpu()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy


def state_digest(state: dict) -> str:
    h = tensor_hash()
    for name, tensor in state.items():
        h.update(name.encode())
        update_digest(h, tensor)
    return h.hexdigest()


def save_tensors(path: Path, obj, durable: bool = True) -> None:
    write_atomic(Path(path), lambda f: torch.save(obj, f), durable)


def load_tensors(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def runs_dir(out) -> Path:
    return Path(out) / "runs"


def read_done(run_dir: Path) -> dict | None:
    """The metrics of a finished run, or None when the run is not finished or its files do not
    agree (DONE without a readable metrics.json of this run): such a run is redone, never read."""
    try:
        marker = (run_dir / "DONE").read_text().strip()
        metrics = read_json(run_dir / "metrics.json")
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not marker or metrics.get("run_id") != marker:
        return None
    return metrics


def is_done(run_dir: Path) -> bool:
    return read_done(run_dir) is not None


def finished_runs(out) -> list[dict]:
    """metrics.json of every finished run (partial or corrupt runs are never read)."""
    root = runs_dir(out)
    if not root.exists():
        return []
    return [m for m in (read_done(d) for d in sorted(root.iterdir()) if d.is_dir()) if m is not None]


def check_writable(out) -> None:
    """Fail before anything runs when the results directory cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StorageError(f"output directory {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create output directory {out}: {e.strerror or e}") from None
    write_text(out / ".write-test", "")
    (out / ".write-test").unlink()
