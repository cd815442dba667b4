"""The Backbone contract shared by every backbone."""
import torch
from torch import nn


class Backbone(nn.Module):
    """A vision-language encoder with a pooled output.

    Encoding is split in two so frozen work is done once and cached by the data layer:
    `encode_images(images) -> Tensor[M, ...]` (frozen part, e.g. CNN grid features or pixels) and
    `encode_texts(texts) -> dict[str, Tensor[N, ...]]` (token ids). `forward(batch)` receives the
    text fields plus `image_feats: Tensor[B, n_images, ...]` (absent for text-only tasks) and
    returns pooled features `[B, hidden_size]`.
    """

    hidden_size: int
    cache_key: str  # identifies the frozen encoding (model + preprocessing) for the feature cache
    text_keys: tuple[str, ...] = ("input_ids", "attention_mask")  # fields made by encode_texts

    def encode_images(self, images: list) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def layers(self) -> list[nn.Module]:
        """The transformer blocks where adapters attach, bottom to top."""
        raise NotImplementedError

    def adapter_sites(self, layer: nn.Module) -> dict[str, nn.Module]:
        """Modules of one block whose output tensor [B, L, d] an adapter may rewrite:
        "attn" (attention output projection) and "ffn" (feed-forward output projection)."""
        raise NotImplementedError

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def external_params(self) -> int:
        """Parameters of frozen encoders that live outside this module (used via the cache)."""
        return 0


def pooled(backbone: Backbone, batch: dict) -> torch.Tensor:
    """Pooled features [B, d]; for multiple-choice batches (text fields [B, C, L]) every choice is
    encoded with the example's images and the result is [B, C, d]."""
    ids = batch[backbone.text_keys[0]]
    if ids.dim() == 2:
        return backbone(batch)
    B, C = ids.shape[:2]
    flat = {k: (v.flatten(0, 1) if k in backbone.text_keys else v) for k, v in batch.items()}
    if "image_feats" in batch:
        flat["image_feats"] = batch["image_feats"].repeat_interleave(C, dim=0)
    return backbone(flat).view(B, C, -1)
