"""Images as cached uint8 pixels, for backbones whose image encoder can train (ViLT, CLIP towers)
and so cannot cache features. `encode_images` runs the model's own processor up to, but not
including, its normalisation: resized/cropped pixels are still exact uint8 values, 4x smaller
than floats in the cache and on the device; `Normalize` finishes the processor's work in `forward`."""
import hashlib
import sys
from typing import Sequence

import torch
from torch import nn

from bench.images import MAX_ASPECT, cap_aspect, load_image

CHUNK = 256  # images per processor call: bounds the float temporaries of a large split


def encoding_key(prefix: str, recipe: str, *code) -> str:
    """A backbone's `cache_key`: its preprocessing `recipe` (source, processor and tokenizer config)
    and the source of the code that encodes (this module and `code`: the backbone's classes), so an
    edit there never reads pixels cached before it."""
    from bench.cache import code_digest
    digest = hashlib.sha1((recipe + code_digest(sys.modules[__name__], *code)).encode())
    return f"{prefix}-{digest.hexdigest()[:12]}"


def pil_images(images: list, max_aspect: float = MAX_ASPECT) -> list:
    """RGB PIL images, extreme aspect ratios centre-cropped (bench/images.py `cap_aspect`)."""
    from PIL import Image
    return [cap_aspect(Image.fromarray(load_image(im)), max_aspect) for im in images]


def chunks(images: list, max_aspect: float = MAX_ASPECT):
    for i in range(0, len(images), CHUNK):
        yield pil_images(images[i:i + CHUNK], max_aspect)


def as_uint8(pixels: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Float pixels in [0, 255 / scale] as uint8 (exact for values that came from uint8 images)."""
    if pixels.dtype == torch.uint8:
        return pixels
    return pixels.float().mul(scale).round_().clamp_(0, 255).to(torch.uint8)


class Normalize(nn.Module):
    """uint8 pixels [..., 3, H, W] -> (x * rescale - mean) / std, as the model's processor would."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], rescale: float = 1 / 255):
        super().__init__()
        # non-persistent: follows .to(device) but stays out of state dicts and checkpoints
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.rescale = rescale

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() * self.rescale - self.mean) / self.std
