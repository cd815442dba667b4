"""AdapterFusion (Pfeiffer et al. 2021) in the continual setting: the backbone is frozen; task t
first trains its own Houlsby adapters + head exactly as `adapter` does (stage "adapter",
knowledge extraction), then, for t >= 1, a fusion layer per adapter site over the frozen adapters
of tasks 0..t (its own included) + the head (stage "fusion", knowledge composition):

    q = W_Q h,  k_n = W_K a_n(h),  v_n = W_V a_n(h),  h <- h + sum_n softmax_n(q . k_n) v_n
    loss = task loss + lambda * sum_sites ||I - W_V||^2,   lambda = 0.01

The default sequence rescales the fusion learning rate to its budget (its `hparams:` block).
Task 0 has nothing to fuse and is a plain adapter. Every fusion is kept: inference on task t runs
adapters 0..t and fusion t, which `task_modules` counts."""
from dataclasses import dataclass

from torch import nn

from bench.fusion import attention_diagnostics, fused, fusion_set, value_regulariser
from bench.method import Stage, require
from bench.registry import METHODS
from methods.adapter import Adapter, AdapterHParams


@dataclass
class AdapterFusionHParams(AdapterHParams):
    value_reg: float = 0.01   # lambda of the W_V regulariser
    # the paper's 5e-5, for 10 epochs (thousands of steps); a budget of tens of steps needs more
    # (the default sequence sets 5e-3, see tasks/sequences/default.yaml)
    fusion_lr: float = 5e-5
    fusion_steps: float = 1.0  # fusion stage budget, in units of the task's step budget

    def __post_init__(self):
        super().__post_init__()
        require(self.value_reg >= 0, "value_reg", self.value_reg, ">= 0")
        require(self.fusion_lr > 0, "fusion_lr", self.fusion_lr, "> 0")
        require(self.fusion_steps > 0, "fusion_steps", self.fusion_steps, "> 0")


@METHODS.register("adapter_fusion")
class AdapterFusion(Adapter):
    HParams = AdapterFusionHParams
    trains_as = "adapter"  # stage "adapter" is `adapter`'s training of the task
    isolates_tasks = True  # task t reads adapters 0..t and fusion t, all frozen after task t

    def setup(self):
        super().setup()
        d = self.injector.widths
        self.fusions = nn.ModuleDict({str(t): fusion_set(len(self.injector), d) for t in range(1, len(self.tasks))})
        self.net["fusions"] = self.fusions

    def stages(self, t):
        adapter = self.alone("adapter")
        return [adapter] if t == 0 else [adapter, Stage("fusion", steps=self.hp.fusion_steps)]

    def begin_stage(self, ctx):
        if ctx.stage.name == "fusion":  # the fused adapters are fixed: no weight gradients for them
            self.adapters[: ctx.task + 1].requires_grad_(False)

    def uses_fusion(self, t: int, ctx) -> bool:
        """False for task 0 and for the task whose adapter is trained alone (stage "adapter")."""
        extracting = ctx is not None and ctx.stage.name == "adapter" and t == ctx.task
        return t > 0 and not extracting

    def trainable_parameters(self, t, ctx):
        if not self.uses_fusion(t, ctx):
            return super().trainable_parameters(t, ctx)
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": list(self.fusions[str(t)].parameters()), "lr": self.hp.fusion_lr}]

    def activate(self, t, ctx):
        if self.uses_fusion(t, ctx):
            self.injector.fn = fused(self.fusions[str(t)], self.adapters[: t + 1])
        else:
            super().activate(t, ctx)

    def loss(self, batch, t, ctx):
        loss = super().loss(batch, t, ctx)
        if self.uses_fusion(t, ctx):
            loss = loss + self.hp.value_reg * value_regulariser(self.fusions[str(t)])
        return loss

    def task_modules(self, t):
        fusion = [self.fusions[str(t)]] if t > 0 else []
        return [self.heads[t], *self.adapters[: t + 1], *fusion]

    def diagnostics(self, t, data):
        if t == 0:
            return {}
        return attention_diagnostics(self.injector, self.fusions[str(t)], self.adapters[: t + 1], self.probe_run(t, data))
