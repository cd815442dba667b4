"""CODA-Prompt (Smith et al. CVPR 2023): decomposed attention-based prompting. The backbone is
frozen; at each prompted block l a pool of prompt components P_m (each Lp tokens), with keys K_m
and attention vectors A_m, is combined per example into one prompt by the paper's formula
    alpha_m = cos(q(x) * A_m, K_m),      p_l(x) = sum_m alpha_m P_m
(q(x): the frozen, unprompted backbone's pooled output, folded to its hidden width; * is
elementwise), and p_l is the prefix of block l (bench/prompts.py). Everything is learnt end to end
through the task loss. The pool of M components is split evenly over the tasks: task t adds its
own M/T components, initialised orthonormal to all earlier ones (Gram-Schmidt over P, K and A,
per block), trains only those (earlier ones are frozen), and uses components 0..t; a prediction
uses every component learnt so far. Defaults: M = 100, Lp = 8, blocks 0-4 (the paper); lr 0.001
(its Adam lr, here under the harness's warm-up + decay). Since later components join the sum for
earlier tasks' inputs, earlier scores can change.

Deviations: no orthogonality penalty (the paper's optional L_ortho; the authors' configs set its
weight to 0, from memory); a prefix token's key and value are the block's projections of one token
(tied; the paper's prefix-tuning splits Lp into key and value halves, bench/prompts.py); on the
default sequence (4 tasks) the 100 components are 25 per task; on dual encoders each tower gets
its own P per block, weighted by the same alpha."""
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.method import require
from bench.prompts import Prompted
from bench.registry import METHODS


@dataclass
class CODAPromptHParams:
    pool_size: int = 100   # M, components over the whole sequence
    length: int = 8        # Lp
    first: int = 0         # prompted blocks first..last
    last: int = 4

    def __post_init__(self):
        for name in ("pool_size", "length"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(0 <= self.first <= self.last, "(first, last)", (self.first, self.last), "0 <= first <= last")


def orthonormal_after(done: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt: the rows of `new` [m, D] made orthonormal to each other and to the rows of
    `done` [n, D] (orthonormal already)."""
    q, r = torch.linalg.qr(torch.cat([done, new]).T)  # QR is Gram-Schmidt up to the signs of q's columns
    n = len(done)
    return (q[:, n:] * r.diagonal()[n:].sign()).T


def components(m: int, blocks: int, query_width: int, length: int, width: int) -> nn.ParameterDict:
    """One task's components for one tower: K, A [blocks, m, D], P [blocks, m, Lp, d]."""
    return nn.ParameterDict({"K": nn.Parameter(torch.zeros(blocks, m, query_width)),
                             "A": nn.Parameter(torch.zeros(blocks, m, query_width)),
                             "P": nn.Parameter(torch.zeros(blocks, m, length, width))})


@METHODS.register("coda_prompt")
class CODAPrompt(Prompted):
    HParams = CODAPromptHParams
    lr = 1e-3

    def setup(self):
        super().setup()
        hp, D = self.hp, self.backbone.hidden_size
        self.per_task = hp.pool_size // len(self.tasks)
        if self.per_task < 1:
            raise BenchError(f"coda_prompt.pool_size={hp.pool_size} leaves no component for each of {len(self.tasks)} tasks")
        if self.per_task * len(self.tasks) > min(D, hp.length * min(self.injector.widths)):
            raise BenchError(f"coda_prompt: {self.per_task * len(self.tasks)} components cannot be orthogonal in "
                             f"{min(D, hp.length * min(self.injector.widths))} dimensions; lower pool_size")
        self.sites = [[i for k2, i in self.depths(hp.first, hp.last) if k2 == k] for k in range(len(self.injector.towers))]
        if not any(self.sites):
            raise BenchError(f"coda_prompt: no block {hp.first}..{hp.last} in the backbone")
        self.comps = nn.ModuleList(nn.ModuleList(components(self.per_task, len(self.sites[k]), D, hp.length, w)
                                                 for k, w in enumerate(self.injector.widths)) for _ in self.tasks)
        self.net["components"] = self.comps

    def begin_task(self, ctx):
        """Task t's components: random, then orthonormal to every earlier task's (per block)."""
        super().begin_task(ctx)
        t = ctx.task
        with torch.no_grad():
            for k in range(len(self.injector.towers)):
                for name, p in self.comps[t][k].items():
                    for b in range(p.shape[0]):
                        done = torch.cat([self.comps[s][k][name][b].flatten(1) for s in range(t)] or [p.new_zeros(0, p[b, 0].numel())])
                        p[b] = orthonormal_after(done, torch.randn(p[b].flatten(1).shape)).view_as(p[b])

    def weights(self, q: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """alpha [N, M] = cos(q * A_m, K_m) for queries q [N, D], keys and attention vectors [M, D]."""
        return nn.functional.cosine_similarity(q[:, None] * A[None], K[None], dim=-1)

    def prompts(self, q, t, training):
        spans = {}
        # training task t: components 0..t, only t's trained; a prediction: every component learnt so far
        tasks = range(t + 1) if training else range(self.seen)
        for k, blocks in enumerate(self.sites):
            parts = [{n: (p if s == t or not training else p.detach()) for n, p in self.comps[s][k].items()} for s in tasks]
            for j, block in enumerate(blocks):
                K, A, P = (torch.cat([c[n][j] for c in parts]) for n in ("K", "A", "P"))
                alpha = self.weights(q, K, A)
                spans[k, block] = (torch.einsum("nm,mld->nld", alpha, P), block)
        return spans, q.new_zeros(())

    def trainable_parameters(self, t, ctx):
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": list(self.comps[t].parameters()), "lr": ctx.lr}]

    def task_modules(self, t):
        return [self.heads[t], self.comps]  # a prediction after the sequence reads every component
