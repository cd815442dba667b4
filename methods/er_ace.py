"""ER-ACE (Caccia et al. 2022, "New Insights on Reducing Abrupt Representation Change in Online
Continual Learning"): experience replay from a reservoir memory (bench/memory.py, the one DER++
uses) with an asymmetric cross-entropy:
    L = L_ce(B_in; C_in) + L_ce(B_m),   C_in = the classes present in the incoming batch B_in,
where L_ce(·; C_in) is the cross-entropy over the logits of C_in only (the others masked out of
the softmax, so incoming data never pushes another class's logit down), and the replayed sample
B_m (as large as B_in) gets the full cross-entropy of its own task's head. After the step's loss
the incoming batch is offered to the reservoir; earlier heads stay trainable (replay updates them).

What ACE reduces to here. The paper's setting has one shared head, where C_in excludes the earlier
tasks' classes: that is the asymmetry. With the harness's per-task heads (task-incremental), head
t's logits are task t's classes only, so no earlier class is ever pushed down by incoming data:
ACE's masking then only drops those of task t's own classes that happen to be absent from a batch,
and ER-ACE is, up to that, ER with a reservoir memory and interleaved replay. The mask is computed
on the columns of whatever head scores the incoming batch, so the same code is the paper's ACE for
a shared head (class-incremental). For VQA's soft-BCE loss the masked classes are the answers
with no score in the batch (their BCE terms dropped); multiple-choice heads score a question's
choices, not classes, and keep the full loss.

Defaults: memory 500 examples (as DER++: about 125 per earlier task at the default sequence's last
task, like `er`'s 128); no `trains_as`, since the reservoir fills during the first task. Resume is
exact: the memory is buffers of `self.net`, draws come from a generator seeded per task.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.memory import Rehearsal, sample_mean
from bench.method import Method, task_loss
from bench.registry import METHODS
from bench.task import Task


@dataclass
class ERACEHParams:
    buffer_size: int = 500  # reservoir slots

    def __post_init__(self):
        if self.buffer_size < 1:
            raise BenchError(f"er_ace.buffer_size must be >= 1, got {self.buffer_size}")


def ace_loss(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    """The task's loss restricted to the classes present in the batch (ACE's incoming-data loss)."""
    if task.choices:  # the columns are a question's choices, not classes
        return task_loss(logits, labels, task)
    if task.loss == "soft_bce":  # task_loss's sum over answers, over the answers scored in the batch
        present = (labels > 0).any(0).to(labels.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=present, reduction="sum") / len(labels)
    present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    present[labels] = True
    return nn.functional.cross_entropy(logits.masked_fill(~present, torch.finfo(logits.dtype).min), labels)


@METHODS.register("er_ace")
class ERACE(Rehearsal):
    HParams = ERACEHParams

    def loss(self, batch, t, ctx):
        loss = ace_loss(self.forward(batch, t), batch["label"], self.tasks[t])
        if len(self.memory):
            slots = self.memory.sample(len(batch["label"]), self.generator)
            loss = loss + sample_mean(self.memory.task[slots], self.memory.index[slots], ctx.train_data,
                                      lambda k, rows, b: Method.loss(self, b, k, ctx))
        self.remember(batch, t)
        return loss
