"""The one adapter injection mechanism: forward hooks on the backbone's adapter sites.

Every backbone names, per block, the modules whose output an adapter may rewrite
(`Backbone.adapter_sites`). `Injector` hooks them once; a method then decides what happens at
each site by setting one function `fn(site_index, h) -> h`. A plain adapter, AdapterFusion,
ScaLearn and ATLAS are all just different `fn`s over banks of `Bottleneck`s.
"""
from typing import Callable, Sequence

import torch
from torch import nn

from bench.errors import BenchError


class Bottleneck(nn.Module):
    """Houlsby bottleneck: up(act(down(h))); zero-initialised up-projection so that
    h + adapter(h) starts as the identity."""

    def __init__(self, d: int, reduction: int = 16):
        super().__init__()
        self.down = nn.Linear(d, max(1, d // reduction))
        self.up = nn.Linear(max(1, d // reduction), d)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(h)))


def site_widths(n_sites: int, d: int | Sequence[int]) -> list[int]:
    """Per-site widths from one width shared by every site or a list of them (`Injector.widths`)."""
    widths = [d] * n_sites if isinstance(d, int) else list(d)
    if len(widths) != n_sites:
        raise ValueError(f"{len(widths)} widths for {n_sites} adapter sites")
    return widths


def adapter_set(n_sites: int, d: int | Sequence[int], reduction: int) -> nn.ModuleList:
    """One task's adapters: a bottleneck per injection site, `d` wide (an int or per-site widths)."""
    return nn.ModuleList(Bottleneck(w, reduction) for w in site_widths(n_sites, d))


class Injector:
    """Hooks `sites` ("attn", "ffn") of every backbone block; `fn` rewrites their outputs."""

    def __init__(self, backbone, sites=("attn", "ffn")):
        hooked = [(mod, backbone.adapter_width(layer)) for layer in backbone.layers
                  for site, mod in backbone.adapter_sites(layer).items() if site in sites]
        self.modules = [mod for mod, _ in hooked]
        self.widths = [width for _, width in hooked]  # per site: modules built on sites use these
        self.fn: Callable[[int, torch.Tensor], torch.Tensor] | None = None
        # The padding mask [B, L] of the batch the backbone is computing (`Backbone.token_mask`),
        # for site functions that pool over tokens (ATLAS); None outside a backbone forward. It is
        # set by hooks on the backbone's own call, so a site function sees its batch's mask only.
        self.mask: torch.Tensor | None = None
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        self._handles += [backbone.register_forward_pre_hook(self._enter), backbone.register_forward_hook(self._leave)]

    def _enter(self, backbone, args):
        self.mask = backbone.token_mask(args[0])

    def _leave(self, backbone, args, output):
        self.mask = None

    def _hook(self, index: int):
        def hook(module, inputs, output):
            return output if self.fn is None else self.fn(index, output)
        return hook

    @torch.no_grad()
    def probe(self, run: Callable[[], object], look: Callable[[int, torch.Tensor, torch.Tensor], None]) -> None:
        """Call `run()` (a forward of the backbone) with `look(site, h, real)` seeing every site's
        input h [B, L, d] and its real-token mask [B, L] (bool) before the active `fn` rewrites it."""
        active = self.fn

        def fn(i, h):
            look(i, h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if self.mask is None else self.mask.bool())
            return active(i, h)
        self.fn = fn
        try:
            run()
        finally:
            self.fn = active

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def width(self) -> int:
        """The width shared by every site, for modules stacked across sites into one tensor; a
        BenchError on backbones whose sites differ (the two towers of a CLIP model)."""
        if len(set(self.widths)) != 1:
            raise BenchError(f"this method stacks one {max(self.widths)}-wide tensor over all adapter sites, but the "
                             f"backbone's sites differ in width ({sorted(set(self.widths))}), e.g. the two towers of a CLIP model")
        return self.widths[0]

    def remove(self):
        for h in self._handles:
            h.remove()
