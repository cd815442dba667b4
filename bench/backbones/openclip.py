"""open_clip models (DESIGN §6): `open_clip:<arch>[:<pretrained tag | checkpoint file>]`.

<arch> is a built-in open_clip name (`ViT-B-32`, see `open_clip.list_models()`) or a model-config
.json file (open_clip's format: embed_dim, vision_cfg, text_cfg); without a checkpoint the model is
randomly initialised. `open_clip:<dir>` (or `open_clip:local-dir:<dir>`) loads a directory holding
`open_clip_config.json` and its weights, the layout of open_clip's hub repos. Tags and
`hf-hub:` ids need the hub, which is not reachable here: the error says which file to bring.

Image preprocessing and tokenisation are the model's own (`create_model_and_transforms`,
`get_tokenizer`); adapters attach to the residual blocks of both towers (see dual_encoder.py).
"""
import os
from pathlib import Path

import torch

from bench.backbones.dual_encoder import DualEncoder
from bench.backbones.pixels import Normalize, as_uint8, chunks, encoding_key
from bench.errors import BenchError, did_you_mean
from bench.registry import BACKBONES

EXAMPLE = "ViT-B-32:/path/to/open_clip_pytorch_model.bin"


def model_name(arg: str | None) -> tuple[str, str | None]:
    """(open_clip model name, pretrained tag or file) from the spec's argument."""
    import open_clip
    if not arg:
        raise BenchError(f"backbone 'open_clip' needs an architecture: --backbone open_clip:{EXAMPLE}")
    if arg.startswith(("hf-hub:", "local-dir:")):
        return arg, None
    arch, _, pretrained = arg.partition(":")
    if os.path.isdir(arch):
        return f"local-dir:{arch}", None
    if arch.endswith(".json"):
        if not os.path.isfile(arch):
            raise BenchError(f"backbone 'open_clip': no such model config '{arch}'")
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    elif arch not in open_clip.list_models():
        raise did_you_mean(arch, open_clip.list_models(), "open_clip architecture")
    return arch, pretrained or None


def create(name: str, pretrained: str | None):
    import open_clip
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        return model, preprocess, open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as e:
        if pretrained and open_clip.get_pretrained_cfg(name, pretrained):
            raise BenchError(f"cannot fetch open_clip weights '{pretrained}' for {name}: no model hub is reachable "
                             f"here; bring its checkpoint file (open_clip_pytorch_model.bin of the hub repo "
                             f"open_clip names for that tag) and use --backbone open_clip:{name}:/path/to/file") from None
        if pretrained:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise BenchError(f"open_clip '{name}': '{pretrained}' is neither a checkpoint file nor a known tag "
                             f"(tags: {tags})") from None
        raise BenchError(f"open_clip '{name}': {str(e).strip().splitlines()[0]}") from None


@BACKBONES.register("open_clip")
class OpenCLIPBackbone(DualEncoder):
    text_keys = ("input_ids", "has_text")
    block_mask_arg = "attn_mask"  # ResidualAttentionBlock(q_x, ..., attn_mask): float [L, L] or None

    def __init__(self, arg: str | None = None):
        super().__init__()
        from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock
        from torchvision import transforms
        name, pretrained = model_name(arg)
        self.model, preprocess, self.tokenizer = create(name, pretrained)
        *resize, normalize = preprocess.transforms
        if not isinstance(normalize, transforms.Normalize):
            raise BenchError(f"open_clip '{name}': expected its preprocessing to end with Normalize, got {normalize}")
        self.resize = transforms.Compose(resize)  # ends with ToTensor: floats in [0, 1]
        self.normalize = Normalize(normalize.mean, normalize.std)
        blocks = (ResidualAttentionBlock, CustomResidualAttentionBlock)
        text_tower = self.model.text if hasattr(self.model, "text") else self.model.transformer  # CustomTextCLIP : CLIP
        self.vision_blocks = [m for m in self.model.visual.modules() if isinstance(m, blocks)]
        self.text_blocks = [m for m in text_tower.modules() if isinstance(m, blocks)]
        with torch.no_grad():
            self.hidden_size = self.model.encode_text(self.tokenizer([""])).shape[-1]
        recipe = f"{name}|{pretrained}|{preprocess}|{type(self.tokenizer).__name__}|{self.tokenizer.context_length}"
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name.split(":")[-1]).name)
        self.cache_key = encoding_key(f"open_clip-{slug}", recipe, type(self), DualEncoder)

    def tokenize(self, texts):
        return {"input_ids": self.tokenizer(texts)}

    def encode_images(self, images):
        return torch.cat([torch.stack([as_uint8(self.resize(im)) for im in chunk]) for chunk in chunks(images)])

    def image_embeddings(self, pixels):
        return self.model.encode_image(self.normalize(pixels))

    def text_embeddings(self, batch):
        return self.model.encode_text(batch["input_ids"])

    def adapter_sites(self, layer):
        # ls_1 / ls_2 (LayerScale or Identity) carry the attention and MLP outputs [B, L, d] right
        # before their residual additions; nn.MultiheadAttention's out_proj is not called as a module
        return {"attn": layer.ls_1, "ffn": layer.ls_2}

    def adapter_width(self, layer):
        return layer.ln_1.normalized_shape[0]
