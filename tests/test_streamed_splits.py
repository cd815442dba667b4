"""Encoded splits on disk, memory-mapped, their images read from the image store per batch: never
copied whole; soft targets stored sparse and densified per batch to exactly the dense targets;
batches, not splits, go to a device."""
from pathlib import Path

import torch

from bench.config import resolve
from bench.data import load_split, soft_targets
from bench.registry import METHODS, TASKS
from bench.runner import Run
from conftest import ToyBackbone
from tiny_models import tiny  # noqa: F401  (session fixture)

CLIMB = Path(__file__).parent / "fixtures" / "climb"


def vqav2():
    task = TASKS.get("vqav2")()
    task.prepare(str(CLIMB))
    return task


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def test_a_cached_split_is_memory_mapped_and_its_images_read_per_batch(tmp_path):
    backbone, task = ToyBackbone(), vqav2()
    load_split(backbone, task, "train", tmp_path, data_root=str(CLIMB), val_size=8)  # encodes and writes
    split = load_split(backbone, task, "train", tmp_path, data_root=str(CLIMB), val_size=8)  # reads
    directory = next((tmp_path / "splits").rglob("split.json")).parent
    maps = mapped_files()
    for name in split.fields:
        assert str(directory / f"{name}.npy") in maps, name
    assert split.to("cpu").images is split.images  # moving a split moves nothing; its batches go
    split.batch(torch.arange(len(split)))  # every image read: the image store's shards, read, never mapped
    assert not any(str(split.images.directory / shard) in mapped_files() for shard in split.images.shards)


def test_soft_targets_are_stored_sparse_and_batches_are_dense(tmp_path):
    backbone, task = ToyBackbone(), vqav2()
    examples = task.load("train", data_root=str(CLIMB), val_size=8)
    split = load_split(backbone, task, "train", tmp_path, data_root=str(CLIMB), val_size=8)
    assert split.fields["label"].shape[1] < task.n_classes  # K scored answers per question, not all C
    dense = soft_targets([ex["label"] for ex in examples], task.n_classes)  # oracle: the dense matrix
    assert dense.sum() > 0 and (dense > 0).sum(1).max() > 1  # several scored answers in some questions
    idx = torch.tensor([5, 0, len(split) - 1, 1])
    assert torch.equal(split.batch(idx)["label"], dense[idx])
    order = torch.cat([b["label"] for b in split.batches(7)])
    assert torch.equal(order, dense)


def test_a_leftover_partial_split_directory_is_never_read(tmp_path):
    backbone, task = ToyBackbone(), TASKS.get("digits")()
    good = load_split(backbone, task, "test", tmp_path, limit=20)
    directory = next((tmp_path / "splits").rglob("split.json")).parent
    (directory / "split.json").unlink()  # as if the writer died before its last file
    again = load_split(backbone, task, "test", tmp_path, limit=20)
    every = torch.arange(len(good.images))
    assert torch.equal(again.images[every], good.images[every]) and (directory / "split.json").exists()


def test_a_split_holds_no_copy_of_its_images_encodings(tmp_path, monkeypatch):
    """Each image's encoding is on disk once, in the image store: the split's directory holds where
    its rows are, fewer bytes than the encodings themselves, and gathers exactly the encoder's
    output (oracle: the split encoded without a cache), for any index shape, across shards."""
    monkeypatch.setattr("bench.cache.IMAGE_CHUNK", 16)  # 40 images: three shards
    backbone, task = ToyBackbone(), TASKS.get("digits")()
    split = load_split(backbone, task, "test", tmp_path, limit=40)
    fresh = load_split(backbone, task, "test", None, limit=40)
    directory = next((tmp_path / "splits").rglob("split.json")).parent
    encodings = fresh.images.numel() * fresh.images.element_size()
    assert sum(p.stat().st_size for p in directory.iterdir()) < encodings / 4
    assert len(split.images.shards) == 3
    index = torch.tensor([[3, 0, 20], [len(fresh.images) - 1, 3, 17]])
    assert torch.equal(split.images[index], fresh.images[index])
    batch, expected = split.batch(torch.tensor([7, 2, 2])), fresh.batch(torch.tensor([7, 2, 2]))
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)


def test_a_run_sends_batches_to_its_device_never_a_split(tmp_path, tiny):  # noqa: F811
    """Every split a run reads (tiny ViLT, pixels, on the CLiMB fixtures) stays on the host; what
    goes to the run's device is one batch at a time. The device is `meta` here (no GPU needed):
    tensors moved there keep their shape and lose their values, which is all this checks."""
    cfg = resolve("finetune", METHODS.get("finetune"), [("data_root", str(CLIMB))], sequence="climb",
                  backbone=tiny["vilt"], quick=True)
    run = Run(cfg, "meta", tmp_path, lambda *_: None, True, None)
    splits = [s for name in run.data for s in run.data[name]]
    assert all(x.device.type == "cpu" for s in splits for x in s.tensors())
    for s in splits:
        assert len(s) > 2
        for size in (2, cfg.batch_size):
            sent = [v for b in s.batches(size) for v in b.values()]
            assert all(v.device.type == "meta" for v in sent)
            assert max(len(v) for v in sent) == min(size, len(s))  # a batch, never more
