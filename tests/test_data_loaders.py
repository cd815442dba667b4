"""Real-data loaders on tiny fixtures in the datasets' own file formats (made by
tests/fixtures/make_fixtures.py): counts, labels and VQA soft targets in every supported layout
(CLiMB's data root, the official distributions, local Hugging Face files), low-shot sampling,
one-line errors naming the expected layout and the first bad file/line, validation before any
training, and the CLiMB sequence (+ downstream tasks) end to end on the toy backbone."""
import importlib.util
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from bench.data import soft_targets
from bench.errors import BenchError
from bench.registry import TASKS
from bench.task import low_shot
from tasks.climb import vcr_text, vqa_soft_score

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

VL = ["vqav2", "nlvr2", "snli_ve", "vcr"]
TEXT = ["imdb", "sst2", "piqa", "hellaswag", "commonsenseqa"]
IMAGE = ["imagenet", "inat2019", "places365", "coco_cls"]
CASES = [(root, name) for root in ("climb", "official") for name in VL + TEXT + IMAGE] + [("hf", name) for name in TEXT]


def load(name, root, split="train"):
    task = TASKS.get(name)()
    task.prepare(str(root))
    return task, task.examples(split, str(root))


@pytest.mark.parametrize("root,name", CASES)
def test_every_loader_reads_every_layout(root, name):
    task = TASKS.get(name)()
    task.prepare(str(FIXTURES / root))
    for split in ("train", "test"):
        data = task.examples(split, str(FIXTURES / root))
        assert len(data) == fx.COUNTS[name][split]
        for ex in data:
            assert len(ex["images"]) == task.n_images and all(Path(p).is_file() for p in ex["images"])
            if task.loss == "soft_bce":
                assert all(0 <= k < task.n_classes and 0 < v <= 1 for k, v in ex["label"].items())
            else:
                assert 0 <= ex["label"] < (task.choices or task.n_classes)
            if task.choices:
                assert isinstance(ex["text"], list) and len(ex["text"]) == task.choices
            elif task.kind != "image":
                assert isinstance(ex["text"], str) and ex["text"]
        if task.loss != "soft_bce":  # the fixtures use every class
            assert len({ex["label"] for ex in data}) == (task.choices or task.n_classes)


def test_vqa_soft_score_is_the_official_leave_one_out_accuracy():
    # CLiMB's get_score: 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0 (min(#/3, 1) over 10 choose 9)
    assert [vqa_soft_score(c) for c in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert vqa_soft_score(10) == 1.0 and vqa_soft_score(3, 3) == pytest.approx(2 / 3)


def test_vqa_targets_vocabulary_and_answers_outside_it():
    task, data = load("vqav2", FIXTURES / "climb")
    assert task.labels == fx.VQA_VOCAB  # CLiMB's ans2label.pkl, in index order
    assert task.chance == 0.0 and task.metric == "vqa_score" and task.loss == "soft_bce"
    idx = {a: k for k, a in enumerate(task.labels)}
    soft = next(ex for ex in data if f"number {fx.VQA_SOFT_QUESTION}?" in ex["text"])
    # 4 yes, 3 no, 2 red, 1 maybe (not in the vocabulary: dropped, as CLiMB)
    assert soft["label"] == {idx["yes"]: 1.0, idx["no"]: 0.9, idx["red"]: 0.6}
    dense = soft_targets([soft["label"], [0.0] * 6], len(task.labels))
    assert dense.shape == (2, 6) and dense[0, idx["no"]].item() == pytest.approx(0.9) and dense[1].sum() == 0
    official, _ = load("vqav2", FIXTURES / "official")
    # no vocabulary file: the answers given >= 9 times ("zebra" only twice), in order of first appearance
    assert sorted(official.labels) == sorted(fx.VQA_FREQUENT) and official.labels[:2] == ["yes", "2"]


def test_answer_vocabulary_pickle_cannot_run_code(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "climb" / "vqav2", root / "vqav2")
    marker = tmp_path / "ran"

    class Payload:  # what a malicious file holds: a call made while unpickling
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    (root / "vqav2" / "ans2label.pkl").write_bytes(pickle.dumps({"yes": 0, "bad": Payload()}))
    with pytest.raises(BenchError, match=r"refusing to import (posix|nt)\.system"):
        TASKS.get("vqav2")().prepare(str(root))
    assert not marker.exists()


def test_vl_labels_images_and_texts():
    task, data = load("nlvr2", FIXTURES / "official")  # train images in numbered sub-folders
    assert data[0]["label"] == 0 and data[1]["label"] == 1  # fixture rows 0, 1: "False", "True"
    assert [Path(p).name for p in data[0]["images"]] == ["train-100-0-img0.png", "train-100-0-img1.png"]
    task, data = load("snli_ve", FIXTURES / "climb")
    assert task.labels == ["entailment", "contradiction", "neutral"] and task.chance == 33.33  # CLiMB's order
    assert [ex["label"] for ex in data[:3]] == [0, 2, 1]  # fixture rows: entailment, neutral, contradiction
    task, data = load("vcr", FIXTURES / "climb")
    assert data[0]["text"][0] == "What are person1 and person2 doing with bottle3 ? [SEP] person1 is pouring it 0 ."
    assert data[1]["label"] == 1 and Path(data[1]["images"][0]).parent.name == "answer"  # CLiMB's drawn images
    assert vcr_text(["see", [0, 2, 1]], ["person", "car", "dog"]) == "see person1, dog3 and car2"


def test_image_label_spaces_come_from_the_files():
    for root in ("climb", "official"):
        task, data = load("imagenet", FIXTURES / root)
        assert task.labels == fx.WNIDS and task.chance == pytest.approx(100 / 3)
        test = task.examples("test", str(FIXTURES / root))  # LOC_val_solution.csv (climb) or class folders
        assert [ex["label"] for ex in test[:3]] == ([0, 0, 0] if root == "official" else [0, 1, 2])
        places, _ = load("places365", FIXTURES / root)
        assert places.labels == [name for _, name in fx.PLACES]
    inat, data = load("inat2019", FIXTURES / "climb")
    assert inat.labels == [name for _, name, _ in fx.INAT] and data[4]["label"] == 1
    coco, data = load("coco_cls", FIXTURES / "official")
    assert coco.labels == [name for _, name in fx.COCO_CATEGORIES]  # ids 1, 3, 18, 44 -> 0..3
    assert all(set(ex["label"].values()) == {1.0} for ex in data)  # multi-label 0/1 targets
    test = coco.examples("test", str(FIXTURES / "official"))
    density = sum(len(ex["label"]) for ex in test) / len(test) / 4
    assert coco.chance == pytest.approx(100 * density)  # precision@1 of a random class


def test_low_shot_fraction_and_k_per_class_are_seeded():
    task, data = load("snli_ve", FIXTURES / "climb")
    picked = low_shot(data, 4, seed=0)
    assert sorted(ex["label"] for ex in picked) == [0] * 4 + [1] * 4 + [2] * 4
    assert low_shot(data, 4, seed=0) == picked and low_shot(data, 4, seed=1) != picked
    assert len(low_shot(data, 0.2, seed=0)) == round(0.2 * len(data))
    _, vqa = load("vqav2", FIXTURES / "climb")
    per_answer = low_shot(vqa, 2, seed=0)  # sparse soft labels: grouped by their best answer
    assert len(per_answer) <= 2 * len(fx.VQA_VOCAB) and len(per_answer) >= 2 * len(fx.VQA_FREQUENT)
    train = task.load("train", shots=4, seed=0, data_root=str(FIXTURES / "climb"), val_size=6)
    val = task.load("val", data_root=str(FIXTURES / "climb"), val_size=6)
    assert len(train) == 12 and len(val) == 6 and not {ex["text"] for ex in val} & {ex["text"] for ex in train}


def one_line_error(name, root, split="train") -> str:
    with pytest.raises(BenchError) as e:
        task = TASKS.get(name)()
        task.prepare(str(root) if root else None)
        task.examples(split, str(root) if root else None)
    message = str(e.value)
    assert "\n" not in message and "expected layout:" in message
    return message


def corrupt(tmp_path, rel: str, edit) -> Path:
    """A copy of the climb fixture root with file `rel` rewritten by edit(lines) -> lines."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "climb", root)
    path = root / rel
    path.write_text("".join(edit(path.read_text().splitlines(keepends=True))))
    return root


def test_missing_data_root_or_dataset_folder(tmp_path):
    assert "--set data_root=<dir>" in one_line_error("vqav2", None)
    message = one_line_error("nlvr2", tmp_path)
    assert "no folder 'nlvr2'" in message and "nlvr2/data/<train|dev>.json" in message
    message = one_line_error("sst2", tmp_path / "missing")
    assert "is not a directory" in message


@pytest.mark.parametrize("name,rel,edit,expected", [
    ("snli_ve", "snli-ve/snli_ve_train.jsonl", lambda ls: ls[:2] + ["{not json\n"] + ls[3:], "snli_ve_train.jsonl line 3: malformed JSON"),
    ("nlvr2", "nlvr2/data/train.json", lambda ls: ls[:1] + [ls[1].replace('"sentence"', '"sent"')] + ls[2:], "train.json line 2: missing field 'sentence'"),
    ("vcr", "vcr/annotation/train.jsonl", lambda ls: ls[:4] + [ls[4].replace('"answer_label": 0', '"answer_label": 7')] + ls[5:], "train.jsonl line 5: expected 4 answer_choices"),
    ("vcr", "vcr/annotation/train.jsonl", lambda ls: ls[:1] + [ls[1].replace("[2]", "[9]")] + ls[2:], "train.jsonl line 2: an object reference"),
    ("hellaswag", "hellaswag/hellaswag_train.jsonl", lambda ls: ls[:5] + [ls[5].replace('"label": 1', '"label": 6')] + ls[6:], "hellaswag_train.jsonl line 6: label 6 is not in 0..3"),
    ("piqa", "piqa/train-labels.lst", lambda ls: ls[:-1], "train-labels.lst has 23 labels for 24 lines"),
    ("snli_ve", "snli-ve/snli_ve_train.jsonl", lambda ls: ls[:3] + [ls[3].replace("1000092798", "5")] + ls[4:], "snli_ve_train.jsonl line 4: Flickr30k image 5 not found"),
    ("vqav2", "vqav2/v2_mscoco_train2014_annotations.json", lambda ls: [l.replace('"image_id": 100,', '"image_id": 77,', 1) for l in ls], "annotations[0]: image_id differs from question 0's"),
])
def test_bad_record_names_file_and_line(tmp_path, name, rel, edit, expected):
    assert expected in one_line_error(name, corrupt(tmp_path, rel, edit))


def test_missing_image_and_bad_list_line(tmp_path):
    root = corrupt(tmp_path, "nlvr2/data/dev.json", lambda ls: ls)
    (root / "nlvr2/images/dev/dev-100-0-img1.png").unlink()
    assert "line 1: image dev-100-0-img1.png not found" in one_line_error("nlvr2", root, "test")
    (root / "ms-coco/images/000000000101.jpg").unlink()
    assert "annotations[2]: image 101 not found in the COCO image folders" in one_line_error("vqav2", root)
    root = tmp_path / "places"
    shutil.copytree(FIXTURES / "official" / "Places365", root / "Places365")
    path = root / "Places365" / "places365_val.txt"
    path.write_text(path.read_text().replace("Places365_val_00000002.jpg 1", "Places365_val_00000002.jpg"))
    assert "places365_val.txt line 2: expected '<image path> <class index" in one_line_error("places365", root, "test")


def test_hugging_face_files_of_the_reported_splits_only():
    from tasks._files import hf_split_files
    imdb = FIXTURES / "hf" / "imdb"
    assert [p.name for p in hf_split_files(imdb, "train")] == ["train-00000-of-00001.parquet"]
    assert [p.name for p in hf_split_files(imdb, "test")] == ["test-00000-of-00001.parquet"]  # not "unsupervised"
    csqa = [p.relative_to(FIXTURES / "hf") for p in hf_split_files(FIXTURES / "hf" / "commonsenseqa", "validation")]
    assert csqa == [Path("commonsenseqa/validation/data-00000-of-00001.arrow")]  # save_to_disk folder
    sst2 = TASKS.get("sst2")()
    with pytest.raises(BenchError, match=r"test.jsonl line 1: label -1 is not in 0..1"):  # the unlabelled GLUE test split
        [sst2.from_hf(w, r) for w, r in sst2.hf_records(FIXTURES / "hf" / "sst2", "test")]


def test_make_fixtures_writes_the_committed_files(tmp_path):
    fx.main(tmp_path)
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*")
                       if p.is_file() and p.parent != FIXTURES and "__pycache__" not in p.parts)
    assert made == committed


def test_climb_runs_end_to_end_on_fixtures(run):
    for method in ("finetune", "adapter"):
        m = run(method, sequence="climb", sets=[f"data_root={FIXTURES / 'climb'}"])
        assert m["tasks"] == VL and m["chance"] == [0.0, 50.0, 33.33, 25.0]
        assert all(v is not None and 0 <= v <= 100 for i, row in enumerate(m["matrix"]) for v in row[:i + 1])
        assert "downstream" not in m or m["downstream"] == []


def test_a_bad_record_in_a_later_task_fails_before_any_training(run, tmp_path):
    root = corrupt(tmp_path, "vcr/annotation/val.jsonl", lambda ls: ls[:1] + ["{oops\n"] + ls[2:])
    out = tmp_path / "results"
    with pytest.raises(BenchError, match=r"vcr/annotation/val.jsonl line 2: malformed JSON"):
        run("finetune", sequence="climb", sets=[f"data_root={root}"], out=out)
    assert not list(out.rglob("checkpoint.pt"))  # the first task never started


def test_downstream_tasks_start_from_the_upstream_model(run, tmp_path, monkeypatch):
    import bench.runner as runner
    seen = {}
    score = runner.score

    def spy(method, t, *args):
        if t == len(VL):  # a downstream task is scored as task index T of a fresh method
            seen[method.tasks[t].name] = {k: v.clone() for k, v in method.net.state_dict().items() if k.startswith("adapters.")}
        return score(method, t, *args)
    monkeypatch.setattr(runner, "score", spy)
    out = tmp_path / "results"
    m = run("adapter", sequence="climb_downstream", sets=[f"data_root={FIXTURES / 'climb'}"], out=out)
    names = [d["task"] for d in m["downstream"]]
    assert names == TEXT + IMAGE and set(seen) == set(names)
    assert all(0 <= d["score"] <= 100 and d["train_examples"] > 0 for d in m["downstream"])
    upstream = torch.load(next(out.rglob("checkpoint.pt")), weights_only=True)["method"]
    for state in seen.values():  # the upstream tasks' adapters arrive unchanged; task T's own was trained
        assert all(torch.equal(state[k], v) for k, v in upstream.items() if k.startswith("adapters."))
        assert any(k.startswith(f"adapters.{len(VL)}.") for k in state)


def test_an_unreadable_image_is_a_one_line_error(tmp_path):
    from bench.backbones.embedded import load_image
    bad = tmp_path / "1000092795.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(BenchError, match=r"cannot read image .*1000092795.jpg"):
        load_image(str(bad))
