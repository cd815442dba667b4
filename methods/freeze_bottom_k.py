"""Freeze the bottom k transformer blocks (CLiMB's `freeze_bottom_k_layers`): the embeddings and
blocks 0..k−1 of the shared backbone never change; the upper blocks and each task's head train
on every task in turn, as in sequential fine-tuning.

k defaults to the same share of the depth as CLiMB's 9 of ViLT's 12 blocks: k = ⌊¾ · #blocks⌋,
i.e. 9 of 12 on ViLT and 4 of 6 on the default MiniLM-L6 (¾ · 6 = 4.5, rounded down so that more
of the model adapts, not less). Every backbone parameter outside the blocks counts as input side
and is frozen with them: the word/position embeddings and the visual-token projection on the
default backbone (on ViLT this also freezes the final LayerNorm, which CLiMB trains).
"""
import typing
from dataclasses import dataclass

from bench.errors import BenchError
from bench.method import Method, require
from bench.registry import METHODS


@dataclass
class FreezeBottomKHParams:
    k: typing.Optional[int] = None  # frozen blocks; None: ⌊fraction · #blocks⌋
    fraction: float = 0.75          # CLiMB: 9 of ViLT's 12 blocks

    def __post_init__(self):  # the upper bound of k depends on the backbone: checked in `frozen_blocks`
        require(self.k is None or self.k >= 0, "k", self.k, "None or an integer >= 0")
        require(0 <= self.fraction <= 1, "fraction", self.fraction, "in [0, 1]")


@METHODS.register("freeze_bottom_k")
class FreezeBottomK(Method):
    HParams = FreezeBottomKHParams

    def frozen_blocks(self) -> int:
        n = len(self.backbone.layers)
        k = int(self.hp.fraction * n) if self.hp.k is None else self.hp.k
        if not 0 <= k <= n:
            raise BenchError(f"freeze_bottom_k.k must be in 0..{n} for this backbone ({n} blocks), got {k}")
        return k

    def frozen_prefix(self) -> int:
        return self.frozen_blocks()  # the frozen bottom is computed once per example (bench/prefix.py)

    def setup(self):
        trainable = {id(p) for layer in self.backbone.layers[self.frozen_blocks():] for p in layer.parameters()}
        for p in self.backbone.parameters():
            if id(p) not in trainable:
                p.requires_grad_(False)
