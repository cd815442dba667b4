"""Results store: one directory per run, every write atomic (temp file + rename)."""
import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    _atomic(Path(path), lambda f: f.write(json.dumps(obj, indent=1, sort_keys=False).encode()))


def write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def save_tensors(path: Path, obj) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def load_tensors(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def runs_dir(out) -> Path:
    return Path(out) / "runs"


def is_done(run_dir: Path) -> bool:
    return (run_dir / "DONE").exists() and (run_dir / "metrics.json").exists()


def finished_runs(out) -> list[dict]:
    """metrics.json of every run with a DONE marker (partial runs are never read)."""
    root = runs_dir(out)
    if not root.exists():
        return []
    return [read_json(d / "metrics.json") for d in sorted(root.iterdir()) if is_done(d)]
