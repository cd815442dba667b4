"""The Backbone contract shared by every backbone."""
import torch
from torch import nn


class Backbone(nn.Module):
    """A vision-language encoder with a pooled output.

    Encoding is split in two so frozen work is done once and cached by the data layer:
    `encode_images(images) -> Tensor[M, ...]` (frozen part, e.g. CNN grid features or pixels) and
    `encode_texts(texts) -> dict[str, Tensor[N, ...]]` (token ids). `forward(batch)` receives the
    text fields plus `image_feats: Tensor[B, n_images, ...]` (absent for text-only tasks) and
    returns pooled features `[B, pooled_size(task)]` (`hidden_size` for most backbones).
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

    # -- prompt injection (bench/prompts.py) --
    block_mask_arg: str = "attention_mask"  # the blocks' attention-mask argument

    @property
    def towers(self) -> list[list[nn.Module]]:
        """The blocks of each transformer stack, bottom to top: prompts are placed per tower."""
        return [self.layers]

    def adapter_width(self, layer: nn.Module) -> int:
        """Width d of the tensors at `layer`'s adapter sites (the towers of a dual encoder differ)."""
        return self.hidden_size

    def pooled_size(self, task) -> int:
        """Width of `forward`'s output for `task` (its head is built on it): `hidden_size` unless a
        backbone pools several images (ViLT on NLVR2) or modalities (CLIP fusion) side by side."""
        return self.hidden_size

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def external_params(self) -> int:
        """Parameters of frozen encoders that live outside this module (used via the cache)."""
        return 0

    # -- optional: restart from block k, so a frozen bottom can be computed once (bench/prefix.py) --
    frozen_depth: int = 0  # set by bench/prefix.py: batches carry the state after this many blocks

    def prefix_modules(self, k: int) -> list[nn.Module]:
        """The modules that compute block k's input (input embeddings, blocks 0..k-1). A backbone
        that cannot restart from a block leaves these three unimplemented; then only a wholly
        frozen backbone is cached (its pooled output)."""
        raise NotImplementedError

    def forward_prefix(self, batch: dict, k: int) -> dict[str, torch.Tensor]:
        """Per-example state [B, ...] after block k-1 (hidden states, mask ...)."""
        raise NotImplementedError

    def forward_from(self, state: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """Pooled features from `forward_prefix(batch, k)`'s state: the same as `forward(batch)`."""
        raise NotImplementedError


FROZEN = "frozen."  # batch fields holding a cached frozen-prefix state (bench/prefix.py)


def pooled(backbone: Backbone, batch: dict) -> torch.Tensor:
    """Pooled features [B, d]; for multiple-choice batches (text fields [B, C, L]) every choice is
    encoded with the example's images and the result is [B, C, d]. Starts from the cached output
    of a frozen prefix when the batch carries one."""
    if FROZEN + "pooled" in batch:  # the whole backbone is frozen: its output was computed once
        return batch[FROZEN + "pooled"]
    return per_choice(backbone, batch, _forward)


def _forward(backbone: Backbone, batch: dict) -> torch.Tensor:
    state = {k[len(FROZEN):]: v for k, v in batch.items() if k.startswith(FROZEN)}
    return backbone.forward_from(state, backbone.frozen_depth) if state else backbone(batch)


def per_choice(backbone: Backbone, batch: dict, fn):
    """`fn(backbone, batch)`; a multiple-choice batch is flattened to one row per choice (with the
    example's images) and the output (a tensor or a dict of them) viewed back as [B, C, ...]."""
    ids = batch[backbone.text_keys[0]]
    if ids.dim() == 2:
        return fn(backbone, batch)
    B, C = ids.shape[:2]
    flat = {k: (v.flatten(0, 1) if k in backbone.text_keys or k.startswith(FROZEN) else v) for k, v in batch.items()}
    if "image_feats" in batch:
        flat["image_feats"] = batch["image_feats"].repeat_interleave(C, dim=0)
    out = fn(backbone, flat)
    if isinstance(out, dict):
        return {k: v.view(B, C, *v.shape[1:]) for k, v in out.items()}
    return out.view(B, C, -1)
