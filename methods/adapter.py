"""Bottleneck adapters (Houlsby et al. 2019): the backbone is frozen; each task trains its own
adapters, after the attention output and after the FFN of every block, plus its head:
    h <- h + W_up GELU(W_down h),   W_down: d -> d/r, r = 16, W_up initialised to 0.
Earlier tasks' adapters are never touched again, so forgetting is zero by construction."""
from dataclasses import dataclass

import torch
from torch import nn

from bench.adapters import Injector, adapter_set
from bench.backbones.base import pooled
from bench.method import Method, Stage, require
from bench.registry import METHODS


@dataclass
class AdapterHParams:
    reduction: int = 16

    def __post_init__(self):
        require(self.reduction >= 1, "reduction", self.reduction, "an integer >= 1")


@METHODS.register("adapter")
class Adapter(Method):
    HParams = AdapterHParams
    lr = 1e-3
    sites = ("attn", "ffn")
    trains_as = "adapter"  # every task's training is `adapter`'s (trivially: it is `adapter`)
    isolates_tasks = True  # task t reads the frozen backbone, adapters[t] and heads[t]

    def setup(self):
        self.backbone.freeze()
        self.injector = Injector(self.backbone, self.sites)
        d = self.injector.widths
        self.adapters = nn.ModuleList(adapter_set(len(self.injector), d, self.hp.reduction) for _ in self.tasks)
        self.net["adapters"] = self.adapters

    def alone(self, name: str = "train") -> Stage:
        """Adapter t and head t trained on their own: all of this method's training of a task, and
        the first stage of methods built on it (AdapterFusion, ScaLearn, I2I's first task), so the
        runner trains it once per seed and the others reuse it (bench/reuse.py)."""
        return Stage(name, shared=self.trains_as)  # None: trained here

    def stages(self, t):
        return [self.alone()]

    def activate(self, t, ctx):
        self.injector.fn = lambda i, h: h + self.adapters[t][i](h)

    def trainable_parameters(self, t, ctx):
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": list(self.adapters[t].parameters()), "lr": ctx.lr}]

    def task_modules(self, t):
        return [self.heads[t], self.adapters[t]]

    def probe_run(self, t: int, data, n: int = 256):
        """A forward of task t's final model over the first n examples of `data`, for `Injector.probe`."""
        self.activate(t, None)
        batch = data.batch(torch.arange(min(n, len(data)), device=data.fields["label"].device))
        return lambda: pooled(self.backbone, batch)
