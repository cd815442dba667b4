"""The Method contract. A method overrides only the hooks it needs; the runner owns the loop,
optimizer, scheduler, device and logging (see bench/runner.py and bench/train.py)."""
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from bench.backbones.base import Backbone, pooled
from bench.context import TaskContext
from bench.task import Task


@dataclass
class NoHParams:
    pass


def require(ok: bool, name: str, value, rule: str) -> None:
    """A hyper-parameter's range check, for `HParams.__post_init__`: a bad value is refused when the
    run is configured, before anything trains."""
    if not ok:
        raise ValueError(f"{name}={value!r}: must be {rule}")


@dataclass
class Stage:
    """One training stage of a task. Most methods have one; I2I and ATLAS have several. The runner
    trains each stage with its own optimizer on `method.trainable_parameters` and `method.loss`,
    for `steps` x the task's step budget, on the first `data` fraction of the training split."""
    name: str = "train"
    steps: float = 1.0
    data: float = 1.0
    # the registered name of the method whose whole training of task t this stage is (same trained
    # tensors, forward and loss), so the runner trains it once and reuses it (bench/reuse.py)
    shared: str | None = None


def head(d: int, n_classes: int, width: int | None = None) -> nn.Module:
    """CLiMB's classifier head shape: Linear(d -> w) -> LayerNorm -> GELU -> Linear(w -> C), w = 2 x
    the backbone's hidden size (CLiMB: 1536 on ViLT, also when d = 2 x 768 for two images)."""
    width = width or 2 * d
    return nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, n_classes))


def logits(task_head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    out = task_head(features)
    return out.squeeze(-1) if features.dim() == 3 else out


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    if task.loss == "soft_bce":  # VQA: BCE against soft scores, summed over answers as in VQA/CLiMB
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="mean") * labels.shape[1]
    return nn.functional.cross_entropy(logits, labels)


def n_params(params: Iterable[nn.Parameter]) -> int:
    seen = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())


class Method:
    """Base class: a shared backbone plus one head per task (task-incremental).

    Everything a method learns lives in `self.net` (an nn.ModuleDict), so `state_dict` and
    checkpoints cover it. Modules needed by every task are created in `setup` (all task ids are
    known up front), so a resumed run restores by a plain `load_state_dict`.
    """

    HParams = NoHParams
    lr: float = 1e-4          # default learning rate for the backbone/adapters
    head_lr: float = 1e-3     # heads start from scratch
    joint: bool = False       # True: the runner trains on all tasks at once (multitask)
    evaluates_seen_tasks: bool = True  # False: only the current task is evaluated (single_task)
    # The registered method whose training a stage of this one repeats exactly (same trained
    # tensors, loss and forward), where `stages` says so: the runner then trains it once and
    # reuses it (bench/reuse.py). Each class declares it for itself; a subclass that does not
    # shares nothing, since it may have changed the loss.
    trains_as: str | None = None
    # Parameter isolation: task t's predictions read only tensors that are final once task t is
    # trained (a frozen backbone, task t's own adapters and head, earlier tasks' frozen ones), and
    # no state that later tasks change. The runner then scores an earlier task again only if a
    # tensor its predictions read has changed (bench/evaluate.py SettledScores). Declared per
    # class, like `trains_as`: a subclass may change what the forward reads.
    isolates_tasks: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("trains_as", "isolates_tasks"):
            if name not in cls.__dict__:
                setattr(cls, name, Method.__dict__[name])

    def __init__(self, backbone: Backbone, tasks: list[Task], hp=None):
        self.backbone = backbone
        self.tasks = tasks
        self.hp = hp if hp is not None else self.HParams()
        # a multiple-choice task scores each choice with a 1-output head
        self.heads = nn.ModuleList(head(backbone.pooled_size(t), 1 if t.choices else t.n_classes, 2 * backbone.hidden_size)
                                   for t in tasks)
        self.net = nn.ModuleDict({"backbone": backbone, "heads": self.heads})

    # -- hooks, all optional; `ctx` is the TaskContext of the task being trained (bench/context.py) --
    def setup(self):
        """Called once after construction: freeze parts, inject adapters, register state."""

    def begin_task(self, ctx: TaskContext):
        """Before task ctx.task's stages (ctx.stage is None); torch is already seeded with ctx.seed."""

    def stages(self, t: int) -> list[Stage]:
        """One stage; the first task's is shared with `trains_as` (nothing earlier exists that
        could make a method's first task differ from plain fine-tuning's)."""
        return [Stage(shared=self.trains_as if t == 0 else None)]

    def begin_stage(self, ctx: TaskContext):
        """Before each stage (after `begin_task`); ctx.stage is the stage."""

    def trainable_parameters(self, t: int, ctx: TaskContext) -> list[dict]:
        """Parameter groups for training task t (one of ctx.tasks) in stage ctx.stage."""
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr}]
        return groups + ([{"params": body, "lr": ctx.lr}] if body else [])

    def activate(self, t: int, ctx: TaskContext | None):
        """Make the model compute task t, as PEFT's `set_adapter`: which adapters/fusions the
        backbone runs. `ctx` is the training context when task t is being trained or validated in
        stage ctx.stage, None for predictions with the final model of task t. The runner calls it
        before training batches of task t and before scoring task t; `forward` assumes it."""

    def forward(self, batch: dict, t: int) -> torch.Tensor:
        """Logits [B, n_classes] (or [B, n_choices] for multiple choice) of the active task t."""
        return logits(self.heads[t], pooled(self.backbone, batch))

    def loss(self, batch: dict, t: int, ctx: TaskContext) -> torch.Tensor:
        """The training loss of a batch of task t (one of ctx.tasks), under the loop's autocast."""
        return task_loss(self.forward(batch, t), batch["label"], self.tasks[t])

    def after_backward(self, ctx: TaskContext, param_groups: list[dict]):
        """Between `loss.backward()` and gradient clipping + the optimizer step: the gradients are
        in `p.grad` for p in the optimizer's `param_groups` (A-GEM projects them here). Called only
        when overridden. A forward of its own runs under `ctx.autocast()`."""

    def after_step(self, ctx: TaskContext):
        pass

    def end_task(self, ctx: TaskContext):
        pass

    def diagnostics(self, t: int, data) -> dict:
        """What a composition learned for task t, measured with its final model on `data` (task t's
        test split): stored in metrics.json under "diagnostics" (AdapterFusion's attention entropy,
        ATLAS's weights, ScaLearn's omega), with "at_init": true when it stayed where it started."""
        return {}

    def predict(self, batch: dict, t: int) -> torch.Tensor:
        return self.forward(batch, t)

    def frozen_prefix(self) -> int:
        """How many bottom blocks of the backbone (with its input embeddings) stay frozen and
        unmodified for the whole run; `len(self.backbone.layers)` with every backbone parameter
        frozen is the whole backbone. The runner computes that prefix once per example and caches
        it (bench/prefix.py; it runs in eval mode). 0: nothing to cache."""
        return 0

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, state: dict):
        self.net.load_state_dict(state)

    # -- cost accounting ------------------------------------------------------------------
    def task_modules(self, t: int) -> list[nn.Module]:
        """Modules specific to task t (its head, adapters ...), counted for inference."""
        return [self.heads[t]]

    def param_report(self) -> dict:
        """Parameters stored after the sequence and used at inference for one task."""
        backbone = n_params(self.backbone.parameters()) + self.backbone.external_params()
        extra = n_params(p for name, m in self.net.items() if name != "backbone" for p in m.parameters())
        inference = backbone + max(n_params(p for m in self.task_modules(t) for p in m.parameters())
                                   for t in range(len(self.tasks)))
        return {"stored": backbone + extra, "inference": inference}
