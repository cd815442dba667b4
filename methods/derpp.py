"""DER++ (Buzzega et al. 2020, "Dark Experience for General Continual Learning"). A reservoir
memory (bench/memory.py) keeps training examples with their labels, task ids and the logits the
model gave them when they were inserted; every step adds, on a sample B_m of the memory,
    L = L_t(B_t) + α · MSE(f_k(x), z) + β · L_k(x, y),   (x, y, k, z) ∈ B_m,   α 0.1, β 0.5,
where z are the stored logits and f_k task k's head. Task-incremental: z are the logits of the
example's own task head (stored per task, since heads differ in width), and the MSE and the
replayed loss L_k (cross-entropy, or VQA's soft BCE) use that head; earlier heads stay trainable,
as in the paper's multi-head network. After the step's loss the current batch, with its logits
from this forward, is offered to the reservoir; replay starts with the second step of the first
task, as in the paper (whose setting needs no task boundaries).

Deviations and choices (the paper's α, β kept):
- One memory sample serves both terms (the paper draws two): one replay forward and backward per
  step instead of two, the same expected loss. The sample is as large as the current batch.
- Memory: 500 examples (the paper's middle setting). The default sequence streams 640 examples
  per task (20 steps of 32), so at its last task the reservoir holds about 125 per earlier task,
  as many as `er`'s 10 % per-task memory (128).
- The first task is not shared with `finetune` (`trains_as`): the reservoir fills during it.
Resume is exact: the memory is buffers of `self.net`, and draws come from a generator seeded per task.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.memory import Rehearsal, sample_mean
from bench.method import task_loss
from bench.registry import METHODS


@dataclass
class DERppHParams:
    alpha: float = 0.1       # weight of the logit MSE (paper: 0.1)
    beta: float = 0.5        # weight of the replayed labels' loss (paper: 0.5)
    buffer_size: int = 500   # reservoir slots (paper: 200 / 500 / 5120)

    def __post_init__(self):
        if self.buffer_size < 1:
            raise BenchError(f"derpp.buffer_size must be >= 1, got {self.buffer_size}")
        if self.alpha < 0 or self.beta < 0:
            raise BenchError(f"derpp.alpha and derpp.beta must be >= 0, got {self.alpha}, {self.beta}")


@METHODS.register("derpp")
class DERpp(Rehearsal):
    HParams = DERppHParams
    keeps_logits = True

    def replay(self, n: int, ctx) -> torch.Tensor:
        """α · MSE(f_k(x), z) + β · L_k(x, y) on a sample of n remembered examples."""
        slots = self.memory.sample(n, self.generator)

        def loss(k, rows, batch):
            out = self.forward(batch, k)
            z = getattr(self.memory.logits, str(k))[slots[rows]]
            return (self.hp.alpha * nn.functional.mse_loss(out.float(), z)
                    + self.hp.beta * task_loss(out, batch["label"], self.tasks[k]))
        return sample_mean(self.memory.task[slots], self.memory.index[slots], ctx.train_data, loss)

    def loss(self, batch, t, ctx):
        out = self.forward(batch, t)
        loss = task_loss(out, batch["label"], self.tasks[t])
        if len(self.memory):
            loss = loss + self.replay(len(batch["label"]), ctx)
        self.remember(batch, t, logits=out)
        return loss
