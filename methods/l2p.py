"""L2P, Learning to Prompt (Wang et al. CVPR 2022). The backbone is frozen; a pool of M prompts
P_m (each Lp tokens) with learned keys k_m is shared by all tasks. The query is the frozen,
unprompted backbone's pooled output q(x); the N prompts whose keys are nearest,
    K_x = top-N_m  cos(q(x), k_m),
are concatenated and prepended to the input tokens ([P_s1; ...; P_sN; x_e], N * Lp tokens), and
    L = L_task(f(x_p)) + lambda * sum_{m in K_x} (1 - cos(q(x), k_m))      (the surrogate loss)
pulls the selected keys toward the queries. Defaults: M = 10, Lp = 5, N = 5 (the paper);
lambda = 0.1 and U(-1, 1) initialisation of prompts and keys (the authors' PyTorch port,
`pull_constraint_coeff`, `prompt_init`; from memory, not checked against the paper here); lr 0.03
(the paper's constant Adam lr; here under the harness's warm-up + decay); the whole pool trains
in every task, so earlier tasks can forget.

Deviations: the prompts are prepended to the embedded tokens (before [CLS]) at the first block,
carried through every block and removed before pooling (bench/prompts.py): the head reads the backbone's usual pooled output
(the paper classifies the mean of the prompt tokens' outputs); one query per example (the
paper's [CLS] of the frozen ViT; here whatever the backbone pools, folded to its hidden width),
computed per batch by an extra unprompted forward (a cache of it would save that forward; the
frozen-prefix cache cannot hold it, since it replaces the prompted forward); no batch-wise
prompt voting or frequency penalty (the code's options); task-incremental: the task's head is
given, the prompts are still chosen by the query. On dual encoders each tower gets its own
pool of prompts, selected by the same keys."""
from dataclasses import dataclass

import torch
from torch import nn

from bench.method import require
from bench.prompts import Prompted, cosine, uniform
from bench.registry import METHODS


@dataclass
class L2PHParams:
    pool_size: int = 10        # M
    length: int = 5            # Lp, tokens per prompt
    top_k: int = 5             # N, prompts selected per example
    match_weight: float = 0.1  # lambda, the surrogate loss's weight

    def __post_init__(self):
        for name in ("pool_size", "length", "top_k"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.match_weight >= 0, "match_weight", self.match_weight, ">= 0")
        require(self.top_k <= self.pool_size, "top_k", self.top_k, f"at most pool_size={self.pool_size}")


@METHODS.register("l2p")
class L2P(Prompted):
    HParams = L2PHParams
    lr = 0.03

    def setup(self):
        super().setup()
        hp = self.hp
        pool = nn.Module()
        pool.keys = uniform(hp.pool_size, self.backbone.hidden_size)
        pool.prompts = nn.ParameterList(uniform(hp.pool_size, hp.length, d) for d in self.injector.widths)  # per tower
        self.net["pool"] = self.pool = pool

    def select(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [N, top_k] of the nearest keys, their cosine similarities)."""
        sim = cosine(q, self.pool.keys)
        top = sim.topk(self.hp.top_k, dim=1).indices
        return top, sim.gather(1, top)

    def prompts(self, q, t, training):
        top, sim = self.select(q)
        spans = {(k, 0): (self.pool.prompts[k][top].flatten(1, 2), len(tower) - 1)
                 for k, tower in enumerate(self.injector.towers)}
        return spans, self.hp.match_weight * (1 - sim).sum(1).mean()

    def trainable_parameters(self, t, ctx):
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": list(self.pool.parameters()), "lr": ctx.lr}]

    def task_modules(self, t):
        return [self.heads[t], self.pool]
