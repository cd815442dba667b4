"""The composition methods compose at the budget the default leaderboard gives them (its sequence
file's step budget and `hparams:` rescales, the runner's own training loop): on a synthetic task
that exactly one frozen source adapter solves, AdapterFusion's and I2I's attention moves onto that
source and ScaLearn's omega grows for it; ATLAS's weights vary with the input.

The backbone is a stub with one adapter site on its input tokens, so what each source adapter
contributes is known exactly. Every token carries two bits, +-0.3 on coordinates 0 and 1; the
task's label is the first. Source `good` writes the first bit large (+-2 on coordinate 0), source
`bad` the second, each plus a constant direction of its own (what tells adapters apart to an
attention; real adapters have a characteristic output too). The head, trained with the task's own
adapter first as in the methods, reads coordinate 0, so only `good` helps it."""
import math

import pytest
import torch
from torch import nn

from bench.backbones.base import Backbone
from bench.config import plan_tasks, resolve
from bench.context import TaskContext
from bench.data import EncodedSplit
from bench.method import Stage
from bench.registry import METHODS
from bench.task import Task
from bench.train import fit
from methods.atlas import adapter_weight

D, L = 384, 8  # MiniLM-L6's width: how far Adam moves a d x d fusion in ten steps depends on it


class SiteBackbone(Backbone):
    """Tokens x [B, L, D] -> one adapter site (identity) -> masked mean."""
    text_keys = ("attention_mask", "x")  # the first one says multiple choice or not by its rank

    def __init__(self):
        super().__init__()
        self.hidden_size, self.cache_key = D, "site"
        self.block = nn.Module()
        self.block.site = nn.Identity()

    @property
    def layers(self):
        return [self.block]

    def adapter_sites(self, layer):
        return {"ffn": layer.site}

    def token_mask(self, batch):
        return batch["attention_mask"]

    def forward(self, batch):
        h, m = self.block.site(batch["x"]), batch["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


class Source(nn.Module):
    """A frozen 'adapter': mag * (sign(h_coord) e_coord + signature)."""

    def __init__(self, coord: int, signature: torch.Tensor, mag: float = 2.0):
        super().__init__()
        self.coord, self.mag = coord, mag
        self.register_buffer("signature", signature)

    def forward(self, h):
        bit = nn.functional.one_hot(torch.tensor(self.coord), D) * torch.sign(h[..., self.coord:self.coord + 1])
        return self.mag * (bit + self.signature)


def split(n: int, seed: int, label_bit: int = 0) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, L, D, generator=g)
    bits = torch.randint(0, 2, (n, 2), generator=g)
    x[..., :2] = (2 * bits[:, None, :] - 1) * 0.3  # both bits on every token
    mask = torch.ones(n, L, dtype=torch.long)
    mask[: n // 2, L // 2:] = 0  # half the examples padded
    return EncodedSplit(fields={"x": x, "attention_mask": mask, "label": bits[:, label_bit].clone()}, images=None)


def sources() -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
    """(good, bad, another bad one with a signature of its own), as one-site adapter sets."""
    v = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    v[:, :2] = 0  # off the two bit coordinates
    v = v / v.norm(dim=1, keepdim=True)
    return tuple(nn.ModuleList([Source(coord, sig)]) for coord, sig in zip((0, 1, 1), v))


def build(name: str, n_tasks: int):
    """The method as the default leaderboard configures it, over the stub backbone and `n_tasks`
    synthetic binary tasks."""
    cfg = resolve(name, METHODS.get(name), [], sequence="default", precision="fp32")
    torch.manual_seed(0)
    tasks = [Task(f"syn{t}", "text", ["0", "1"]) for t in range(n_tasks)]
    m = METHODS.get(name)(SiteBackbone(), tasks, METHODS.get(name).HParams(**cfg.hparams))
    m.setup()
    return m, cfg


def train_stage(m, cfg, t: int, stage: Stage, data: EncodedSplit):
    """One stage of task t, by the runner's loop, at the default sequence's budget for it."""
    steps = max(1, round(stage.steps * plan_tasks(cfg)[0].steps))
    ctx = TaskContext(task=t, tasks=(t,), train_data=[data] * len(m.tasks), seed=t, lr=type(m).lr,
                      head_lr=type(m).head_lr, precision="fp32").at(stage)
    m.begin_stage(ctx)
    fit(m, ctx, {t: data.head(stage.data)}, {t: split(64, 99)}, steps=steps, cfg=cfg)


def stage(m, t: int, name: str) -> Stage:
    return next(s for s in m.stages(t) if s.name == name)


def attention_on(fusion, srcs, data: EncodedSplit) -> torch.Tensor:
    """Mean attention [N] of a fusion layer over the real tokens of `data`."""
    with torch.no_grad():
        h = data.fields["x"]
        probs = fusion.attention(h, torch.stack([s(h) for s in srcs], dim=-2))
        real = data.fields["attention_mask"].bool()
        return probs[real].mean(0)


def train_task(m, cfg, t: int, data: EncodedSplit):
    for s in m.stages(t):
        train_stage(m, cfg, t, s, data)


def test_adapter_fusion_attends_to_the_source_that_solves_the_task():
    m, cfg = build("adapter_fusion", 3)
    assert m.diagnostics(2, split(512, 3))["at_init"]  # diagnostics flag an untrained fusion
    good, bad, bad2 = sources()
    # task 2's own adapter does not solve it either: its stage 1 trains the head alone
    m.adapters[0], m.adapters[1], m.adapters[2] = bad, good, bad2
    train_task(m, cfg, 2, split(1280, 2))
    weights = attention_on(m.fusions["2"][0], [a[0] for a in m.adapters], split(512, 3))
    assert weights[1] > 0.45 and weights[1] == weights.max(), weights  # uniform: 1/3
    diag = m.diagnostics(2, split(512, 3))  # metrics.json's view of the same fusion, on 256 inputs
    assert not diag["at_init"] and diag["sites"][0]["uniform"] == pytest.approx(1 / 3)
    weights = attention_on(m.fusions["2"][0], [a[0] for a in m.adapters], split(512, 3).head(0.5))
    assert diag["sites"][0]["mean_weight"] == pytest.approx(weights.tolist(), abs=1e-5)
    assert diag["sites"][0]["entropy_vs_uniform"] < 0.95 and diag["sites"][0]["top_weight"] >= float(weights.max())


def test_i2i_improvises_onto_the_source_that_solves_the_task():
    m, cfg = build("i2i", 3)
    good, bad, _ = sources()
    m.adapters[0], m.adapters[1] = bad, good
    train_stage(m, cfg, 2, stage(m, 2, "improvise"), split(1280, 2))
    weights = attention_on(m.improvised[0], [a[0] for a in m.adapters[:2]], split(512, 3))
    # its head starts from scratch in this stage, so the attention follows it late: 0.56 measured
    assert weights[1] > 0.53, weights  # uniform: 1/2
    train_stage(m, cfg, 2, stage(m, 2, "initialize"), split(1280, 2))
    weights = attention_on(m.improvised[0], [a[0] for a in m.adapters[:2]], split(512, 3).head(0.5))
    m.begin_stage(TaskContext(2, (2,), [split(512, 3)] * 3, 0, 1e-3, 1e-3, "fp32", stage(m, 2, "train")))
    diag = m.diagnostics(2, None)  # measured on its training inputs before the fusion is discarded
    assert m.improvised is None and not diag["at_init"]
    assert diag["sites"][0]["mean_weight"] == pytest.approx(weights.tolist(), abs=1e-5)


def test_scalearn_omega_grows_for_the_source_that_solves_the_task():
    m, cfg = build("scalearn_uniform", 3)
    good, bad, bad2 = sources()
    m.adapters[0], m.adapters[1], m.adapters[2] = bad, good, bad2
    before = m.scalings[2].omega.detach().clone().squeeze()
    train_task(m, cfg, 2, split(1280, 2))
    after = m.scalings[2].omega.detach().squeeze()
    assert after[1] - before[1] > 0.1, (before, after)     # omega of the good source grows ...
    assert after[1] > after[0] + 0.2 and after[1] > after[2] + 0.2  # ... far above the others
    diag = m.diagnostics(2, None)
    assert diag["sites"][0]["mean"] == pytest.approx(after.tolist()) and not diag["at_init"]
    assert diag["moved"] == pytest.approx(float((after - 2 / 3).abs().mean()), rel=1e-4)


def test_atlas_weights_vary_with_the_input():
    """Sources that disagree by input (each carries a different bit): after ATLAS's experience stage,
    w_{2,n} differs across test inputs. With the query among the attended tokens (the code before)
    the attention sat on the query: spread 0 here, 3e-8 on the default backbone."""
    m, cfg = build("atlas", 3)
    good, bad, _ = sources()
    m.adapters[0], m.adapters[1] = bad, good
    train_stage(m, cfg, 2, stage(m, 2, "experience"), split(1280, 2))
    test = split(512, 3)
    h, mask = test.fields["x"], test.fields["attention_mask"]
    with torch.no_grad():
        w = torch.stack([adapter_weight(m.query(2, n, 0), m.keys[n].weight[0], h, a[0](h), mask)
                         for n, a in enumerate(m.adapters[:2])])  # [sources, inputs]
    assert w.std(1).min() > 1e-2, w.std(1)  # per-example weights
    diag = m.diagnostics(2, test)
    assert not diag["at_init"]
    assert diag["sites"][0]["spread"][:2] == pytest.approx(w[:, :256].std(1).tolist(), rel=1e-4)
    # the method's own forward computes these weights, the batch's padding mask reaching the site
    seen = []
    m.injector.fn, fn = None, None
    m.activate(2, None)
    fn = m.injector.fn
    m.injector.fn = lambda i, x: (seen.append(m.injector.mask), fn(i, x))[1]
    with torch.no_grad():
        m.backbone(test.batch(torch.arange(4)))
    assert torch.equal(seen[0], mask[:4]) and m.injector.mask is None


def test_atlas_padding_does_not_change_the_weights():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)
    h, out = torch.randn(2, 5, D, generator=g), torch.randn(2, 5, D, generator=g)
    padded_h, padded_out = torch.cat([h, 100 * torch.randn(2, 3, D, generator=g)], 1), torch.cat([out, torch.randn(2, 3, D, generator=g)], 1)
    mask = torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], 1).long()
    assert torch.allclose(adapter_weight(q, k, padded_h, padded_out, mask), adapter_weight(q, k, h, out), atol=1e-6)
    assert not torch.allclose(adapter_weight(q, k, padded_h, padded_out), adapter_weight(q, k, h, out), atol=1e-3)


def test_runner_stores_diagnostics(run):
    m = run("scalearn_uniform_pp", steps=2)
    assert sorted(m["diagnostics"]) == ["0", "1", "2", "3"]
    assert all(isinstance(d["at_init"], bool) and len(d["sites"][0]["mean"]) == int(t) + 1 for t, d in m["diagnostics"].items())
