"""LoRA (Hu et al. 2022), one per task, through PEFT (bench/lora.py): the backbone is frozen; task t
trains its own LoRA on the attention query and value projections of every block,
    h = W x + (α/r) B_t A_t x,   A_t: d -> r (random init), B_t: r -> d (zero init),
plus its head; `activate(t)` is PEFT's `set_adapter("task<t>")`. Earlier tasks' LoRAs are never
touched again, so forgetting is zero by construction, as for `adapter`.

Defaults: r = 8, α = 32, query and value, lr 1e-3: the LoRA settings of O-LoRA's released scripts
(T5), so that `olora`'s first task is exactly this method's and is trained once (bench/reuse.py).
LoRA's paper uses the same rank and targets with α = r and lr 4e-4 to 5e-4 on RoBERTa-base (a
longer budget than 20 steps). No LoRA dropout: the backbone runs without dropout too. On open_clip
the targets are the FFN's dense layers (see bench/lora.py for why).

`summed` subclasses (O-LoRA, InfLoRA) run every LoRA trained so far, added together, for every task:
their earlier tasks' scores then depend on later LoRAs, which is what their losses/projections guard.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.lora import ROLES, TaskLoRAs, parse_roles
from bench.method import Method, require
from bench.registry import METHODS


@dataclass
class LoRAHParams:
    r: int = 8
    alpha: float = 32.0
    targets: str = "q,v"  # attention projections adapted in every block: a subset of q,k,v

    def __post_init__(self):
        require(self.r >= 1, "r", self.r, "an integer >= 1")
        require(self.alpha > 0, "alpha", self.alpha, "> 0")
        roles = parse_roles(self.targets)
        require(bool(roles) and set(roles) <= set(ROLES), "targets", self.targets, "a comma-separated subset of q,k,v")


@METHODS.register("lora")
class LoRA(Method):
    HParams = LoRAHParams
    lr = 1e-3
    trains_as = "lora"  # its first task is O-LoRA's first task (bench/reuse.py)
    isolates_tasks = True  # task t reads the frozen backbone, LoRA t and head t
    summed = False  # True: every LoRA trained so far runs for every task (O-LoRA, InfLoRA)

    def setup(self):
        self.loras = TaskLoRAs(self.backbone, len(self.tasks), parse_roles(self.hp.targets), self.hp.r, self.hp.alpha)
        if self.summed:  # how many tasks are trained: predictions run their LoRAs (a buffer, so resume keeps it)
            trained = nn.Module()
            trained.register_buffer("tasks", torch.zeros((), dtype=torch.long))
            self.net["lora_trained"] = trained

    def running(self, t: int) -> list[int]:
        """The tasks whose LoRAs run when the model computes task t."""
        return list(range(max(t + 1, int(self.net["lora_trained"].tasks)))) if self.summed else [t]

    def trained(self, t: int) -> list[nn.Parameter]:
        """The LoRA parameters that training task t updates."""
        return self.loras.A(t) + self.loras.B(t)

    def activate(self, t, ctx):
        self.loras.activate(self.running(t))
        if ctx is not None:  # set_adapter froze every LoRA; the one being trained keeps training
            for p in self.trained(ctx.task):
                p.requires_grad_(True)

    def trainable_parameters(self, t, ctx):
        params = self.trained(t)
        for p in params:
            p.requires_grad_(True)
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr}, {"params": params, "lr": ctx.lr}]

    def end_task(self, ctx):
        if self.summed:
            self.net["lora_trained"].tasks.fill_(ctx.task + 1)

    def task_modules(self, t):
        tasks = range(len(self.tasks)) if self.summed else [t]  # after the sequence, summed runs all of them
        return [self.heads[t], *(m for k in tasks for m in self.loras.modules(k))]

    def param_report(self):
        report = super().param_report()
        # PEFT puts every task's LoRA inside the backbone module: at inference count them as task modules only
        return {**report, "inference": report["inference"] - self.loras.n_params()}
