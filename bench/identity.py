"""What a run's identity sees besides its configuration: the code of its method and of its tasks,
and the files its tasks read. Both enter the run id (bench/config.py), and the files enter the split cache key too
(bench/runner.py plan_split), so an edited method or an edited annotation file is retrained and
re-encoded instead of being served from an earlier run."""
import hashlib
import os
from functools import lru_cache

from bench.cache import code_digest

CONTENT_LIMIT = 1 << 20  # files up to 1 MiB (annotations, CSVs, vocabularies) are digested whole
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def class_code(cls) -> str:
    """Digest of the source files of `cls` and of every class it inherits from (its module, a
    parent's module, bench/method.py or bench/task.py): editing any of them is a new run. Serves
    methods and tasks alike."""
    return code_digest(*cls.__mro__[:-1])


def data_fingerprint(task, data_root) -> str | None:
    """Digest of the files a task reads: the paths it declares with `data_files(data_root)`, else
    every file under its dataset folder (`FileTask.folder`); None for a task without files
    (embedded data). A folder is read once per process: a run's identity is fixed when it is planned."""
    declared = getattr(task, "data_files", None)
    if declared is not None:
        return files_digest(sorted(str(p) for p in declared(data_root)))
    folder = getattr(task, "folder", None)
    if folder is None or not data_root:
        return None
    return folder_digest(str(folder(data_root)))


@lru_cache(maxsize=None)
def folder_digest(folder: str) -> str:
    return files_digest(sorted(os.path.join(d, name) for d, _, names in os.walk(folder) for name in names))


def files_digest(paths: list[str]) -> str:
    """Annotation files (anything but an image) by path, size and modification time, and by content
    up to 1 MiB; images by path only: there are millions, and the image feature store keys each
    one by its size and modification time already (bench/cache.py)."""
    h = hashlib.sha1()
    for path in paths:
        h.update(path.encode() + b"\0")
        if path.lower().endswith(IMAGE_SUFFIXES):
            continue
        st = os.stat(path)
        h.update(f"{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if st.st_size <= CONTENT_LIMIT:
            with open(path, "rb") as f:
                h.update(hashlib.sha1(f.read()).digest())
    return h.hexdigest()[:16]
