"""What a run's identity sees besides its configuration: the code of its method and the files its
tasks read. Both enter the run id (bench/config.py), and the files enter the split cache key too
(bench/runner.py plan_split), so an edited method or an edited annotation file is retrained and
re-encoded instead of being served from an earlier run."""
import hashlib
import os
from pathlib import Path

from bench.cache import code_digest

CONTENT_LIMIT = 1 << 20  # files up to 1 MiB (annotations, CSVs, vocabularies) are digested whole
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # never digested: size + mtime only


def method_code(method_cls) -> str:
    """Digest of the source files of the method's class and of every class it inherits from
    (its module, a parent method's module, bench/method.py): editing any of them is a new run."""
    return code_digest(*method_cls.__mro__[:-1])


def task_files(task, data_root) -> list[Path]:
    """The files a task reads: what it declares with `data_files(data_root)`, else every file
    under its dataset folder (`FileTask.folder`); none for a task without files (embedded data)."""
    declared = getattr(task, "data_files", None)
    if declared is not None:
        return sorted(Path(p) for p in declared(data_root))
    folder = getattr(task, "folder", None)
    if folder is None or not data_root:
        return []
    files = []
    for directory, _, names in os.walk(folder(data_root)):
        files += [Path(directory) / name for name in names]
    return sorted(files)


def data_fingerprint(task, data_root) -> str | None:
    """Digest of a task's files: path, size and modification time of each, and the contents of
    every small non-image file. None for a task that reads no files."""
    files = task_files(task, data_root)
    if not files:
        return None
    h = hashlib.sha1()
    for path in files:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if st.st_size <= CONTENT_LIMIT and path.suffix.lower() not in IMAGE_SUFFIXES:
            h.update(hashlib.sha1(path.read_bytes()).digest())
    return h.hexdigest()[:16]
