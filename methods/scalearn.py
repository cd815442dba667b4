"""ScaLearn (Frohmann et al. 2023, "ScaLearn: Simple and Highly Parameter-Efficient Task Transfer
by Learning to Scale"): a target task reuses frozen source adapters by learning only how much of
each adapter's output to add. At every adapter site, for target task t and sources n = 0..t (the
target's own adapter included, N = t + 1):

    h' = h + sum_n  w_{t,n} * a_n(h)        (no softmax: the w are free, their sum is not 1)

Variants (the shape of w, per target task), for S adapter sites and width d:
    scalearn             a vector per site and source    S * N * d parameters
    scalearn_uniform     a scalar per site and source    S * N
    scalearn_pp          a vector per source, shared by all sites   N * d
    scalearn_uniform_pp  one scalar per source                      N
w is initialised N(2/N, 0.001); dropout on w while training (0.3; 0 for Uniform++) and lr 6e-3
are the defaults of the authors' code (`scalearn*_2_avg_d03`, GLUE scripts). That lr is for
thousands of steps: at the default sequence's 10 scaling steps w moved < 0.01 from its
initialisation, so that sequence sets 6e-2 (tests/test_composition_learns.py: w then grows for
the one source that solves the task).

Continual protocol here (task-incremental): the paper is two-stage -- single-task adapters first,
then the scaling is learned over them -- so each task t trains in two stages:
  1. "adapter": adapter t + head t, exactly as the `adapter` method;
  2. "scaling": every adapter frozen; learn w_t over adapters 0..t, while head t continues from
     stage 1 (the paper trains a fresh head in its transfer stage; with this harness's budget of
     tens of steps per task a warm head is the fairer choice).
w_t is kept: task t's inference runs adapters 0..t and w_t, so its inference cost grows with t,
and training costs 1 + `scaling_steps` times the adapter budget (metrics.json `stages`). Nothing
of an earlier task changes afterwards, so forgetting is zero by construction.
Sites: as `adapter` (after attention and after FFN); the paper used FFN-only Pfeiffer adapters.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.method import Stage, require
from bench.registry import METHODS
from methods.adapter import Adapter, AdapterHParams


@dataclass
class ScaLearnHParams(AdapterHParams):
    omega_init: float = 2.0       # w ~ N(omega_init / N, 0.001)
    omega_dropout: float = 0.3
    omega_lr: float = 6e-3
    scaling_steps: float = 1.0    # stage-2 budget, as a multiple of the task's steps

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.omega_dropout < 1, "omega_dropout", self.omega_dropout, "in [0, 1)")
        require(self.omega_lr > 0, "omega_lr", self.omega_lr, "> 0")
        require(self.scaling_steps > 0, "scaling_steps", self.scaling_steps, "> 0")


@dataclass
class ScaLearnUniformPPHParams(ScaLearnHParams):
    omega_dropout: float = 0.0


class Scaling(nn.Module):
    """One target task's scaling coefficients w: [S or 1 (shared by sites), N sources, d or 1 (scalar)]."""

    def __init__(self, sites: int, sources: int, width: int, init: float, dropout: float):
        super().__init__()
        self.omega = nn.Parameter(torch.normal(init / sources, 0.001, (sites, sources, width)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, site: int, h: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        """h + sum_n w_n * a_n(h), given the source outputs a_n(h)."""
        omega = self.dropout(self.omega[site % len(self.omega)])  # [N, d or 1]
        return h + sum(w * a for w, a in zip(omega, outputs))


@METHODS.register("scalearn")
class ScaLearn(Adapter):
    HParams = ScaLearnHParams
    trains_as = "adapter"  # stage "adapter" is `adapter`'s training of the task
    isolates_tasks = True  # task t reads adapters 0..t and scaling t, all frozen after task t
    per_site = True   # False (++): one w shared by all sites
    vector = True     # False (Uniform): one scalar per source instead of a d-vector

    def setup(self):
        super().setup()
        sites = len(self.injector) if self.per_site else 1
        width = self.injector.width if self.vector else 1
        self.scalings = nn.ModuleList(Scaling(sites, t + 1, width, self.hp.omega_init, self.hp.omega_dropout)
                                      for t in range(len(self.tasks)))
        self.net["scalings"] = self.scalings

    def stages(self, t):
        return [self.alone("adapter"), Stage("scaling", steps=self.hp.scaling_steps)]

    def begin_stage(self, ctx):
        self.adapters.requires_grad_(ctx.stage.name == "adapter")  # scaling: the sources are frozen

    def activate(self, t, ctx):
        if ctx is not None and ctx.stage.name == "adapter" and t == ctx.task:
            return super().activate(t, ctx)
        sources, scaling = self.adapters[: t + 1], self.scalings[t]
        self.injector.fn = lambda i, h: scaling(i, h, [a[i](h) for a in sources])

    def trainable_parameters(self, t, ctx):
        if ctx.stage.name == "adapter":
            return super().trainable_parameters(t, ctx)
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": list(self.scalings[t].parameters()), "lr": self.hp.omega_lr}]

    def task_modules(self, t):
        return [self.heads[t], *self.adapters[: t + 1], self.scalings[t]]

    def diagnostics(self, t, data):
        """omega_t per site (or shared) and source: mean and std over its width, against its
        initialisation omega_init / N; "at_init" when its mean distance from it is < 0.01."""
        omega = self.scalings[t].omega.detach().float()  # [S or 1, N, d or 1]
        init = self.hp.omega_init / omega.shape[1]
        return {"init": init, "sites": [{"mean": o.mean(-1).tolist(), "std": o.std(-1).tolist() if o.shape[-1] > 1 else [0.0] * len(o)}
                                        for o in omega],
                "moved": float((omega - init).abs().mean()), "at_init": float((omega - init).abs().mean()) < 0.01}


@METHODS.register("scalearn_uniform")
class ScaLearnUniform(ScaLearn):
    trains_as = "adapter"
    isolates_tasks = True
    vector = False


@METHODS.register("scalearn_pp")
class ScaLearnPP(ScaLearn):
    trains_as = "adapter"
    isolates_tasks = True
    per_site = False


@METHODS.register("scalearn_uniform_pp")
class ScaLearnUniformPP(ScaLearn):
    HParams = ScaLearnUniformPPHParams
    trains_as = "adapter"
    isolates_tasks = True
    per_site = False
    vector = False
