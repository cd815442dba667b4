"""Frozen-prefix caching: compute once what a frozen bottom of the backbone makes of each example.

A method whose trainable parts sit on top of a frozen bottom says so with
`Method.frozen_prefix() -> k`: the input embeddings and blocks 0..k-1 stay frozen and unmodified
for the whole run (`frozen`: all blocks and every other backbone parameter, i.e. the whole
backbone). What that prefix computes for an example then never changes, so the runner computes
it once per example -- in eval mode (a frozen feature extractor: no dropout) and without
gradients -- stores it on disk (reused across seeds and runs; keyed by the split, k, the prefix's
weights and code, and the precision) and starts training and evaluation from it: the whole
backbone's pooled output, or the hidden state after block k (`Backbone.forward_from`).

`cache_prefix=false` computes the same state for every batch instead: identical numbers (up to
float summation order), the speed of no cache. That is how the cache is tested and measured.
"""
import dataclasses
import hashlib
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from bench.backbones.base import FROZEN, Backbone, per_choice, pooled
from bench.cache import code_digest, safe_name
from bench.data import EncodedSplit
from bench.errors import BenchError
from bench.precision import autocast
from bench.store import load_tensors, save_tensors, state_digest


def hooked(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


@contextmanager
def eval_mode(modules: list[nn.Module]):
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


class FrozenPrefix:
    def __init__(self, backbone: Backbone, depth: int, whole: bool, modules: list[nn.Module], precision: str):
        self.backbone, self.depth, self.whole, self.modules, self.precision = backbone, depth, whole, modules, precision
        backbone.frozen_depth = 0 if whole else depth
        self._fingerprint = None
        # seconds computing the states of each split `attach` returned (by its id), as first computed:
        # a state read from the cache costs what computing it took. Part of the method's training cost.
        self.seconds: dict[int, float] = {}
        self.check()

    @classmethod
    def of(cls, method, precision: str = "fp32", log=print) -> "FrozenPrefix | None":
        """The method's frozen prefix, or None when it declares none or the backbone cannot restart there."""
        depth = method.frozen_prefix()
        backbone = method.backbone
        n = len(backbone.layers)
        if not depth:
            return None
        if not 0 < depth <= n:
            raise BenchError(f"{type(method).__name__}.frozen_prefix() = {depth}: the backbone has {n} blocks")
        if depth == n and not any(p.requires_grad for p in backbone.parameters()) and not hooked(backbone):
            return cls(backbone, depth, True, [backbone], precision)
        try:
            modules = backbone.prefix_modules(depth)
        except NotImplementedError:
            log(f"backbone {type(backbone).__name__} cannot restart from block {depth}: frozen prefix not cached")
            return None
        return cls(backbone, depth, False, modules, precision)

    def check(self):
        """The prefix must really be frozen and unmodified, or cached states would be wrong."""
        for m in self.modules:
            if any(p.requires_grad for p in m.parameters()):
                raise BenchError(f"frozen prefix (k={self.depth}) has trainable parameters in {type(m).__name__}")
            if hooked(m):
                raise BenchError(f"frozen prefix (k={self.depth}) has forward hooks in {type(m).__name__} (adapters?)")

    def fingerprint(self) -> str:
        """Digest of the prefix's weights and the backbone's code."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=10)
            h.update(code_digest(type(self.backbone), Backbone).encode())
            for m in self.modules:
                h.update(state_digest(m.state_dict()).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def state(self, batch: dict) -> dict:
        """The prefix's output for one batch, as `frozen.*` fields."""
        with torch.no_grad(), eval_mode(self.modules), autocast(self.precision, batch["label"].device.type):
            if self.whole:
                return {FROZEN + "pooled": pooled(self.backbone, batch)}
            out = per_choice(self.backbone, batch, lambda b, x: b.forward_prefix(x, self.depth))
        return {FROZEN + k: v for k, v in out.items()}

    def on_the_fly(self, split: EncodedSplit) -> EncodedSplit:
        return dataclasses.replace(split, derive=self.state)

    def attach(self, split: EncodedSplit, cache_dir: Path | None, batch_size: int = 256) -> EncodedSplit:
        """`split` with the prefix's output of every example added (read from the cache when there)."""
        path = None
        if cache_dir is not None and split.key is not None:
            tag = f"{'all' if self.whole else self.depth}-{self.fingerprint()}-{self.precision}"
            path = Path(cache_dir) / "prefix" / safe_name(self.backbone.cache_key) / f"{split.key}-{tag}.pt"
        states, seconds = None, 0.0
        if path is not None and path.exists():
            try:
                states = load_tensors(path)
                seconds = float(states.pop("seconds", torch.tensor(0.0)))
                if any(len(v) != len(split) for v in states.values()):
                    raise ValueError("cached prefix states do not match the split")
                device = split.fields["label"].device
                states = {k: v.to(device) for k, v in states.items()}
            except Exception:  # a corrupt cache entry is recomputed, never trusted
                states = None
                path.unlink(missing_ok=True)
        if states is None:
            t0 = time.time()
            parts = [self.state(batch) for batch in split.batches(batch_size)]
            states = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            seconds = time.time() - t0
            if path is not None:
                save_tensors(path, {**{k: v.cpu() for k, v in states.items()}, "seconds": torch.tensor(seconds)})
        out = dataclasses.replace(split, fields={**split.fields, **states}, derive=None)
        self.seconds[id(out)] = seconds
        return out
