"""Backbones: one file each; `build_backbone("name:arg")` resolves a spec string."""
from bench.registry import BACKBONES


def build_backbone(spec: str):
    """`spec` is "<name>" or "<name>:<argument>" (hub id, architecture, local path ...)."""
    name, _, arg = spec.partition(":")
    return BACKBONES.get(name)(arg or None)
