"""Numeric precision of the loop's forward passes (`--set precision=bf16`) and optional
`torch.compile` of the backbone (`--set compile=true`): speed options for GPUs. bf16 changes the
numbers, so it is part of a run's identity (RunConfig.precision); compiling does not."""
import contextlib

import torch

from bench.errors import did_you_mean

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # fp16 would need loss scaling; bf16 does not


def autocast(precision: str, device_type: str):
    """Autocast context for `precision` ("fp32": a no-op). Parameters and optimizer states stay fp32."""
    if precision not in PRECISIONS:
        raise did_you_mean(precision, PRECISIONS, "precision")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def compile_backbone(method) -> None:
    """Compile the backbone's forward in place (module hooks, e.g. adapters, are traced with it)."""
    method.backbone.compile()
