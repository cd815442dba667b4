"""Reading the files real datasets ship: the base class of file-backed tasks, readers that name
the first bad file and line, an index of image files by id, and local Hugging Face `datasets`
files (parquet / json / jsonl / csv / `save_to_disk` arrow, read by `datasets`), or a task's hub
dataset from the local Hugging Face cache. Not a task module (leading underscore:
the task registry does not import it by itself)."""
import io
import json
import os
import pickle
import re
from pathlib import Path

from bench.columns import Examples
from bench.errors import BenchError
from bench.task import Task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PARSED: dict = {}  # (task, split, files ...) -> Examples, the splits this process has read, oldest first
PARSED_KEPT = 8


class FileTask(Task):
    """A task read from files under the user's `data_root`.

    Subclasses set `dirs` (accepted names of the dataset's folder under data_root, first found
    wins), `layout` (one line: the files expected, shown in every error) and implement
    `read(split, folder)`. Tasks whose label space lives in the files (answer vocabularies, class
    folders, category lists) fill `self.labels` in `prepare`, which the runner calls before the
    method builds its heads.
    """

    dirs: tuple = ()
    layout: str = ""
    hub_id: str | None = None  # a Hugging Face hub dataset read from the local cache when no data_root is given

    def __post_init__(self):
        if self.labels:  # otherwise the label space (and chance) is read from data_root in `prepare`
            super().__post_init__()

    def error(self, message: str) -> BenchError:
        return BenchError(f"task '{self.name}': {message} (expected layout: {self.layout})")

    def folder(self, data_root) -> Path:
        """The dataset's folder under data_root; without data_root, the task's hub dataset
        (`hub_id`) from the local Hugging Face cache."""
        if not data_root and self.hub_id:
            return cached_hub_dataset(self, self.hub_id)
        if not data_root:
            raise self.error("reads the dataset's files: pass --set data_root=<dir>")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise self.error(f"data_root {root} is not a directory")
        for name in self.dirs:
            if (root / name).is_dir():
                return root / name
        raise self.error(f"no folder {' or '.join(repr(d) for d in self.dirs)} under {root}")

    def prepare(self, data_root) -> None:
        """Read the label space from data_root (no-op for tasks whose labels are fixed)."""

    def set_labels(self, labels: list, chance: float | None = None) -> None:
        if not labels:
            raise self.error("found no labels / classes")
        self.labels = list(labels)
        self.chance = 100.0 / len(self.labels) if chance is None else chance

    def examples(self, split, data_root):
        """The split's examples as columns (bench/columns.py), read from the files once per process
        and version of them (a fresh run reads the training files for its train and val splits)."""
        from bench.identity import data_fingerprint
        if not self.labels:
            self.prepare(data_root)
        folder = self.folder(data_root)
        key = (type(self), self.name, tuple(self.labels), split, str(folder), data_fingerprint(self, data_root))
        if key not in PARSED:
            while len(PARSED) >= PARSED_KEPT:
                PARSED.pop(next(iter(PARSED)))
            PARSED[key] = Examples.of(self.read(split, folder))
        return PARSED[key]

    def read(self, split: str, folder: Path):
        """The split's examples (dicts), a list or one by one."""
        raise NotImplementedError

    # -- readers whose errors name the file and the first bad line -------------------------
    def first(self, folder: Path, *candidates: str) -> Path:
        """The first existing path among `candidates` (relative to folder)."""
        for c in candidates:
            if (folder / c).exists():
                return folder / c
        raise self.error(f"missing {' or '.join(str(folder / c) for c in candidates)}")

    def read_json(self, path: Path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise self.error(f"{path} line {e.lineno}: malformed JSON ({e.msg})") from None
        except OSError as e:
            raise self.error(f"cannot read {path}: {e.strerror}") from None

    def json_list(self, path: Path, key: str):
        """(where, item) for each item of the list under the top-level `key` of the JSON document
        at `path`, decoded one item at a time: VQAv2's annotation files are hundreds of MB, which
        `json.load` would hold whole as Python objects (several GB). Other top-level values are
        decoded and dropped."""
        try:
            with open(path, encoding="utf-8") as f:
                stream = _JSONStream(f)
                stream.expect("{")
                while stream.peek() != "}":
                    name = stream.value()
                    stream.expect(":")
                    if name != key:
                        stream.value()
                    else:
                        if stream.peek() != "[":
                            raise self.error(f"{path}: field '{key}' is not a list")
                        stream.expect("[")
                        k = 0
                        while stream.peek() != "]":
                            yield f"{path} {key}[{k}]", stream.value()
                            k += 1
                            if stream.peek() != "]":
                                stream.expect(",")
                        return
                    if stream.peek() != "}":
                        stream.expect(",")
        except _Malformed as e:
            raise self.error(f"{path} line {e.line}: malformed JSON ({e.msg})") from None
        except OSError as e:
            raise self.error(f"cannot read {path}: {e.strerror}") from None
        raise self.error(f"{path}: missing field '{key}'")

    def jsonl(self, path: Path):
        """(line number, record) for each non-empty line."""
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield n, json.loads(line)
                        except json.JSONDecodeError as e:
                            raise self.error(f"{path} line {n}: malformed JSON ({e.msg})") from None
        except OSError as e:
            raise self.error(f"cannot read {path}: {e.strerror}") from None

    def field(self, record, key: str, where: str, kind=None):
        """record[key], or a one-line error naming `where` (file and line)."""
        if not isinstance(record, dict) or key not in record:
            raise self.error(f"{where}: missing field '{key}'")
        value = record[key]
        if kind is not None and not isinstance(value, kind):
            raise self.error(f"{where}: field '{key}' is {type(value).__name__}, expected {_kind_name(kind)}")
        return value

    def lines(self, path: Path):
        """(line number, stripped line) for each non-empty line of a text file."""
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield n, line.strip()
        except OSError as e:
            raise self.error(f"cannot read {path}: {e.strerror}") from None

    def existing(self, path: Path, where: str) -> str:
        """The path of an image file that must exist, as a string (the data layer's cache key)."""
        if not os.path.isfile(path):
            raise self.error(f"{where}: image {path} not found")
        return str(path)

    def read_pickle_mapping(self, path: Path):
        """A pickled dict/list of plain values (answer vocabularies). Only builtin containers and
        scalars unpickle: anything that would import code is refused."""
        try:
            with open(path, "rb") as f:
                return _PlainUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise self.error(f"{path}: not a pickled dict/list of plain values ({e})") from None

    # -- local Hugging Face `datasets` files ---------------------------------------------
    def hf_records(self, folder: Path, split: str):
        """(where, record) rows of split `split` from local Hugging Face dataset files under
        folder, read by `datasets`: `<split>-*.parquet` / `<split>.{parquet,jsonl,json,csv}` (hub
        downloads, any depth) or a `save_to_disk` directory `<split>/*.arrow`. None when there is
        no such file."""
        files = hf_split_files(folder, split)
        if not files:
            return None
        return (row for path in files for row in self._hf_rows(path))

    def _hf_rows(self, path: Path):
        suffix = path.suffix.lower()
        first = 2 if suffix == ".csv" else 1  # CSV rows start on line 2, after the header
        unit = "line" if suffix in (".csv", ".jsonl", ".json") else "row"
        for n, row in enumerate(self._hf_dataset(path)):
            yield f"{path} {unit} {n + first}", row

    def _hf_dataset(self, path: Path):
        import datasets
        datasets.disable_progress_bars()  # one bar per file read would drown the suite's
        suffix = path.suffix.lower().lstrip(".")
        try:
            if suffix == "arrow" and (path.parent / "state.json").exists():
                return datasets.load_from_disk(str(path.parent))  # a save_to_disk split
            builder = {"jsonl": "json"}.get(suffix, suffix)
            options = {"field": "data"} if builder == "json" and _json_document_with_data(path) else {}
            return datasets.load_dataset(builder, data_files=[str(path)], split="train", **options)
        except Exception as e:  # datasets wraps pyarrow / pandas / json errors in several types
            message = str(e.__cause__ or e).strip().splitlines() or [type(e).__name__]
            raise self.error(f"{path}: unreadable ({message[0]})") from None


class _Malformed(Exception):
    def __init__(self, msg: str, line: int):
        super().__init__(msg)
        self.msg, self.line = msg, line


class _JSONStream:
    """A JSON document read a chunk at a time: `value()` decodes the next value (json's own
    decoder, on the buffered text), `peek()` / `expect()` the punctuation between values; errors
    (`_Malformed`) carry the document's line number."""

    CHUNK = 1 << 20
    DECODER = json.JSONDecoder()

    def __init__(self, f):
        self.f, self.buf, self.pos, self.lines, self.eof = f, "", 0, 0, False  # lines: before buf

    def _more(self) -> bool:
        chunk = self.f.read(self.CHUNK)
        self.lines += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        self.eof = not chunk
        return bool(chunk)

    def peek(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos:self.pos + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Malformed(f"expected '{char}'", self.lines + self.buf.count("\n", 0, self.pos) + 1)
        self.pos += 1

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self.DECODER.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the buffer's end may go on
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof:
                    raise _Malformed(e.msg, self.lines + e.lineno) from None
            self._more()


def _json_document_with_data(path: Path) -> bool:
    """A JSON document {"data": [...]} (SQuAD-style) rather than JSON lines or a list of records."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("{"):
        return False
    try:
        json.loads(head.splitlines()[0])
        return False  # the first line is a whole object: JSON lines
    except json.JSONDecodeError:
        return '"data"' in head


def cached_hub_dataset(task: "FileTask", repo_id: str) -> Path:
    """The local snapshot of hub dataset `repo_id` in the Hugging Face cache (what `hf download
    --repo-type dataset` leaves there); nothing is fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        raise task.error(f"no data_root given and the hub dataset '{repo_id}' is not in the local Hugging Face "
                         f"cache; pass --set data_root=<dir>, or fetch it once on a machine with access: "
                         f"hf download --repo-type dataset {repo_id}") from None


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to import {module}.{name}")


HF_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


def hf_split_files(folder: Path, split: str) -> list[Path]:
    names = HF_SPLIT_NAMES.get(split, (split,))
    pattern = re.compile(rf"^({'|'.join(names)})([-_.].*)?\.(parquet|jsonl|json|csv|arrow)$", re.I)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        in_split_dir = Path(dirpath).name.lower() in names  # save_to_disk: <split>/data-00000-of-00001.arrow
        for fn in sorted(filenames):
            if pattern.match(fn) or (in_split_dir and fn.endswith(".arrow")):
                found.append(Path(dirpath) / fn)
    return found


# -- image files --------------------------------------------------------------------------
def scan_images(folder: Path, recursive: bool = False) -> dict[str, str]:
    """{file name: path} of the image files in folder (and its subfolders when recursive)."""
    out = {}
    if not folder.is_dir():
        return out
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir():
                    if recursive:
                        stack.append(Path(entry.path))
                elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                    out.setdefault(entry.name, entry.path)
    return out


TRAILING_NUMBER = re.compile(r"(\d+)$")


def images_by_number(*folders: Path) -> dict[int, str]:
    """{image id: path} for files named by a number: `000000000009.jpg`, `COCO_train2014_000000000009.jpg`,
    `1000092795.jpg` (COCO, Flickr30k). The first folder holding an id wins."""
    out = {}
    for folder in folders:
        for name, path in scan_images(folder).items():
            m = TRAILING_NUMBER.search(Path(name).stem)
            if m:
                out.setdefault(int(m.group(1)), path)
    return out


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the sub-folders (ImageNet-style: one folder per class)."""
    if not folder.is_dir():
        return []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_text_file(path: Path) -> str:
    with io.open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
