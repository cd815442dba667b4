"""A split's images are read from the image store's shards per batch, and reading them leaves
nothing behind in the process: its resident memory does not grow with the images it has read
(mapped shard pages used to stay resident: +1.35 GB for perf g's ViLT at 8x the data)."""
import os
import re
from pathlib import Path

import pytest
import torch

import bench.cache
from bench.cache import ImageFeatureStore

ROW = (4, 256, 256)  # 256 KiB of uint8 per image: large enough for pages to show in RSS, small enough to be fast


def features(seeds: list, shape=ROW, dtype=torch.uint8) -> torch.Tensor:
    """Each image's encoding, a function of its seed alone (the oracle recomputes it)."""
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if dtype == torch.uint8 else torch.randn(shape, generator=g)
        out.append(x.to(dtype))
    return torch.stack(out)


def store_rows(tmp_path: Path, n: int, **kind):
    keys, seeds = [f"id:{s}" for s in range(n)], list(range(n))
    rows, bad = ImageFeatureStore(tmp_path, "probe").rows(keys, seeds, lambda ims: features(ims, **kind))
    assert not bad
    return rows


def open_files() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return names


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def resident_mb() -> float:
    """This process's resident memory: anonymous + file pages + shared (VmRSS)."""
    return status_mb("VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_reading_every_image_of_a_split_holds_none_of_them(tmp_path, monkeypatch):
    """Every image read once in batches of 16, at 1x (32 images, 8 MiB) and 8x (256 images,
    64 MiB) over shards of 32: what the process holds afterwards does not grow with what it read
    (a mapped read keeps about 1.8x the bytes it touched), and no shard file stays mapped."""
    monkeypatch.setattr("bench.cache.IMAGE_CHUNK", 32)
    row_mb = torch.tensor(ROW).prod().item() / 2 ** 20
    growth = {}
    for n in (32, 256):
        rows = store_rows(tmp_path / str(n), n)
        before = resident_mb()
        for i in range(0, n, 16):
            batch = rows[torch.arange(i, min(n, i + 16))]
            assert torch.equal(batch, features(range(i, min(n, i + 16))))  # oracle: recomputed encodings
        growth[n] = resident_mb() - before
        maps = Path("/proc/self/maps").read_text()
        assert not any(str(rows.directory / shard) in maps for shard in rows.shards)
        del batch
    read_more_mb = (256 - 32) * row_mb  # 56 MiB more read at 8x
    assert growth[256] - growth[32] < read_more_mb / 4, (growth, read_more_mb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_rows_read_from_shards_are_the_encodings_for_any_index(tmp_path, monkeypatch, dtype):
    """Rows come back bit-exact for every dtype a backbone caches, across shards, for an int, a
    list, a 2-d index (repeats included) and an empty one, with fewer files kept open than the
    split has shards (closed and opened again as reads move between them)."""
    monkeypatch.setattr("bench.cache.IMAGE_CHUNK", 8)
    monkeypatch.setattr("bench.cache.OPEN_SHARDS", 2)
    rows = store_rows(tmp_path, 20, shape=(3, 5), dtype=dtype)
    expected = features(range(20), shape=(3, 5), dtype=dtype)
    assert len(rows.shards) == 3 and rows.shape == expected.shape
    assert torch.equal(rows[17], expected[17])
    assert torch.equal(rows[[19, 0, 8]], expected[[19, 0, 8]])
    index = torch.tensor([[3, 3, 16], [9, 0, 19]])
    assert torch.equal(rows[index], expected[index]) and rows[index].dtype == dtype
    assert rows[torch.arange(0)].shape == (0, 3, 5)
    if Path("/proc/self/fd").is_dir():  # Linux: the shard files this process has open
        assert sum(str(rows.directory) in name for name in open_files()) <= 2 and len(bench.cache._OPEN) <= 2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_encoding_a_split_leaves_no_freed_pixels_resident(tmp_path):
    """Encoding 64 COCO-sized images for a ViLT at its real processor size (1.48 MB canvases, 95
    MB of them; more in float while resizing) frees all of it; the process must not keep the freed
    heap resident afterwards (it kept 220 MB here, ~0.8 GB for perf g's 500 images, for the
    whole run)."""
    from bench.backbones import build_backbone
    from bench.data import load_split
    from bench.perf_scale import tiny_vilt
    from bench.registry import TASKS
    from tools.make_climb_data import generate
    data = generate(tmp_path / "data", tasks=["vqav2"], counts={"vqav2": {"train": (128, 64), "test": (10, 5)}})
    backbone = build_backbone(f"vilt:{tiny_vilt(tmp_path / 'vilt')}")
    task = TASKS.get("vqav2")()
    task.prepare(str(data))
    before = status_mb("RssAnon")
    split = load_split(backbone, task, "train", tmp_path / "cache", data_root=str(data), val_size=4)
    assert len(split.images) > 50  # the split's images were encoded here
    held = status_mb("RssAnon") - before
    assert held < 40, held
