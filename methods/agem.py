"""A-GEM (Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM"). Each finished task keeps
an episodic memory; on task t every step's gradient g (after backward, in `after_backward`) is
checked against the reference gradient g_ref of the loss on a random batch from the memories of
tasks 0..t−1 (each example through its own task's head), and projected where they conflict:
    g ← g − (g·g_ref / g_ref·g_ref) g_ref   if g·g_ref < 0,   else g,
so the step does not increase the memory loss to first order. g and g_ref cover every parameter
the optimizer steps (the backbone and head t; earlier heads are not trained, as in the paper's
multi-head setting, where they get no gradient from the current task).

g_ref's forward runs under the loop's autocast (`ctx.autocast()`, bf16 where the run uses it) and
draws no random numbers from the run's stream; dot products are taken on the fp32 gradients, and the
projection is applied without a host sync (the scale is min(g·g_ref, 0) / g_ref·g_ref).
`project=False` is a control: the same reference gradient, no projection; it trains exactly as
`finetune` does (tested), which also makes the first task `finetune`'s (`trains_as`: no memory yet).

Defaults, rescaled to the default sequence's budget (20 steps of 32 per task):
- memory_per_task 128: the first 128 examples of each task's training split (the split is in a
  fixed random order per seed, so this is a uniform sample, and needs no storage beyond the split:
  resume is exact with no state); 10 % of a task, as `er`'s rescaled memory. The paper keeps a
  fixed number of examples per task too.
- ref_batch 32: the paper's reference batch is 256 examples; here that would be 8 times the
  training batch per step, so it is the training batch size (A-GEM costs about 2x `finetune`).
"""
from dataclasses import dataclass

import torch

from bench.errors import BenchError
from bench.memory import sample_mean
from bench.method import Method
from bench.registry import METHODS


@dataclass
class AGEMHParams:
    memory_per_task: int = 128  # episodic memory of each finished task (examples)
    ref_batch: int = 32         # memory examples per reference gradient (paper: 256)
    project: bool = True        # False: compute g_ref but keep g (a control that equals finetune)

    def __post_init__(self):
        if self.memory_per_task < 1 or self.ref_batch < 1:
            raise BenchError(f"agem.memory_per_task and agem.ref_batch must be >= 1, got {self.memory_per_task}, {self.ref_batch}")


@METHODS.register("agem")
class AGEM(Method):
    HParams = AGEMHParams
    trains_as = "finetune"  # no memory on the first task: its steps are finetune's

    def begin_task(self, ctx):
        self.generator = torch.Generator().manual_seed(ctx.seed)

    def reference_batch(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(tasks, indices): `ref_batch` examples drawn uniformly from the memories of tasks < ctx.task."""
        sizes = torch.tensor([min(self.hp.memory_per_task, len(ctx.train_data[k])) for k in range(ctx.task)])
        starts = sizes.cumsum(0) - sizes
        pick = torch.randperm(int(sizes.sum()), generator=self.generator)[:self.hp.ref_batch]
        tasks = torch.searchsorted(starts, pick, right=True) - 1
        return tasks, pick - starts[tasks]

    def reference_gradient(self, ctx, params: list[torch.Tensor]) -> list[torch.Tensor]:
        tasks, index = self.reference_batch(ctx)
        cuda = [p.device.index for p in params[:1] if p.device.type == "cuda"]
        with torch.random.fork_rng(devices=cuda), ctx.autocast():  # dropout draws leave the run's stream alone
            loss = sample_mean(tasks, index, ctx.train_data, lambda k, rows, batch: Method.loss(self, batch, k, ctx))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def after_backward(self, ctx, param_groups):
        if ctx.task == 0:
            return
        params = [p for g in param_groups for p in g["params"] if p.grad is not None]
        ref = self.reference_gradient(ctx, params)
        if not self.hp.project:
            return
        dot = sum((p.grad * r).sum() for p, r in zip(params, ref))
        scale = dot.clamp(max=0) / sum((r * r).sum() for r in ref).clamp(min=torch.finfo(torch.float32).tiny)
        for p, r in zip(params, ref):
            p.grad.sub_(scale * r)
