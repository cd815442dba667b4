"""Pfeiffer adapters (Pfeiffer et al. 2021, the architecture AdapterFusion found best): the same
bottleneck as `adapter`, h <- h + W_up GELU(W_down h) with r = 16, but only after the FFN of each
block, so half the adapter parameters of Houlsby's placement."""
from bench.registry import METHODS
from methods.adapter import Adapter


@METHODS.register("pfeiffer")
class Pfeiffer(Adapter):
    sites = ("ffn",)
    trains_as = "pfeiffer"
    isolates_tasks = True
