"""Per-example results of a run: for every evaluated cell (row i, task j) the score of each test
example (accuracy: correct or not; VQA score: the soft score of the predicted answer), so that
the report can bootstrap over test examples (bench/stats.py). One `examples.npz` per run
directory, written atomically and read without pickle.

Storage: accuracy cells as bool (1 byte an example before compression), VQA-score cells as the
float32 label value itself. Not uint8 tenths or float16: this harness's soft scores are
min(#humans/3, 1) (thirds), which neither represents exactly, and a cell's stored vector must
give back its score A[i][j]. Compressed (zip deflate), a few distinct values per cell cost about
a bit an example."""
import zipfile
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.store import write_atomic

EXAMPLES_FILE = "examples.npz"
SPLITS = "splits"  # the npz entry holding each task's test split key (which examples the cells score)
DTYPES = (np.dtype(bool), np.dtype(np.float32))


def cell_score(values: np.ndarray) -> float:
    """A cell's score in %, computed as bench.evaluate.score does (float64 total, then 100 total / n)."""
    return float(100.0 * values.sum(dtype=np.float64) / len(values))


def _name(i: int, j: int) -> str:
    return f"cell_{i}_{j}"


class RunExamples:
    """The per-example vectors of one run, by cell (row i, task j), and each task's test split key
    (bench.data.EncodedSplit.key): runs whose keys agree scored the same examples in the same order,
    which is what lets the statistics pair them."""

    def __init__(self, cells: dict[tuple[int, int], np.ndarray] | None = None, splits: dict[int, str] | None = None):
        self.cells = dict(cells or {})
        self.splits = dict(splits or {})

    def record(self, i: int, j: int, values: np.ndarray, split_key: str | None = None) -> None:
        values = np.asarray(values)
        if values.dtype not in DTYPES or values.ndim != 1 or not len(values):
            raise BenchError(f"cell ({i}, {j}): per-example scores must be a non-empty 1-D bool or float32 vector")
        known = next((v for (_, b), v in self.cells.items() if b == j), None)
        if known is not None and len(known) != len(values):
            raise BenchError(f"cell ({i}, {j}) has {len(values)} examples, task {j}'s other cells {len(known)}")
        self.cells[(i, j)] = values
        self.splits[j] = split_key or ""

    def save(self, run_dir: Path) -> None:
        arrays = {_name(i, j): v for (i, j), v in self.cells.items()}
        tasks = 1 + max(self.splits, default=-1)
        arrays[SPLITS] = np.array([self.splits.get(j, "") for j in range(tasks)], dtype=str)
        write_atomic(Path(run_dir) / EXAMPLES_FILE, lambda f: np.savez_compressed(f, **arrays))

    @classmethod
    def load(cls, run_dir: Path) -> "RunExamples | None":
        """The run's per-example vectors; None when it has none or the file is unreadable (a
        damaged file is never half-read: the statistics then leave the run out)."""
        path = Path(run_dir) / EXAMPLES_FILE
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            splits = {j: str(key) for j, key in enumerate(arrays.pop(SPLITS))}
            out = cls(splits=splits)
            for name, values in arrays.items():
                _, i, j = name.split("_")
                out.record(int(i), int(j), values, splits.get(int(j)))
            return out
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, BenchError):
            return None

    def agrees_with(self, matrix: list[list[float | None]], tol: float = 1e-3) -> bool:
        """Whether every stored cell gives back the run's score A[i][j] (within `tol` points: score
        sums VQA scores per batch in float32), and every score has its cell."""
        for i, row in enumerate(matrix):
            for j, a in enumerate(row):
                values = self.cells.get((i, j))
                if (a is None) != (values is None) or (a is not None and abs(cell_score(values) - a) > tol):
                    return False
        return len(self.cells) == sum(a is not None for row in matrix for a in row)
