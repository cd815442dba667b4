"""ViLT (Kim et al. 2021), CLiMB's backbone (DESIGN §6): `vilt:<hub id | dir>`, e.g.
`vilt:dandelin/vilt-b32-mlm` once its files are local. Model, tokenizer and image processor all
load from that source. As in CLiMB's `ViltEncoderWrapper` / `ViltContinualLearner`:

- pooled output: ViltModel's `pooler_output` (tanh(W [CLS])), width 768;
- n images (NLVR2): one pass per image with the same text, image i as modality type i + 1, the
  pooled outputs concatenated ([B, 768 n]); the modality-type table grows from 2 to 3 rows at
  load, the new row a copy of the image row (CLiMB's `expand_modality_type_embeddings`);
- text-only tasks: the text with a mean image. CLiMB feeds the mean image of MS-COCO, which is not
  available here; we feed a flat image of the ImageNet mean colour, the limit of such an average;
- image-only tasks: the image with an empty text ([CLS] [SEP]);
- text: at most `max_position_embeddings` (40) tokens; images: the processor's resize (shorter
  edge 384, longer at most 1333/800 of it, multiples of 32), zero-padded with a pixel mask as
  ViltProcessor pads a batch, to a fixed L x L canvas (L = that longest edge, 608) so that every
  image of an encoding has one shape in the per-image cache; ViLT embeds only the masked-in patches.
Adapters attach after `attention.output.dense` and `output.dense` of every layer: the two Houlsby
sites, as CLiMB's adapter runs (`--adapter_config houlsby`).
"""
import numpy as np
import torch
from torch import nn

from bench.backbones.base import Backbone
from bench.backbones.pixels import Normalize, chunks
from bench.backbones.weights import hf_model_and_processors, preprocessing_key
from bench.errors import BenchError
from bench.registry import BACKBONES

IMAGENET_MEAN_RGB = (124, 116, 104)  # (0.485, 0.456, 0.406) x 255
IMAGE_TYPES = 2  # modality types for images after CLiMB's expansion: one per image of an NLVR2 pair


def pad_with_mask(images: list[torch.Tensor], side: int) -> torch.Tensor:
    """uint8 [3, h, w] images of varying size -> [M, 4, side, side]: RGB zero-padded bottom/right,
    channel 3 the pixel mask (1 = real pixel)."""
    out = torch.zeros(len(images), 4, side, side, dtype=torch.uint8)
    for k, im in enumerate(images):
        out[k, :3, : im.shape[1], : im.shape[2]] = im
        out[k, 3, : im.shape[1], : im.shape[2]] = 1
    return out


@BACKBONES.register("vilt")
class ViltBackbone(Backbone):
    def __init__(self, arg: str | None = None):
        super().__init__()
        from transformers import ViltModel
        source, self.vilt, self.tokenizer, self.processor = hf_model_and_processors(
            ViltModel, "vilt", arg, "dandelin/vilt-b32-mlm")
        config = self.vilt.config
        self.hidden_size = config.hidden_size
        self.max_tokens = config.max_position_embeddings
        self.normalize = Normalize(self.processor.image_mean, self.processor.image_std, self.processor.rescale_factor)
        types = self.vilt.embeddings.token_type_embeddings
        if types.num_embeddings < 1 + IMAGE_TYPES:
            grown = nn.Embedding(1 + IMAGE_TYPES, config.hidden_size)
            with torch.no_grad():
                grown.weight[: types.num_embeddings] = types.weight
                grown.weight[types.num_embeddings:] = types.weight[-1]
            self.vilt.embeddings.token_type_embeddings = grown
            config.modality_type_vocab_size = 1 + IMAGE_TYPES
        # the canvas: the longest edge the processor makes (it caps the longer edge; a 1:2 image hits the cap)
        self.max_aspect = float("inf")
        self.canvas = max(self.resized([np.zeros((16, 32, 3), dtype=np.uint8)])[0].shape)
        # a longer/shorter ratio above canvas / size_divisor makes the processor's shorter edge 0
        self.max_aspect = self.canvas / self.processor.size_divisor
        side = self.processor.size["shortest_edge"]
        flat = np.full((side, side, 3), IMAGENET_MEAN_RGB, dtype=np.uint8)
        self.register_buffer("mean_image", self.encode_images([flat]), persistent=False)  # [1, 4, H, W]
        self.cache_key = preprocessing_key("vilt", source, self.tokenizer, self.processor, self.max_tokens, type(self))

    def resized(self, images: list) -> list[torch.Tensor]:
        """The processor's resize: uint8 [3, h, w] each, sizes vary with the aspect ratio."""
        out = []
        for chunk in chunks(images, self.max_aspect):
            out += self.processor(chunk, do_rescale=False, do_normalize=False, do_pad=False)["pixel_values"]
        return [torch.as_tensor(im, dtype=torch.uint8) for im in out]

    def encode_images(self, images):
        return pad_with_mask(self.resized(images), self.canvas)

    def encode_texts(self, texts):
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    def pooled_size(self, task):
        if task.n_images > IMAGE_TYPES:
            raise BenchError(f"backbone 'vilt' encodes at most {IMAGE_TYPES} images per example; "
                             f"task '{task.name}' has {task.n_images}")
        return self.hidden_size * max(1, task.n_images)

    @property
    def layers(self):
        return list(self.vilt.encoder.layer)

    def adapter_sites(self, layer):
        return {"attn": layer.attention.output.dense, "ffn": layer.output.dense}

    def forward(self, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        images = batch.get("image_feats")  # [B, n_images, 4, H, W] uint8; absent: text-only
        if images is None:
            images = self.mean_image.expand(len(ids), 1, *self.mean_image.shape[1:])
        pooled = []
        for i in range(images.shape[1]):
            x = images[:, i]
            out = self.vilt(input_ids=ids, attention_mask=mask, pixel_values=self.normalize(x[:, :3]),
                            pixel_mask=x[:, 3].long(), image_token_type_idx=i + 1)
            pooled.append(out.pooler_output)
        return torch.cat(pooled, -1)
