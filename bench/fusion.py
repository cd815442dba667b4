"""AdapterFusion (Pfeiffer et al. 2021): attention over the outputs of N frozen adapters, one fusion
layer per adapter site. Shared by `adapter_fusion` (kept for inference) and `i2i` (a transient
teacher). At a site with input h and adapter outputs a_n(h):

    q = W_Q h,   k_n = W_K a_n(h),   v_n = W_V a_n(h)
    h <- h + sum_n softmax_n(q . k_n) v_n

W_V starts as the identity (so training starts from an attention-weighted sum of the adapters'
own outputs) and is pulled back to it by the regulariser lambda * ||I - W_V||^2; W_Q and W_K start
as BERT-style layers (N(0, 0.02), zero bias), as in the paper's code.
"""
import math
from typing import Callable, Sequence

import torch
from torch import nn

from bench.adapters import site_widths


class Fusion(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        for layer in (self.query, self.key):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(d))
        nn.init.zeros_(self.value.bias)

    def attention(self, h: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """softmax_n(q . k_n): weights [..., N] of the adapter outputs [..., N, d] for inputs h [..., d]."""
        scores = torch.einsum("...d,...nd->...n", self.query(h), self.key(outputs))
        return scores.softmax(-1)

    def forward(self, h: torch.Tensor, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(outputs), dim=-2)
        return h + torch.einsum("...n,...nd->...d", self.attention(h, stacked), self.value(stacked))

    def value_penalty(self) -> torch.Tensor:
        """||I - W_V||^2 (squared Frobenius norm): zero at initialisation."""
        w = self.value.weight
        return (torch.eye(w.shape[0], device=w.device, dtype=w.dtype) - w).pow(2).sum()


def fusion_set(n_sites: int, d: int | Sequence[int]) -> nn.ModuleList:
    """One task's fusion layers: one per injection site, `d` wide (an int or `Injector.widths`)."""
    return nn.ModuleList(Fusion(w) for w in site_widths(n_sites, d))


def fusion_set_params(n_sites: int, d: int | Sequence[int]) -> int:
    """Parameter count of `fusion_set(n_sites, d)`, without allocating it."""
    with torch.device("meta"):
        return sum(p.numel() for p in fusion_set(n_sites, d).parameters())


def fused(fusions: nn.ModuleList, adapters: Sequence[nn.ModuleList]) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """The `Injector.fn` that fuses, at site i, the outputs of every adapter set's i-th bottleneck."""
    return lambda i, h: fusions[i](h, [a[i](h) for a in adapters])


def value_regulariser(fusions: nn.ModuleList) -> torch.Tensor:
    """sum over sites of ||I - W_V||^2."""
    return torch.stack([f.value_penalty() for f in fusions]).sum()


def attention_diagnostics(injector, fusions: nn.ModuleList, adapters: Sequence[nn.ModuleList], run) -> dict:
    """Per site, over the real tokens of the inputs `run()` feeds the backbone: mean attention
    entropy / log N (1 = uniform), mean top weight against 1/N, mean weight per source; "at_init"
    when no site's mean top weight is 0.02 above uniform."""
    sites = {}

    def look(i, h, real):
        probs = fusions[i].attention(h, torch.stack([a[i](h) for a in adapters], dim=-2))[real].float()
        n = probs.shape[-1]
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean() / math.log(n) if n > 1 else torch.tensor(0.0)
        sites[i] = {"entropy_vs_uniform": float(entropy), "top_weight": float(probs.max(-1).values.mean()),
                    "uniform": 1 / n, "mean_weight": probs.mean(0).tolist()}
    injector.probe(run, look)
    return {"sites": [sites[i] for i in sorted(sites)],
            "at_init": all(s["top_weight"] - s["uniform"] < 0.02 for s in sites.values())}
