"""The shared on-disk cache (bench/cache.py, bench/data.py): image features stored per image and
reused across tasks, caps, seeds, runs and output directories; corrupt entries recomputed; the
default location."""
import shutil

import numpy as np
import pytest
import torch

from bench.cache import ImageFeatureStore, default_cache_dir, image_key
from bench.data import load_split
from bench.registry import TASKS
from conftest import ToyBackbone, run_method


@pytest.fixture
def encoded(monkeypatch):
    """The number of images the toy backbone encodes, call by call."""
    calls = []
    original = ToyBackbone.encode_images

    def counting(self, images):
        calls.append(len(images))
        return original(self, images)
    monkeypatch.setattr(ToyBackbone, "encode_images", counting)
    return calls


def stored(store, keys, images, encode):
    """The store's features of `images` (encoded when missing), gathered from its rows."""
    rows, _ = store.rows(keys, images, encode)
    return rows[torch.arange(len(rows))]


def keys(task, limit):
    return {image_key(im, i) for ex in task.load("test", limit=limit) for im, i in zip(ex["images"], ex["image_ids"])}


def test_splits_over_the_same_images_encode_each_image_once(tmp_path, encoded):
    backbone, color, shape = ToyBackbone(), TASKS.get("vqa_color")(), TASKS.get("vqa_shape")()
    load_split(backbone, color, "test", tmp_path, limit=200)
    assert sum(encoded) == len(keys(color, 200))
    encoded.clear()
    a = load_split(backbone, color, "test", tmp_path, limit=300)  # another cap, same task
    b = load_split(backbone, shape, "test", tmp_path, limit=300)  # another task, same images
    seen = keys(color, 200)
    new = (keys(color, 300) | keys(shape, 300)) - seen
    assert seen & keys(shape, 300) and seen & keys(color, 300)  # they do share images
    assert sum(encoded) == len(new)  # only the images not seen before
    for cached in (a, b):  # and the cached features are the encoder's
        task = color if cached is a else shape
        fresh = load_split(backbone, task, "test", None, limit=300)
        assert torch.equal(cached.images[torch.arange(len(cached.images))], fresh.images)
        assert all(torch.equal(cached.fields[k], fresh.fields[k]) for k in fresh.fields)


def test_a_second_run_encodes_no_image_even_without_its_encoded_splits(tmp_path, monkeypatch, encoded):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "shared"))
    first = run_method("finetune", tmp_path / "a", None, steps=1)  # cache_dir None: the shared default
    assert sum(encoded) > 0 and (tmp_path / "shared" / "images").is_dir()
    encoded.clear()
    run_method("finetune", tmp_path / "b", None, steps=1, seed=1)  # another output directory and seed
    assert sum(encoded) == 0
    shutil.rmtree(tmp_path / "shared" / "splits")  # the splits are rebuilt from the per-image store
    again = run_method("finetune", tmp_path / "c", None, steps=1)
    assert sum(encoded) == 0
    assert again["matrix"] == first["matrix"]


def test_corrupt_entries_are_recomputed(tmp_path, encoded, monkeypatch):
    monkeypatch.setattr("bench.cache.IMAGE_CHUNK", 16)  # 40 images: three shards
    monkeypatch.setattr("bench.data.IMAGE_CHUNK", 16)
    backbone, task = ToyBackbone(), TASKS.get("digits")()
    good = load_split(backbone, task, "test", tmp_path, limit=40)
    store = ImageFeatureStore(tmp_path, backbone.cache_key)
    shards = sorted(store.dir.glob("*.pt"))
    assert len(shards) == 3
    lost = torch.load(shards[1], weights_only=True)["keys"]
    expected = good.images[torch.arange(len(good.images))]
    for damaged in (shards[1], next((tmp_path / "splits").rglob("image_rows.npy"))):
        truncated = damaged.read_bytes()[:100] if damaged.suffix == ".npy" else b"not a tensor file"
        damaged.unlink()  # a new file: `good` maps the old one, as a reader in another process would
        damaged.write_bytes(truncated)
    encoded.clear()
    again = load_split(backbone, task, "test", tmp_path, limit=40)
    assert torch.equal(again.images[torch.arange(len(again.images))], expected)
    assert all(torch.equal(again.fields[k], good.fields[k]) for k in good.fields)
    assert sum(encoded) == len(lost) == 16  # just the lost shard's images
    assert not shards[1].exists()  # the unreadable shard is gone, its images in a new one


def test_a_killed_encode_resumes_after_its_last_finished_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.cache.IMAGE_CHUNK", 8)
    store, calls = ImageFeatureStore(tmp_path, "enc"), []

    def dies_on_third_chunk(ims):
        calls.append(len(ims))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-encode
        return torch.tensor(ims, dtype=torch.float32)[:, None]
    keys, images = [f"id:{i}" for i in range(30)], list(range(30))
    with pytest.raises(KeyboardInterrupt):
        stored(store, keys, images, dies_on_third_chunk)
    assert len(list(store.dir.glob("*.pt"))) == 2 and not list(store.dir.glob(".*.tmp"))
    calls.clear()
    fresh = ImageFeatureStore(tmp_path, "enc")
    out = stored(fresh, keys, images, lambda ims: calls.append(len(ims)) or torch.tensor(ims, dtype=torch.float32)[:, None])
    assert calls == [8, 6] and out[:, 0].tolist() == images  # the two finished chunks were kept


def test_stores_writing_one_encoding_keep_each_others_entries(tmp_path):
    stored(ImageFeatureStore(tmp_path, "enc"), ["id:a"], [0], lambda ims: torch.ones(len(ims), 3))
    stored(ImageFeatureStore(tmp_path, "enc"), ["id:b"], [0], lambda ims: torch.zeros(len(ims), 3))

    def fail(ims):
        raise AssertionError("should come from disk")
    both = stored(ImageFeatureStore(tmp_path, "enc"), ["id:a", "id:b"], [0, 0], fail)
    assert both.tolist() == [[1.0] * 3, [0.0] * 3]


def test_image_keys_follow_content(tmp_path):
    x = np.zeros((8, 8), dtype=np.uint8)
    y = x.copy()
    y[4, 4] = 1  # str(x) == str(y) for large arrays; their keys must still differ
    assert image_key(x) == image_key(x.copy()) != image_key(y)
    assert image_key(x, "digits/3") == "id:digits/3"
    path = tmp_path / "a.png"
    path.write_bytes(b"1")
    before = image_key(str(path))
    path.write_bytes(b"22")
    assert image_key(str(path)) != before


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MMCL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mmcl-bench"
