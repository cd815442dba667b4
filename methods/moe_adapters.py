"""MoE-Adapters (Yu et al., CVPR 2024, "Boosting Continual Learning of Vision-Language Models via
Mixture-of-Experts Adapters"), task-incremental variant. The backbone is frozen; at each adapter
site a mixture of bottleneck experts E_n (bench/adapters.py's Bottleneck) rewrites the hidden
state of every token through a router with top-k gating:
    h ← h + Σ_n G_n(h) E_n(h),   G(h) = softmax(TopK(h W_r, k))  (−∞ outside the top k),
so each token's weights are non-negative, at most k of them non-zero, and sum to one. Each task t
adds `experts_per_task` new experts per site and its own router over experts 0..(t+1)·E−1 (the
earlier tasks' experts frozen, the new ones trained with router t and head t). Task j's
predictions read only its router, the experts that existed at task j, and its head, none of which
later tasks change: earlier tasks' scores stay bit-identical (tested), so it `isolates_tasks`.

Defaults and deviations:
- top_k 2 (the paper's k). 2 experts per task (the paper: 22 experts shared by all tasks, with an
  activate-freeze rule that freezes the experts earlier tasks used most; in the task-incremental
  variant every task gets fresh experts and freezes the old ones outright). Expert width d/16, as
  `adapter` (the paper's experts are 64 wide on CLIP's 768).
- Sites: after the FFN of every block (the paper places its MoE adapters at the MLP of each block),
  rewriting the FFN output through the harness's injector (the paper adds them in parallel).
- Task identity is given (task-incremental), so the paper's Distribution Discriminative
  Auto-Selector, which guesses the task at inference, is not needed. No router noise and no
  load-balancing loss.
- Every expert of the active router is computed and mixed with the gates (zero outside the top k):
  with at most a handful of experts this is cheaper on a CPU than gathering tokens per expert.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.adapters import Injector, adapter_set
from bench.errors import BenchError
from bench.method import Method
from bench.registry import METHODS


@dataclass
class MoEAdapterHParams:
    experts_per_task: int = 2  # new experts per site for each task
    top_k: int = 2             # experts mixed per token (paper: 2)
    reduction: int = 16        # expert bottleneck d / reduction, as `adapter`

    def __post_init__(self):
        if self.experts_per_task < 1 or self.top_k < 1 or self.reduction < 1:
            raise BenchError("moe_adapters.experts_per_task, top_k and reduction must be >= 1")


def top_k_gates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over each token's k highest router scores; exactly zero elsewhere."""
    top = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return torch.zeros_like(scores).scatter(-1, top.indices, top.values.softmax(-1))


@METHODS.register("moe_adapters")
class MoEAdapters(Method):
    HParams = MoEAdapterHParams
    lr = 1e-3  # as `adapter`
    sites = ("ffn",)
    isolates_tasks = True  # task t reads the frozen backbone, experts of tasks <= t, router t and head t

    def setup(self):
        self.backbone.freeze()
        self.injector = Injector(self.backbone, self.sites)
        widths, E = self.injector.widths, self.hp.experts_per_task
        # experts[t][e][site]: the e-th new expert of task t; routers[t][site]: d -> (t+1)·E scores
        self.experts = nn.ModuleList(nn.ModuleList(adapter_set(len(widths), widths, self.hp.reduction) for _ in range(E))
                                     for _ in self.tasks)
        self.routers = nn.ModuleList(nn.ModuleList(nn.Linear(d, (t + 1) * E) for d in widths) for t in range(len(self.tasks)))
        self.net["experts"], self.net["routers"] = self.experts, self.routers

    def mixture(self, t: int, site: int, h: torch.Tensor) -> torch.Tensor:
        gates = top_k_gates(self.routers[t][site](h), self.hp.top_k)  # [B, L, (t+1)·E]
        outs = torch.stack([e[site](h) for task in self.experts[:t + 1] for e in task], dim=-1)  # [B, L, d, (t+1)·E]
        return h + (outs * gates.unsqueeze(-2)).sum(-1)

    def activate(self, t, ctx):
        self.injector.fn = lambda i, h: self.mixture(t, i, h)

    def trainable_parameters(self, t, ctx):
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": list(self.experts[t].parameters()) + list(self.routers[t].parameters()), "lr": ctx.lr}]

    def task_modules(self, t):
        return [self.heads[t], self.routers[t], *self.experts[:t + 1]]
