"""Learning without Forgetting (Li & Hoiem 2016) with one head per task. Before training task t, a
frozen copy of the model as it stood at the end of task t−1 is taken; on task t's own inputs x,
every earlier head k is kept close to that copy's outputs:
    L = L_t(x) + λ Σ_{k<t} H(softmax(z̄_k(x) / T), softmax(z_k(x) / T)),   T = 2, λ = 1,
where z̄_k are the frozen copy's logits and z_k the live model's, and H is cross-entropy (the
paper's modified-probability loss). A one-output head (a multiple-choice scorer) is distilled as a
two-class softmax over (z, 0), i.e. its sigmoid. Backbone, new head and old heads all train, as in
the paper (its optional warm-up of the new head alone is not used). The frozen copy runs in eval
mode, so its targets equal the paper's recorded responses; it is transient, never in `self.net`,
and dropped at the end of the task. Only heads that can read task t's features are distilled: on
backbones whose pooled width depends on the task (CLIP's fusion per modality, ViLT's two-image
NLVR2 pooling) a head built for another width is skipped.
"""
import copy
from dataclasses import dataclass

import torch

from bench.backbones.base import pooled
from bench.method import Method, logits, n_params, require, task_loss
from bench.registry import METHODS


@dataclass
class LwFHParams:
    temperature: float = 2.0  # T
    lam: float = 1.0          # λ_o, weight of each old task's distillation loss

    def __post_init__(self):
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.lam >= 0, "lam", self.lam, ">= 0")


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between temperature-softened teacher and student distributions, batch mean."""
    if student.shape[-1] == 1:
        student, teacher = (torch.cat([z, torch.zeros_like(z)], -1) for z in (student, teacher))
    target = (teacher / temperature).softmax(-1)
    return -(target * (student / temperature).log_softmax(-1)).sum(-1).mean()


@METHODS.register("lwf")
class LwF(Method):
    trains_as = "finetune"  # the first task is `finetune`'s: no teacher before the second task
    HParams = LwFHParams

    def begin_task(self, ctx):
        self.teacher = None
        if ctx.task > 0:
            self.teacher = copy.deepcopy(self.net).eval().requires_grad_(False)

    def distilled(self, t: int) -> list[int]:
        """The earlier heads that read features as wide as task t's."""
        width = self.backbone.pooled_size(self.tasks[t])
        return [k for k in range(t) if self.backbone.pooled_size(self.tasks[k]) == width]

    def distillation_targets(self, batch: dict, t: int) -> list[torch.Tensor]:
        """Logits of every distilled earlier head of the frozen copy on this batch."""
        with torch.no_grad():
            features = pooled(self.teacher["backbone"], batch)
            return [logits(self.teacher["heads"][k], features) for k in self.distilled(t)]

    def loss(self, batch, t, ctx):
        features = pooled(self.backbone, batch)
        loss = task_loss(logits(self.heads[t], features), batch["label"], self.tasks[t])
        if t > 0:
            targets = self.distillation_targets(batch, t)
            loss = loss + self.hp.lam * sum(distillation(logits(self.heads[k], features), z, self.hp.temperature)
                                            for k, z in zip(self.distilled(t), targets))
        return loss

    def end_task(self, ctx):
        self.teacher = None

    def param_report(self):
        """The frozen copy is stored beside the model while a task trains (from the second task on)."""
        report = super().param_report()
        teacher = n_params(self.net.parameters()) if len(self.tasks) > 1 else 0
        return {**report, "stored": report["stored"] + teacher, "teacher": teacher}

    def trainable_parameters(self, t, ctx):
        earlier_heads = [p for k in range(t) for p in self.heads[k].parameters()]
        return super().trainable_parameters(t, ctx) + [{"params": earlier_heads, "lr": ctx.head_lr}]
