"""Unreadable images in a CLiMB-layout dataset (tools/make_climb_data.py): by default one error line
naming the file and the option that skips such images, with nothing half-written left in the
cache; with `--set skip_bad_images=true` their examples are dropped from the splits and counted
per task and split in metrics.json."""
import json
from pathlib import Path

import pytest
import torch
import yaml

import run_bench
from bench.config import resolve
from bench.registry import METHODS
from bench.runner import Run, execute
from tools.make_climb_data import generate

TRAIN, TEST = (30, 10), (12, 4)  # (questions, images): question k asks about image k % images


@pytest.fixture(scope="module")
def climb(tmp_path_factory):
    """Generated VQAv2 with a truncated JPEG among the training images and a file that is no image
    at all among the test images; a one-task sequence over all of it."""
    root = tmp_path_factory.mktemp("bad")
    data = generate(root / "data", tasks=["vqav2"], odd=0.0, counts={"vqav2": {"train": TRAIN, "test": TEST}})
    images = data / "ms-coco" / "images"
    truncated, garbage = images / f"{1 + 3:012d}.jpg", images / f"{10_000_000 + 2:012d}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    garbage.write_bytes(b"<html>404 not found</html>")
    sequence = root / "vqav2.yaml"
    sequence.write_text(yaml.safe_dump({"tasks": ["vqav2"], "options": {"steps": 2, "val_size": 5, "train_cap": None,
                                                                        "test_cap": None}}))
    return data, sequence, truncated, garbage


def questions_about(data, tag: str, image) -> int:
    """Oracle: the questions of an annotation file that ask about `image`, read from the JSON."""
    anns = json.loads((data / "vqav2" / f"v2_mscoco_{tag}2014_annotations.json").read_text())["annotations"]
    return sum(a["image_id"] == int(image.stem) for a in anns)


@pytest.mark.parametrize("workers", ["1", "2"])  # one worker runs in this process: the line must not depend on it
def test_an_unreadable_image_is_one_error_line_naming_it_and_the_option(climb, tmp_path, capsys, monkeypatch, workers):
    data, sequence, truncated, _ = climb
    monkeypatch.setattr("bench.cache.IMAGE_CHUNK", 2)  # chunks finish before the bad image's
    cache = tmp_path / "cache"
    code = run_bench.main(["run", "--sequence", str(sequence), "--methods", "finetune", "--backbone", "toy", "--workers", workers,
                           "--out", str(tmp_path / "out"), "--set", f"data_root={data}", "--set", f"cache_dir={cache}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot read image {truncated}: ") and "--set skip_bad_images=true" in lines[0]
    files = [p for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]
    assert files and all(p.parent.name == "toy-8px" and p.suffix == ".pt" for p in files), files  # shards only, no split
    for shard in files:  # each written whole: the chunks finished before the bad image, kept for the next encode
        blob = torch.load(shard, weights_only=True)
        assert len(blob["keys"]) == len(blob["feats"]) == 2


def test_skipped_images_drop_their_examples_and_are_counted(climb, tmp_path):
    data, sequence, truncated, garbage = climb
    sets = [("data_root", str(data)), ("skip_bad_images", "true")]
    cfg = resolve("finetune", METHODS.get("finetune"), sets, sequence=str(sequence), backbone="toy")
    strict = resolve("finetune", METHODS.get("finetune"), sets[:1], sequence=str(sequence), backbone="toy")
    assert cfg.run_id != strict.run_id  # part of the run's identity
    metrics = execute(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda *_: None)
    splits = Run(cfg, "cpu", tmp_path / "cache", lambda *_: None, True, None).data  # as the run read them
    skipped = metrics["skipped_images"]["vqav2"]
    assert skipped["test"]["images"] == 1 and str(garbage) in skipped["test"]["first"]
    assert skipped["test"]["examples"] == questions_about(data, "val", garbage) > 0
    assert len(splits["test"][0]) == TEST[0] - skipped["test"]["examples"]
    carved = [skipped[name] for name in ("train", "val")]  # both carved from the training file
    assert sum(s["examples"] for s in carved) == questions_about(data, "train", truncated) > 0
    assert len(splits["train"][0]) + len(splits["val"][0]) == TRAIN[0] - sum(s["examples"] for s in carved)
    assert all(s["images"] == (s["examples"] > 0) for s in carved)
    assert all(str(truncated) in s["first"] for s in carved if s["images"])


SKIP_HINT = "; --set skip_bad_images=true drops the examples of unreadable images and counts them instead"
DOC_ROWS = {  # docs/errors.md's rows: case -> the one line, {image} the unreadable file
    "truncated image": ("truncate", "error: cannot read image {image}: Truncated File Read" + SKIP_HINT),
    "file that is not an image": ("html", "error: cannot read image {image}: cannot identify image file '{image}'" + SKIP_HINT),
}


@pytest.mark.parametrize("case", DOC_ROWS)
def test_docs_errors_catalogue_gives_the_exact_line_of_an_unreadable_image(tmp_path, capsys, case):
    """docs/errors.md shows exactly the line a run prints for such an image (a path under the data
    root shown as <data_root>), and the run prints exactly that line and nothing else."""
    damage, message = DOC_ROWS[case]
    data = generate(tmp_path / "data", tasks=["vqav2"], odd=0.0, counts={"vqav2": {"train": TRAIN, "test": TEST}})
    image = data / "ms-coco" / "images" / f"{4:012d}.jpg"  # a training image
    image.write_bytes(image.read_bytes()[:300] if damage == "truncate" else b"<html>404 not found</html>")
    sequence = tmp_path / "seq.yaml"
    sequence.write_text(yaml.safe_dump({"tasks": ["vqav2"], "options": {"steps": 2, "val_size": 5}}))
    code = run_bench.main(["run", "--sequence", str(sequence), "--methods", "finetune", "--backbone", "toy", "--workers", "2",
                           "--out", str(tmp_path / "out"), "--set", f"data_root={data}", "--set", f"cache_dir={tmp_path / 'cache'}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and lines == [message.format(image=image)], lines
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name in ("DONE", "metrics.json", "checkpoint.pt")]
    doc = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    shown = message.format(image=f"<data_root>/{image.relative_to(data)}")
    assert any(row.startswith(f"| {case} |") and row.endswith(f"| `{shown}` |") for row in doc.splitlines()), shown
