"""Loaders that hold large annotation files: a JSON document's list streamed item by item
(`FileTask.json_list`), examples kept as columns (bench/columns.py) that give back exactly the
examples and splits a list of dicts gives, and each file parsed once per process."""
import json
import random
from dataclasses import dataclass

import pytest

from bench.columns import Examples
from bench.errors import BenchError
from bench.registry import TASKS
from bench.task import Task, low_shot
from tasks import _files
from tasks._files import _JSONStream

DOC = {"info": {"note": "a } and a ] inside a string", "values": [1, 2.5, None]}, "count": 12345,
       "annotations": [{"question_id": i, "text": "é, ] }" * (i % 3), "score": i / 3} for i in range(40)],
       "tail": [7, 8]}


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(_JSONStream, "CHUNK", 5)  # every value is cut by several chunk boundaries


@pytest.mark.parametrize("indent", [None, 1])
def test_a_json_list_streams_what_json_load_reads(tmp_path, tiny_chunks, indent):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(DOC, indent=indent))
    task = TASKS.get("vqav2")()
    got = list(task.json_list(path, "annotations"))
    assert [item for _, item in got] == json.loads(path.read_text())["annotations"]  # oracle: json.load
    assert [where for where, _ in got] == [f"{path} annotations[{k}]" for k in range(40)]
    with pytest.raises(BenchError, match=r"doc\.json: missing field 'questions'"):
        list(task.json_list(path, "questions"))


@pytest.mark.parametrize("damage", [lambda t: t.replace('"question_id": 17,', '"question_id": 17,,'),
                                    lambda t: t.replace('"question_id": 17,', '"question_id" 17,'),
                                    lambda t: t[:t.index('"question_id": 23')]])  # cut short
def test_malformed_json_is_one_error_naming_its_line(tmp_path, tiny_chunks, damage):
    text = damage(json.dumps(DOC, indent=1))
    path = tmp_path / "doc.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as expected:  # oracle: the json module's own line
        json.loads(text)
    with pytest.raises(BenchError, match=rf"doc\.json line {expected.value.lineno}: malformed JSON"):
        list(TASKS.get("vqav2")().json_list(path, "annotations"))


ROWS = [{"images": [f"/img/{i % 4}.jpg"], "text": f"question {i}", "label": {i % 5: 0.3, 7: 0.9} if i % 6 else {}}
        for i in range(30)]


def test_columns_give_back_the_examples():
    pairs = [{"images": [f"/a/{i}.png", f"/b/{i}.png"], "text": f"s{i}", "label": i % 2} for i in range(9)]
    choices = [{"images": [], "text": ["x", "y"], "label": 1, "image_ids": None}]
    for rows in (pairs, choices):
        assert list(Examples.of(iter(rows))) == [{k: v for k, v in r.items() if v is not None} for r in rows]
    columns = Examples.of(iter(ROWS))
    assert len(columns.c["image_table"]) == 4 and columns.c["image_rows"].dtype.itemsize == 4  # paths once, int32 rows
    assert list(columns) == ROWS
    assert list(columns.take([29, 3, 3, 0])) == [ROWS[29], ROWS[3], ROWS[3], ROWS[0]]
    assert list(columns.take([5, 1]).take([1])) == [ROWS[1]] and list(columns[2:4]) == ROWS[2:4]


@dataclass
class Listed(Task):
    rows: tuple = ()
    as_columns: bool = False

    def examples(self, split, data_root):
        rows = [dict(r, text=f"{split} {r['text']}") for r in self.rows]
        return Examples.of(rows) if self.as_columns else rows


def drawn_as_before(task: Listed, split: str, val_size: int, limit=None, shots=None, seed=0) -> list:
    """Oracle: the split as Task.load drew it before columns, on the list of examples itself."""
    data = task.examples("test" if split == "test" else "train", None)
    if split != "test":
        random.Random(f"val-split-{task.name}").shuffle(data)
        n_val = min(val_size, len(data) // 5)
        data = data[:n_val] if split == "val" else data[n_val:]
        if split == "train" and shots is not None:
            data = low_shot(data, shots, seed)
    if limit is not None and len(data) > limit:
        data = random.Random(f"cap-{task.name}-{split}").sample(data, limit)
    return data


@pytest.mark.parametrize("options", [dict(), dict(limit=7), dict(shots=2), dict(shots=0.4, limit=5, seed=3)])
def test_columns_split_as_a_list_of_dicts_does(options):
    """The validation carve, caps and low-shot draws on columns and on a list of dicts are those
    drawn before columns (the runs' splits, and so their scores, do not change)."""
    labels = [f"c{k}" for k in range(8)]
    plain, columns = (Listed("vqa", "vl", labels, loss="soft_bce", metric="vqa_score", rows=tuple(ROWS), as_columns=c)
                      for c in (False, True))
    for split in ("train", "val", "test"):
        want = drawn_as_before(plain, split, 6, **options)
        assert list(columns.load(split, val_size=6, **options)) == want == plain.load(split, val_size=6, **options)
        assert len(want) > 0


def test_a_file_task_parses_its_files_once_per_process(monkeypatch):
    from pathlib import Path
    root = str(Path(__file__).parent / "fixtures" / "climb")
    monkeypatch.setattr(_files, "PARSED", {})
    task = TASKS.get("snli_ve")()
    reads = []
    original = type(task).read
    monkeypatch.setattr(type(task), "read", lambda self, split, folder: reads.append(split) or original(self, split, folder))
    train, val = task.load("train", data_root=root, val_size=4), task.load("val", data_root=root, val_size=4)
    task.load("test", data_root=root)
    TASKS.get("snli_ve")().load("train", data_root=root, val_size=4)  # another instance: the same files
    assert reads == ["train", "test"] and len(train) and len(val)
