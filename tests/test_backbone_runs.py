"""Methods run through the runner on the real backbones (tiny models loaded by path): fine-tuning,
adapters, I2I and ScaLearn on the default sequence (`--quick`, fewer steps and examples), a
two-image task, and learning through ViLT's text-only path. transformers CLIP runs every method in
test_backbone_methods.py."""
import random

import pytest

from bench.errors import BenchError
from bench.registry import TASKS
from bench.task import Task
from conftest import run_method
from tasks.digits import _digits
from tiny_models import tiny  # noqa: F401  (session fixture)

FAST = ["train_cap=48", "test_cap=32", "val_size=16"]
BACKBONES = ["vilt", "open_clip_arch"]  # open_clip as `open_clip:<arch .json>:<checkpoint>`


class DigitPairTask(Task):
    """Two images, one question: is the left digit the larger one? (NLVR2's shape: n_images = 2)"""

    def examples(self, split, data_root=None):
        images, targets, order = _digits()
        ids = order[-500:] if split == "test" else order[:-500]
        rng = random.Random(f"pairs-{split}")
        pairs = [rng.sample(ids, 2) for _ in range(len(ids) // 2)]
        return [{"images": [images[a], images[b]], "image_ids": [f"digits/{a}", f"digits/{b}"],
                 "text": "is the left digit larger?", "label": int(targets[a] > targets[b])} for a, b in pairs]


if "digit_pair" not in TASKS:
    TASKS.register("digit_pair")(lambda: DigitPairTask("digit_pair", "vl", ["no", "yes"], n_images=2))


def run(tmp_path, cache_dir, tiny, name, method, **kw):  # noqa: F811
    return run_method(method, tmp_path / "results", cache_dir, backbone=tiny[name], steps=2, sets=FAST, **kw)


def lower_triangle(m):
    A = m["matrix"]
    return [(i, j, A[i][j]) for i in range(len(A)) for j in range(i + 1)]


def assert_no_forgetting(m):
    """Frozen backbone, one adapter set per task: task j's score never moves after task j."""
    cells = lower_triangle(m)
    assert all(v is not None and 0 <= v <= 100 for _, _, v in cells)
    A = m["matrix"]
    assert all(A[i][j] == A[j][j] for i, j, _ in cells)


@pytest.mark.parametrize("name", BACKBONES)
def test_finetune_adapter_and_i2i_run_on_every_backbone(tmp_path, cache_dir, tiny, name):  # noqa: F811
    finetune = run(tmp_path, cache_dir, tiny, name, "finetune")
    adapter = run(tmp_path, cache_dir, tiny, name, "adapter")
    i2i = run(tmp_path, cache_dir, tiny, name, "i2i")
    assert all(v is not None and 0 <= v <= 100 for _, _, v in lower_triangle(finetune))
    assert min(finetune["params"]["trainable_per_task"]) > 50 * max(adapter["params"]["trainable_per_task"])
    assert_no_forgetting(adapter)
    assert_no_forgetting(i2i)
    assert [s["stage"] for s in i2i["stages"] if s["task"] == 1] == ["improvise", "initialize", "train"]


def test_scalearn_runs_on_vilt_and_its_uniform_variant_on_open_clip(tmp_path, cache_dir, tiny):  # noqa: F811
    assert_no_forgetting(run(tmp_path, cache_dir, tiny, "vilt", "scalearn"))
    assert_no_forgetting(run(tmp_path, cache_dir, tiny, "open_clip_arch", "scalearn_uniform"))
    # vector ScaLearn stacks one d-wide tensor over all sites; CLIP's towers differ in width
    with pytest.raises(BenchError, match=r"differ in width \(\[32, 48\]\)"):
        run(tmp_path, cache_dir, tiny, "open_clip_arch", "scalearn")


@pytest.mark.parametrize("name", ["vilt", "hf_clip"])
def test_two_image_task_trains_with_a_head_on_the_concatenation(tmp_path, cache_dir, tiny, name):  # noqa: F811
    seq = tmp_path / "pairs.yaml"
    seq.write_text("tasks: [digit_pair, vqa_color]\n")
    m = run(tmp_path, cache_dir, tiny, name, "adapter", sequence=str(seq))
    assert_no_forgetting(m)
    assert m["tasks"] == ["digit_pair", "vqa_color"]


def test_vilt_learns_a_text_only_task_through_the_mean_image(tmp_path, cache_dir, tiny):  # noqa: F811
    seq = tmp_path / "text.yaml"
    seq.write_text("tasks: [text_mention]\noptions: {steps: 40, train_cap: 640, test_cap: 200, val_size: 32}\n")
    m = run_method("finetune", tmp_path / "results", cache_dir, backbone=tiny["vilt"], sequence=str(seq),
                   sets=["lr=1e-3", "steps=40", "train_cap=640", "test_cap=200", "val_size=32"])
    assert m["matrix"][0][0] > 2 * m["chance"][0]  # 11 classes: chance 9.1 %
