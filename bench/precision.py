"""Numeric precision of the loop's forward passes (`--set precision=auto|fp32|bf16`) and optional
`torch.compile` of the backbone (`--set compile=true`). bf16 changes the numbers, so the resolved
precision is part of a run's identity (RunConfig.precision); compiling does not."""
import contextlib

import torch

from bench.errors import did_you_mean

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # fp16 would need loss scaling; bf16 does not
CHOICES = ("auto", *PRECISIONS)


def resolve_precision(precision: str, device: str = "auto") -> str:
    """"auto" -> bf16 where the hardware runs it natively: a CUDA GPU with bf16, or a CPU with
    AMX-BF16 tiles or AVX512-BF16 dot products (measured on this project's 2-core machines, default
    model, one thread: Intel with AMX 2.1x faster training steps and 2.6x faster evaluation; AMD
    Zen 4 with AVX512-BF16 1.8x and 2.2x); fp32 everywhere else, where bf16 would be emulated."""
    if precision not in CHOICES:
        raise did_you_mean(precision, CHOICES, "precision")
    if precision != "auto":
        return precision
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported() else "fp32"


def autocast(precision: str, device_type: str):
    """Autocast context for `precision` ("fp32": a no-op). Parameters and optimizer states stay fp32."""
    if precision not in PRECISIONS:
        raise did_you_mean(precision, PRECISIONS, "precision")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type, dtype=dtype))
    if device_type == "cpu" and torch.is_grad_enabled():
        # torch's CPU flash-attention backward in bf16 alone takes longer than a whole fp32 step
        # (36 ms vs 2 ms per MiniLM layer); the math kernel's backward runs on the AMX matmuls.
        from torch.nn.attention import SDPBackend, sdpa_kernel
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def compile_backbone(method) -> None:
    """Compile the backbone's forward in place (module hooks, e.g. adapters, are traced with it)."""
    method.backbone.compile()
