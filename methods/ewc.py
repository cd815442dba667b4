"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), as CLiMB applies it to the shared encoder.

After task k, the diagonal Fisher F_k of the backbone's parameters is estimated at the trained
parameters θ*_k, and every later task t trains on
    L(θ) = L_t(θ) + λ/2 Σ_{k<t} Σ_i F_k,i (θ_i − θ*_k,i)²,      λ = 100.
F_k is the *empirical per-example* Fisher: the mean, over the first `fisher_fraction` (1 %, as
CLiMB) of task k's training split (already in a fixed random order), of the squared gradient of
each example's own loss at its true label, with dropout off. (CLiMB squares whole-batch gradients;
per-example squares are the Fisher's definition and cost little at 1 %.) Heads are task-specific
and not penalised (CLiMB: encoder only).

The sum over tasks is kept as ONE quadratic, F = Σ_k F_k and anchor θ̄ = Σ_k F_k θ*_k / F: it has
the same gradient (the penalty differs by a constant), so storage does not grow with the number
of tasks. `online=True` is online EWC (Schwarz et al. 2018): F ← γ F + F_k, anchor ← θ*_k.
Fisher and anchor are buffers of `self.net`, so checkpoints and resumed runs carry them.

`climb=True` is CLiMB's form instead (GLAMOR-USC/CLiMB, `EWC.compute_ewc_loss`): each task keeps
its own Fisher and anchor, and every training step (the trainers call it once per step) penalises
    λ Σ_i F_k,i (θ_i − θ*_k,i)²,     k drawn uniformly from the earlier tasks at that step,
without the 1/2 and without the sum over tasks: on T tasks its expected strength is 2/(t) of the
default's at task t (twice it at t = 1, equal at t = 2, 2/3 at t = 3). Storage grows by two
backbone copies per task (counted in `param_report`). The draw uses torch's RNG, which the runner
seeds per task.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.method import Method, require
from bench.registry import METHODS


@dataclass
class EWCHParams:
    lam: float = 100.0             # λ (CLiMB: 100)
    fisher_fraction: float = 0.01  # share of a task's training split used for its Fisher (CLiMB: 1 %)
    online: bool = False           # online EWC: one running Fisher, anchored at the latest task
    gamma: float = 1.0             # online EWC's decay of the running Fisher
    climb: bool = False            # CLiMB's form: λ·ΣF(θ−θ*)² for one random earlier task per step

    def __post_init__(self):
        require(self.lam >= 0, "lam", self.lam, ">= 0")
        require(0 < self.fisher_fraction <= 1, "fisher_fraction", self.fisher_fraction, "in (0, 1]")
        require(0 <= self.gamma <= 1, "gamma", self.gamma, "in [0, 1]")
        require(not (self.climb and self.online), "climb", self.climb, "false with online=true (two different forms)")


def per_parameter_buffers(named_params) -> nn.Module:
    """A module holding one zero buffer shaped like each parameter, in the same order."""
    module = nn.Module()
    for name, p in named_params:
        module.register_buffer(name.replace(".", "/"), torch.zeros_like(p))
    return module


@METHODS.register("ewc")
class EWC(Method):
    trains_as = "finetune"  # the first task is `finetune`'s: no penalty before the second task
    HParams = EWCHParams

    def setup(self):
        named = [(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad]
        self.penalised = [p for _, p in named]
        n_sets = len(self.tasks) - 1 if self.hp.climb else 1  # CLiMB: one per task that a later one reads
        self.net["ewc"] = nn.ModuleList(nn.ModuleDict({"fisher": per_parameter_buffers(named),
                                                       "anchor": per_parameter_buffers(named)}) for _ in range(n_sets))

    def state(self, k: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Fisher and anchor: the merged ones, or task k's (climb)."""
        return list(self.net["ewc"][k]["fisher"].buffers()), list(self.net["ewc"][k]["anchor"].buffers())

    def penalty(self, k: int = 0) -> torch.Tensor:
        """λ/2 Σ_i F_i (θ_i − θ̄_i)², or CLiMB's λ Σ_i F_k,i (θ_i − θ*_k,i)² for task k."""
        fisher, anchor = self.state(k)
        total = sum((f * (p - a).square()).sum() for p, f, a in zip(self.penalised, fisher, anchor))
        return self.hp.lam * total if self.hp.climb else self.hp.lam / 2 * total

    def loss(self, batch, t, ctx):
        loss = super().loss(batch, t, ctx)
        if t == 0:
            return loss
        return loss + self.penalty(int(torch.randint(t, ())) if self.hp.climb else 0)

    def fisher(self, t: int, ctx) -> list[torch.Tensor]:
        """Empirical per-example diagonal Fisher of task t at the current parameters."""
        data = ctx.train_data[t]
        n = max(1, round(self.hp.fisher_fraction * len(data)))
        sums = [torch.zeros_like(p) for p in self.penalised]
        training = self.net.training
        self.net.eval()  # the Fisher of the deterministic model, without dropout noise
        for i in range(n):
            example = data.batch(torch.tensor([i]))
            loss = Method.loss(self, example, t, ctx)  # the task's own loss, without the penalty
            grads = torch.autograd.grad(loss, self.penalised, allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:  # a parameter the task does not use (e.g. visual projection, text task)
                    s += g.square()
        self.net.train(training)
        return [s / n for s in sums]

    def end_task(self, ctx):
        if self.hp.climb and ctx.task >= len(self.net["ewc"]):
            return  # the last task's Fisher would never be read
        new = self.fisher(ctx.task, ctx)
        with torch.no_grad():
            for p, f, a, f_t in zip(self.penalised, *self.state(ctx.task if self.hp.climb else 0), new):
                if self.hp.climb or self.hp.online:  # CLiMB: f is zero, so this stores F_t
                    f.mul_(self.hp.gamma).add_(f_t)
                    a.copy_(p)
                else:  # merge F_t (θ − θ*_t)² into F (θ − θ̄)²: same gradient, constant storage
                    total = f + f_t
                    a.add_(torch.where(total > 0, f_t / total, 1.0) * (p - a))  # θ̄ += F_t/F (θ*_t − θ̄)
                    f.copy_(total)

    def param_report(self):
        report = super().param_report()
        report["stored"] += sum(b.numel() for b in self.net["ewc"].buffers())  # Fisher + anchor
        return report
