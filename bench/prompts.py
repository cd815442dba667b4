"""The one prompt injection mechanism: prompt tokens placed into the backbone's token sequence.

`PromptInjector` hooks the transformer blocks of each tower (`Backbone.towers`) for one forward
(`use`), given `{(tower, depth): (tokens [N, n, d], last)}`: the n tokens are
prepended to the hidden states entering block `depth` of that tower, attended by (and attending)
the sequence in blocks depth..last, and removed after block `last`. Every block's attention
mask is widened to cover them; positions, pooling and everything outside the blocks see the
sequence unchanged. Two uses:
  - prompt tuning (L2P): inserted before block 0, removed after the last block;
  - a per-layer prefix (DualPrompt, CODA-Prompt): inserted before block l, removed after it, so
    the tokens serve only as extra keys and values of block l's attention: k = W_k n(p), v =
    W_v n(p) (the block's own projections, after its pre-attention norm n where it has one: ViLT,
    CLIP), a reparameterisation of prefix-tuning's free key/value prefixes in which a token's key
    and value are tied.
Per backbone only the name of the blocks' mask argument differs (`Backbone.block_mask_arg`).
PEFT's prompt/prefix tuning is not used: it feeds one prompt per adapter through the HF model's
`past_key_values` / input embeddings, and cannot pick prompts per example from a query, which all
three methods do; ViLT's and CLIP's HF layers take no `past_key_values`, and open_clip is not HF.

`Prompted` is the base of the prompt methods: frozen backbone, a head per task, and
forward = query (the frozen backbone's pooled output) -> prompts -> prompted forward. The query
is what `frozen` caches: the whole backbone is frozen and, outside `use`, unhooked, so the
method declares it a frozen prefix and reads the query from the cache (bench/prefix.py); the
prompted forward drops the cached field and runs the backbone on the example.
"""
import inspect
from contextlib import contextmanager

import torch
from torch import nn

from bench.backbones.base import FROZEN, pooled
from bench.method import Method, logits, task_loss
from bench.prefix import eval_mode


def widen_mask(mask: torch.Tensor | None, n: int, length: int, causal: bool, device=None) -> torch.Tensor | None:
    """`mask` over a sequence of `length` tokens -> over n prompt tokens prepended to it. Keys: the
    prompts are visible to every query. Queries (when the mask has a row per token): a prompt
    attends to the prompts and to what the first token attends to. Bool masks: True = attend
    (HF); float masks are additive (0 = attend)."""
    if mask is None:
        if not causal:
            return None
        mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]  # the HF causal mask SDPA skipped
    attend = True if mask.dtype == torch.bool else 0.0
    mask = torch.cat([mask.new_full((*mask.shape[:-1], n), attend), mask], -1)
    if mask.shape[-2] == length and length > 1:
        rows = torch.cat([mask.new_full((*mask.shape[:-2], n, n), attend), mask[..., :1, n:].expand(*mask.shape[:-2], n, length)], -1)
        mask = torch.cat([rows, mask], -2)
    return mask


class PromptInjector:
    """Puts prompt tokens into the backbone's blocks for one forward (`use`). Its hooks exist only
    inside `use`: outside it the backbone is untouched, so its unprompted output can be cached."""

    def __init__(self, backbone):
        self.towers = backbone.towers
        self.widths = [backbone.adapter_width(tower[0]) for tower in self.towers]
        self.mask_arg = backbone.block_mask_arg
        self.signatures = [[inspect.signature(block.forward) for block in tower] for tower in self.towers]
        self.prompts: dict = {}
        self.live: dict[int, tuple[int, int]] = {}  # tower -> (n tokens in the sequence, last block)

    @contextmanager
    def use(self, prompts: dict):
        self.prompts, self.live = prompts, {}
        handles = []
        for k in sorted({k for k, _ in prompts}):
            for i, block in enumerate(self.towers[k]):
                handles += [block.register_forward_pre_hook(self._pre(k, i), with_kwargs=True),
                            block.register_forward_hook(self._post(k, i))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.prompts, self.live = {}, {}

    def _pre(self, k: int, i: int):
        def hook(block, args, kwargs):
            inserted = (k, i) in self.prompts
            if not inserted and k not in self.live:
                return None
            bound = self.signatures[k][i].bind(*args, **kwargs)
            name = next(iter(bound.arguments))  # every block takes its hidden states first
            hidden = bound.arguments[name]
            if inserted:
                if k in self.live:
                    raise ValueError(f"prompt spans overlap at block {i} of tower {k}")
                tokens, last = self.prompts[k, i]
                self.live[k] = (tokens.shape[1], last)
                bound.arguments[name] = torch.cat([tokens.to(hidden.dtype), hidden], 1)
                length = hidden.shape[1]
            else:
                length = hidden.shape[1] - self.live[k][0]
            causal = bool(bound.arguments.get("kwargs", {}).get("is_causal"))  # HF CLIP's text tower
            bound.arguments[self.mask_arg] = widen_mask(bound.arguments.get(self.mask_arg), self.live[k][0], length, causal,
                                                     hidden.device)
            return bound.args, bound.kwargs
        return hook

    def _post(self, k: int, i: int):
        def hook(block, args, output):
            if k not in self.live or self.live[k][1] != i:
                return None
            n = self.live.pop(k)[0]
            if isinstance(output, tuple):
                return (output[0][:, n:], *output[1:])
            return output[:, n:]
        return hook


def fold(features: torch.Tensor, width: int) -> torch.Tensor:
    """Pooled features [..., m * width] -> [..., width], the mean of their width-wide blocks: one
    query width for every task (ViLT concatenates per-image outputs, CLIP [v, t, v * t])."""
    return features.unflatten(-1, (-1, width)).mean(-2)


def cosine(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[N, d] x [M, d] -> [N, M] cosine similarities."""
    return nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(keys, dim=-1).T


class Prompted(Method):
    """Frozen backbone + per-task head; subclasses build prompts from the query (`prompts`)."""

    def setup(self):
        self.backbone.freeze()
        self.injector = PromptInjector(self.backbone)
        seen = nn.Module()
        seen.register_buffer("n", torch.zeros((), dtype=torch.long))  # in the checkpoint: a resumed run knows it
        self.net["seen"] = seen

    def begin_task(self, ctx):
        super().begin_task(ctx)
        self.net["seen"].n.fill_(max(self.seen, ctx.task + 1))

    @property
    def seen(self) -> int:
        """Tasks begun so far: a prediction chooses among their prompts (not yet trained ones are noise)."""
        return int(self.net["seen"].n)

    def frozen_prefix(self) -> int:
        """The whole backbone: frozen, and unhooked outside a prompted forward, so the runner caches
        its unprompted pooled output once per example (bench/prefix.py) -- the query."""
        return len(self.backbone.layers)

    def query(self, batch: dict) -> torch.Tensor:
        """The frozen, unprompted backbone's pooled output [N, d], one row per forwarded sequence
        (multiple-choice: per choice), folded to the hidden width; from the cache when there."""
        q = batch.get(FROZEN + "pooled")
        if q is None:
            with torch.no_grad(), eval_mode([self.backbone]):
                q = pooled(self.backbone, batch)
        return fold(q.float(), self.backbone.hidden_size).flatten(0, -2)

    def prompts(self, q: torch.Tensor, t: int, training: bool) -> tuple[dict, torch.Tensor]:
        """({(tower, depth): (tokens [N, n, d], last block)}, the auxiliary loss, weighted) for
        queries q of task t; `training`: a training batch (`loss`), else a prediction."""
        raise NotImplementedError

    def outputs(self, batch: dict, t: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        spans, aux = self.prompts(self.query(batch), t, training)
        fields = {k: v for k, v in batch.items() if not k.startswith(FROZEN)}  # the prompted forward is not cached
        with self.injector.use(spans):
            return logits(self.heads[t], pooled(self.backbone, fields)), aux

    def forward(self, batch, t):
        return self.outputs(batch, t, False)[0]

    def loss(self, batch, t, ctx):
        out, aux = self.outputs(batch, t, True)
        return task_loss(out, batch["label"], self.tasks[t]) + aux

    def depths(self, first: int, last: int) -> list[tuple[int, int]]:
        """(tower, depth) of blocks first..last of every tower that has them."""
        return [(k, i) for k, tower in enumerate(self.injector.towers) for i in range(first, min(last + 1, len(tower)))]


def uniform(*shape) -> nn.Parameter:
    """L2P's and DualPrompt's prompt and key initialisation (their code's `uniform`: U(-1, 1))."""
    return nn.Parameter(torch.empty(*shape).uniform_(-1, 1))
