"""Hugging Face formats are read by `datasets` (Parquet, JSON lines, a {"data": [...]} JSON
document, CSV, `save_to_disk`), and a task with a hub dataset id reads it from the local Hugging
Face cache when no data_root is given (nothing is fetched; a one-line error when it is not there)."""
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from bench.errors import BenchError
from bench.registry import TASKS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROWS = [("a fine film", 1), ("dull, \"long\", and loud", 0), ("ok", 1)]


def texts_labels(examples):
    return [(e["text"], e["label"]) for e in examples]


@pytest.mark.parametrize("form", ["csv", "jsonl", "json_document"])
def test_text_formats_read_by_datasets(tmp_path, form):
    folder = tmp_path / "sst2"
    folder.mkdir()
    for split, rows in (("train", ROWS), ("validation", ROWS[:2])):
        if form == "csv":
            body = "sentence,label\n" + "".join(f'"{t.replace(chr(34), chr(34) * 2)}",{y}\n' for t, y in rows)
            (folder / f"{split}.csv").write_text(body)
        elif form == "jsonl":
            (folder / f"{split}.jsonl").write_text("".join(json.dumps({"sentence": t, "label": y}) + "\n" for t, y in rows))
        else:
            doc = {"version": 1, "data": [{"sentence": t, "label": y} for t, y in rows]}
            (folder / f"{split}.json").write_text(json.dumps(doc, indent=1))
    task = TASKS.get("sst2")()
    assert texts_labels(task.examples("train", str(tmp_path))) == ROWS
    assert texts_labels(task.examples("test", str(tmp_path))) == ROWS[:2]  # SST-2 reports validation


def test_bad_row_and_unreadable_file_name_the_file(tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,label\ngood,1\nbad,7\n")
    with pytest.raises(BenchError, match=r"train.csv line 3: label 7 is not in 0..1"):
        TASKS.get("sst2")().examples("train", str(tmp_path))
    (folder / "train.csv").unlink()
    (folder / "train-00000-of-00001.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(BenchError) as e:
        TASKS.get("sst2")().examples("train", str(tmp_path))
    assert "train-00000-of-00001.parquet: unreadable (" in str(e.value) and "\n" not in str(e.value)


def test_save_to_disk_folder_read_by_datasets():
    task = TASKS.get("commonsenseqa")()
    rows = task.hf_records(FIXTURES / "hf" / "commonsenseqa", "validation")
    import datasets
    want = datasets.load_from_disk(str(FIXTURES / "hf" / "commonsenseqa" / "validation"))
    got = [row for _, row in rows]
    assert got == [dict(r) for r in want] and len(got) > 1


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache of this test's own."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_dataset_from_the_local_cache(hub_cache):
    # the layout `hf download --repo-type dataset stanfordnlp/imdb` leaves in the cache
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "datasets--stanfordnlp--imdb"
    shutil.copytree(FIXTURES / "hf" / "imdb", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    from_cache, from_root = TASKS.get("imdb")(), TASKS.get("imdb")()
    for split in ("train", "test"):
        cached = from_cache.examples(split, None)
        assert cached == from_root.examples(split, str(FIXTURES / "hf")) and len(cached) > 1


def test_hub_dataset_missing_from_the_cache_is_one_line(hub_cache):
    with pytest.raises(BenchError) as e:
        TASKS.get("imdb")().examples("train", None)
    message = str(e.value)
    assert "\n" not in message and "hub dataset 'stanfordnlp/imdb' is not in the local Hugging Face cache" in message
    assert "hf download --repo-type dataset stanfordnlp/imdb" in message
    with pytest.raises(BenchError, match=r"pass --set data_root=<dir>"):  # a task with no hub id
        TASKS.get("vqav2")().examples("train", None)
