"""Frozen encoder: the pretrained backbone never changes; only each task's head trains.
Zero forgetting by construction; the transfer floor for the adapter family. The backbone is a
fixed feature extractor (eval mode), so its pooled output is computed once per example and
cached (bench/prefix.py): training the heads costs almost nothing."""
from bench.method import Method
from bench.registry import METHODS


@METHODS.register("frozen")
class Frozen(Method):
    isolates_tasks = True

    def setup(self):
        self.backbone.freeze()

    def frozen_prefix(self) -> int:
        return len(self.backbone.layers)
