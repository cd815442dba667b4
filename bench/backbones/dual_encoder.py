"""Dual encoders (CLIP-style): an image tower and a text tower, each pooled and projected into a
joint embedding of width e. Shared by `open_clip` and `hf_clip`; a subclass supplies the towers.

Fusion for the task heads, parameter-free. CLIP has no cross-modal layers, so a head must see both
embeddings and their interaction: per image, the pair features of InferSent (Conneau et al. 2017)
without |u - v|,

    pooled = [v, t, v * t],   v = sqrt(e) v_img / |v_img|,   t = sqrt(e) t_txt / |t_txt|

L2-normalised as CLIP compares them, scaled by sqrt(e) so each coordinate is O(1) for the head.
Parameter-free on purpose: `frozen`, `adapter` and friends then learn only in their own modules
and heads, and `hidden_size` = e. n images (NLVR2): the per-image features are concatenated, as
ViLT/CLiMB concatenate per-image pooled outputs. A text-only task runs the text tower only
(pooled = t), an image-only task (empty texts) the image tower only (pooled = [v_1 .. v_n]).

Adapter sites: the blocks of both towers. `layers` interleaves them by relative depth (bottom of
both towers first), so "the bottom k layers" means the bottom of each tower.
"""
import torch
from torch import nn

from bench.backbones.base import Backbone


def spread(x: torch.Tensor) -> torch.Tensor:
    """sqrt(e) x / |x|: unit direction, O(1) coordinates."""
    return nn.functional.normalize(x.float(), dim=-1) * x.shape[-1] ** 0.5


class DualEncoder(Backbone):
    vision_blocks: list[nn.Module]
    text_blocks: list[nn.Module]

    # -- supplied by a subclass --------------------------------------------------------------
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [N, 3, H, W] (from `encode_images`) -> [N, e]."""
        raise NotImplementedError

    def text_embeddings(self, batch: dict) -> torch.Tensor:
        """Text fields of `batch` -> [B, e]."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- the Backbone contract ---------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        fields = self.tokenize(texts)
        # explicit, not guessed from token counts: an image-only task's texts are all empty
        fields["has_text"] = torch.tensor([bool(t.strip()) for t in texts], dtype=torch.bool)
        return fields

    def pooled_size(self, task) -> int:
        if task.kind == "text":
            return self.hidden_size
        return self.hidden_size * task.n_images * (3 if task.kind == "vl" else 1)

    @property
    def towers(self) -> list[list[nn.Module]]:
        return [self.vision_blocks, self.text_blocks]

    @property
    def layers(self) -> list[nn.Module]:
        towers = self.towers
        order = sorted(((i + 0.5) / len(blocks), k, i) for k, blocks in enumerate(towers) for i in range(len(blocks)))
        return [towers[k][i] for _, k, i in order]

    def forward(self, batch: dict) -> torch.Tensor:
        images = batch.get("image_feats")  # [B, n_images, 3, H, W] uint8
        text = spread(self.text_embeddings(batch)) if images is None or bool(batch["has_text"].any()) else None
        if images is None:
            return text
        B, n = images.shape[:2]
        image = spread(self.image_embeddings(images.flatten(0, 1))).view(B, n, -1)
        if text is None:
            return image.flatten(1)
        text = text[:, None].expand_as(image)
        return torch.cat([image, text, image * text], -1).flatten(1)
