"""transformers CLIP (DESIGN §6): `hf_clip:<hub id | dir>`, e.g. `hf_clip:openai/clip-vit-base-patch32`
once its files are local. Model, tokenizer and image processor all load from that source; the
image and text embeddings are the projected pooled outputs (`get_image_features` /
`get_text_features`), fused for the heads as described in dual_encoder.py. Adapters attach after
`self_attn.out_proj` and `mlp.fc2` of every encoder layer of both towers."""
import torch

from bench.backbones.dual_encoder import DualEncoder
from bench.backbones.pixels import Normalize, as_uint8, chunks
from bench.backbones.weights import hf_model_and_processors, preprocessing_key
from bench.registry import BACKBONES


@BACKBONES.register("hf_clip")
class HFCLIPBackbone(DualEncoder):
    text_keys = ("input_ids", "attention_mask", "has_text")

    def __init__(self, arg: str | None = None):
        super().__init__()
        from transformers import CLIPModel
        source, self.model, self.tokenizer, self.processor = hf_model_and_processors(
            CLIPModel, "hf_clip", arg, "openai/clip-vit-base-patch32")
        self.normalize = Normalize(self.processor.image_mean, self.processor.image_std, self.processor.rescale_factor)
        self.max_tokens = self.model.config.text_config.max_position_embeddings
        self.hidden_size = self.model.config.projection_dim
        self.vision_blocks = list(self.model.vision_model.encoder.layers)
        self.text_blocks = list(self.model.text_model.encoder.layers)
        self.cache_key = preprocessing_key("hf_clip", source, self.tokenizer, self.processor, self.max_tokens,
                                           type(self), DualEncoder)

    def tokenize(self, texts):
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    def encode_images(self, images):
        # the processor's resize and crop; rescale and normalisation happen in `forward`
        out = [self.processor(chunk, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
               for chunk in chunks(images)]
        return as_uint8(torch.cat(out), scale=1.0)

    def image_embeddings(self, pixels):
        pooled = self.model.vision_model(pixel_values=self.normalize(pixels)).pooler_output
        return self.model.visual_projection(pooled)

    def text_embeddings(self, batch):
        pooled = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        return self.model.text_projection(pooled)

    def adapter_sites(self, layer):
        return {"attn": layer.self_attn.out_proj, "ffn": layer.mlp.fc2}

    def adapter_width(self, layer):
        return layer.self_attn.out_proj.out_features
