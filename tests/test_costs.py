"""Cost accounting: what a method pays is counted where it is paid. The frozen prefix's pass over
the training data is training time; modules that no forward reads are not parameters of the
model; a replay memory and a distillation teacher are stored."""
import time

import pytest
import torch

from bench.backbones.embedded import EmbeddedBackbone
from bench.data import load_split
from bench.method import n_params
from bench.prefix import FrozenPrefix
from bench.registry import BACKBONES, METHODS, TASKS
from conftest import run_method, task_context

TASK_NAMES = ("vqa_color", "text_mention", "digits")


def test_every_parameter_of_the_embedded_backbone_is_read_by_its_forward():
    backbone = EmbeddedBackbone()
    backbone.requires_grad_(True)
    text = backbone.encode_texts(["what colour is the shape?", "a"])
    batch = {**text, "image_feats": torch.randn(2, 1, 4, 1280)}
    backbone(batch).square().sum().backward()
    unread = [name for name, p in backbone.named_parameters() if p.grad is None]
    assert unread == [], unread  # e.g. a pooler the mean-pooled output never uses


def test_the_frozen_prefix_pass_is_counted_in_train_seconds(monkeypatch, tmp_path):
    real = FrozenPrefix.state

    def slow(self, batch):
        time.sleep(0.05)
        return real(self, batch)
    monkeypatch.setattr(FrozenPrefix, "state", slow)
    cache = tmp_path / "cache"  # its own: the session's cache may hold these prefix states, computed fast
    m = run_method("frozen", tmp_path / "a", cache, steps=1)
    # --quick: 192 training (32 carved off for validation) and 32 validation examples per task,
    # in batches of 256: one batch each, 4 tasks -> 8 slow batches before the first task
    first = m["time"]["train_s_per_task"][0]
    assert first >= 8 * 0.05, m["time"]
    # a second run reading the prefix from the cache is charged what computing it took
    again = run_method("frozen", tmp_path / "b", cache, steps=1, seed=1)
    assert again["time"]["train_s_per_task"][0] >= 8 * 0.05


@pytest.fixture(scope="module")
def toy(cache_dir):
    backbone = BACKBONES.get("toy")()
    tasks = [TASKS.get(n)() for n in TASK_NAMES]
    return tasks, [load_split(backbone, task, "train", cache_dir, limit=192, val_size=32) for task in tasks]


def build(name, toy, **hp):
    cls = METHODS.get(name)
    m = cls(BACKBONES.get("toy")(), toy[0], cls.HParams(**hp))
    m.setup()
    return m


def test_er_stores_its_memory(toy):
    er, finetune = build("er", toy, memory_fraction=0.1), build("finetune", toy)
    for t in range(len(TASK_NAMES)):
        er.begin_task(task_context(er, t, toy[1], seed=t))
    expected = 0
    for split in toy[1]:  # round(10 %) of each split, each example's token ids, mask and image features
        per_example = sum(v[0].numel() for k, v in split.fields.items() if k not in ("image_index",))
        per_example += split.images[0].numel() * split.fields["image_index"].shape[1] if "image_index" in split.fields else 0
        expected += round(0.1 * len(split)) * per_example
    report = er.param_report()
    assert report["memory_values"] == expected
    assert report["stored"] == finetune.param_report()["stored"] + expected


def test_lwf_stores_its_teacher(toy):
    lwf, finetune = build("lwf", toy), build("finetune", toy)
    model = n_params(lwf.net.parameters())
    assert lwf.param_report()["teacher"] == model
    assert lwf.param_report()["stored"] == finetune.param_report()["stored"] + model
