"""InfLoRA (Liang & Li, CVPR 2024): one LoRA per task whose down-projection is designed, not
learnt, so that task t's update cannot interfere with earlier tasks; only the up-projection trains.
Every LoRA trained so far runs, summed, for every task (as the paper's single model).

Per LoRA layer (key and value projections of every block), with PEFT's names (the paper calls the
fixed down-projection B_t and the trained up-projection A_t):
1. before task t, C_t = mean over the tokens of x x^T, x the layer's inputs on task t's training
   examples through the current model (earlier LoRAs running);
2. M: orthonormal basis of the earlier tasks' input subspace (GPM memory, below); P = I − M M^T;
3. lora_A_t = U_r^T P / √3, U_r the top-r left singular vectors of P C_t (the released code's
   scale; × P keeps rows in span(P) also when P C_t has rank < r); lora_B_t = 0, trained;
   so ΔW_t = B_t A_t has its row space in the complement of span(M): ΔW_t x = 0 for earlier inputs;
4. after task t, C_t again with LoRA t trained, and M grows by the top left singular vectors of
   (I − M M^T) C_t until M keeps a share ε_t of C_t's energy (Σσ² of the projection of C_t on span(M)
   over Σσ² of C_t), ε_t = λ_b + (λ_e − λ_b) t / T (GPM, Saha et al. 2021, as InfLoRA's code).

Defaults (the released CIFAR-100 / ImageNet-R configs): r = 10, λ_b = 0.95, λ_e = 1.0, Adam lr 5e-4
(here AdamW under the harness's schedule), PEFT scaling α/r = 1 (the code adds B A x unscaled).
Simplifications: C_t from the first `samples` (256) training examples, not the whole split (two
forward passes per task of the leaderboard's budget), padding tokens included (they only widen the
protected subspace); M is kept in its "remove" form only (DualGPM switches to storing the
complement once M passes d/2 dimensions, a memory saving with the same projector); one threshold
rule for every task (the code keeps one direction fewer after the first task). The memory is
d x d buffers per layer in `self.net` (resume restores it); the paper's class-incremental key
matching (k-means task keys) is not needed in this task-incremental setting.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.backbones.base import pooled
from bench.method import require
from bench.registry import METHODS
from methods.lora import LoRA, LoRAHParams


@dataclass
class InfLoRAHParams(LoRAHParams):
    r: int = 10
    alpha: float = 10.0   # = r: PEFT scales B A x by α/r = 1, as InfLoRA
    targets: str = "k,v"
    lamb: float = 0.95    # GPM energy threshold after the first task ...
    lame: float = 1.0     # ... rising linearly towards this one
    samples: int = 256    # training examples per representation matrix (the paper: the whole split)

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.lamb <= self.lame <= 1, "lamb, lame", (self.lamb, self.lame), "0 < lamb <= lame <= 1")
        require(self.samples >= 1, "samples", self.samples, "an integer >= 1")


def left_singular(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X's left singular vectors and squared singular values, largest first, from the eigenvectors of
    X X^T (symmetric: eigh is cheaper than an SVD)."""
    w, V = torch.linalg.eigh(X @ X.T)
    return V.flip(1), w.flip(0).clamp(min=0)


def grow(M: torch.Tensor, C: torch.Tensor, eps: float) -> torch.Tensor:
    """GPM's basis update: M [d, k] plus the top left singular vectors of (I − M M^T) C until the
    columns keep a share `eps` of C's energy Σσ² = ||C||_F² (float64)."""
    total = C.square().sum()
    if total == 0:  # no inputs reached the layer (a tower the task does not run): nothing to protect
        return M
    R = C - M @ (M.T @ C)
    kept = (total - R.square().sum()) / total  # the share span(M) already holds
    if kept >= eps:
        return M
    U, S2 = left_singular(R)
    below = int(((kept + torch.cumsum(S2 / total, 0)) < eps).sum())
    return torch.cat([M, U[:, :below + 1]], 1)[:, :C.shape[0]]


@METHODS.register("inflora")
class InfLoRA(LoRA):
    HParams = InfLoRAHParams
    lr = 5e-4
    summed = True

    def setup(self):
        super().setup()
        memory = nn.Module()  # per LoRA layer: basis [d, d], its first `size[i]` columns span earlier inputs
        for i, a in enumerate(self.loras.A(0)):
            memory.register_buffer(f"basis{i}", torch.zeros(a.shape[1], a.shape[1]))
        memory.register_buffer("size", torch.zeros(len(self.loras.layers), dtype=torch.long))
        self.net["inflora_memory"] = memory

    def basis(self, i: int) -> torch.Tensor:
        memory = self.net["inflora_memory"]
        return getattr(memory, f"basis{i}")[:, :int(memory.size[i])].double()

    def trained(self, t):
        return self.loras.B(t)  # the down-projection is designed in `begin_task`, then fixed

    def representations(self, ctx) -> list[torch.Tensor]:
        """Per LoRA layer, mean x x^T [d, d] (float64) over the tokens of task ctx.task's first
        `samples` training examples, through the model as it computes that task now."""
        sums = [torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64, device=a.device) for a in self.loras.A(0)]
        tokens = [0] * len(sums)
        last = [None, None, 0]  # the last input, its x^T x and token count: key and value read the same input

        def collect(i):
            def hook(module, inputs, output):
                if last[0] is not inputs[0]:
                    x = inputs[0].detach().flatten(0, -2).float()
                    with torch.autocast(x.device.type, enabled=False):  # fp32 products, summed in fp64
                        last[:] = [inputs[0], (x.T @ x).double(), len(x)]
                sums[i] += last[1]
                tokens[i] += last[2]
            return hook
        handles = [layer.register_forward_hook(collect(i)) for i, layer in enumerate(self.loras.layers)]
        split = ctx.train_data[ctx.task]
        first = torch.arange(min(len(split), self.hp.samples), device=split.fields["label"].device)
        self.activate(ctx.task, None)
        self.net.eval()
        try:
            with torch.no_grad(), ctx.autocast():
                for idx in first.split(64):
                    pooled(self.backbone, split.batch(idx))
        finally:
            for h in handles:
                h.remove()
            self.net.train()
        return [s / max(n, 1) for s, n in zip(sums, tokens)]  # 0: a tower the task does not run

    def begin_task(self, ctx):
        super().begin_task(ctx)
        with torch.no_grad():
            for i, (C, a) in enumerate(zip(self.representations(ctx), self.loras.A(ctx.task))):
                M = self.basis(i)
                P = torch.eye(len(C), dtype=C.dtype, device=C.device) - M @ M.T
                U = left_singular(P @ C)[0][:, :a.shape[0]]
                a.copy_(U.T @ P / 3 ** 0.5)

    def end_task(self, ctx):
        eps = self.hp.lamb + (self.hp.lame - self.hp.lamb) * ctx.task / len(self.tasks)
        memory = self.net["inflora_memory"]
        with torch.no_grad():
            for i, C in enumerate(self.representations(ctx)):
                M = grow(self.basis(i), C, eps)
                getattr(memory, f"basis{i}")[:, :M.shape[1]] = M
                memory.size[i] = M.shape[1]
        super().end_task(ctx)
