"""Frozen encoder: the pretrained backbone never changes; only each task's head trains.
Zero forgetting by construction; the transfer floor for the adapter family."""
from bench.method import Method
from bench.registry import METHODS


@METHODS.register("frozen")
class Frozen(Method):
    def setup(self):
        self.backbone.freeze()
