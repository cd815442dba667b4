"""Real backbones (open_clip, ViLT, transformers CLIP) on tiny random-initialised models saved to
local directories: loading by path, the models' own preprocessing, pooled widths, which tower runs
for which modality, adapter sites in every tower, and the one-line errors without a hub."""
import numpy as np
import pytest
import torch

import run_bench
from bench.adapters import Injector
from bench.backbones import build_backbone
from bench.errors import BenchError
from bench.method import Method
from bench.task import Task
from tiny_models import tiny  # noqa: F401  (session fixture)

ALL = ["vilt", "hf_clip", "open_clip", "open_clip_arch"]
DUAL = ["hf_clip", "open_clip"]
RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), RNG.integers(0, 256, (40, 80, 3), dtype=np.uint8)]
TEXTS = ["what color is the circle?", "is there a triangle?"]


@pytest.fixture(scope="module")
def backbones(tiny):  # noqa: F811
    out = {}
    for name in ALL:
        torch.manual_seed(123)  # a different init than the saved one: loading must overwrite it
        out[name] = build_backbone(tiny[name]).eval()
    return out


def batch(b, texts=TEXTS, images=IMAGES, n_images=1):
    fields = dict(b.encode_texts(texts))
    if images is not None:
        pixels = b.encode_images(images)
        fields["image_feats"] = torch.stack([pixels] * n_images, 1) if n_images > 1 else pixels[:, None]
    return fields


def test_list_backbones_names_every_backbone(capsys):
    assert run_bench.main(["list", "backbones"]) == 0
    assert {"default", "open_clip", "vilt", "hf_clip"} <= set(capsys.readouterr().out.split())


def saved_state(spec: str) -> dict:
    """The weights as the libraries themselves load them from the tiny model's directory."""
    path = spec.partition(":")[2]
    if spec.startswith("vilt:"):
        from transformers import ViltModel
        return ViltModel.from_pretrained(path).state_dict()
    if spec.startswith("hf_clip:"):
        from transformers import CLIPModel
        return CLIPModel.from_pretrained(path).state_dict()
    return torch.load(f"{path}/open_clip_pytorch_model.bin", weights_only=True)


@pytest.mark.parametrize("spec", ["default", "vilt"])
def test_local_weights_load_without_a_bar_per_run(tiny, spec, capfd):  # noqa: F811
    """A model is built once per run: transformers' "Loading weights" bar would be printed by
    every run of a suite. Its bars stay on for whatever comes next (hub downloads)."""
    from transformers.utils import logging as hf_logging
    build_backbone(spec if spec == "default" else tiny[spec])
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("name", ALL)
def test_local_weights_are_loaded(backbones, tiny, name):  # noqa: F811
    model = {"vilt": "vilt", "hf_clip": "model"}.get(name, "model")
    loaded = getattr(backbones[name], model).state_dict()
    saved = saved_state(tiny["open_clip" if name == "open_clip_arch" else name])
    for key, value in saved.items():
        if key == "embeddings.token_type_embeddings.weight":  # grown for NLVR2 (checked below)
            assert torch.equal(loaded[key][: len(value)], value)
        else:
            assert torch.equal(loaded[key], value), key


def test_vilt_processor_pixels_and_tokens_are_the_processors_own(backbones, tiny):  # noqa: F811
    from transformers import AutoImageProcessor, AutoTokenizer
    b, path = backbones["vilt"], tiny["vilt"].partition(":")[2]
    ref = AutoImageProcessor.from_pretrained(path)(IMAGES, return_tensors="pt")  # normalised, padded, masked
    pixels = b.encode_images(IMAGES)
    assert pixels.dtype == torch.uint8 and pixels.shape[1] == 4
    # one fixed canvas whatever the aspect ratio (the per-image cache stacks images of an encoding)
    assert pixels.shape[2:] == b.encode_images(IMAGES[:1]).shape[2:] == (b.canvas, b.canvas)
    H, W = ref["pixel_mask"].shape[1:]
    assert not pixels[:, 3, H:].any() and not pixels[:, 3, :, W:].any()
    pixels = pixels[:, :, :H, :W]
    assert torch.equal(pixels[:, 3].long(), ref["pixel_mask"])
    mask = ref["pixel_mask"][:, None].bool()
    assert torch.allclose(b.normalize(pixels[:, :3]) * mask, ref["pixel_values"] * mask, atol=1e-6)
    assert torch.equal(b.encode_texts(TEXTS)["input_ids"], AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt")["input_ids"])


def test_hf_clip_pixels_and_tokens_are_the_processors_own(backbones, tiny):  # noqa: F811
    from transformers import AutoImageProcessor, AutoTokenizer
    b, path = backbones["hf_clip"], tiny["hf_clip"].partition(":")[2]
    ref = AutoImageProcessor.from_pretrained(path)(IMAGES, return_tensors="pt")["pixel_values"]
    pixels = b.encode_images(IMAGES)
    assert pixels.dtype == torch.uint8
    assert torch.allclose(b.normalize(pixels), ref, atol=1e-5)
    tokens = AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(b.encode_texts(TEXTS)["input_ids"], tokens["input_ids"])
    assert tokens["input_ids"][0, 0] == 49406 and 49407 in tokens["input_ids"][0]  # CLIP's own BPE ids


def test_open_clip_pixels_and_tokens_are_the_models_own(backbones, tiny):  # noqa: F811
    import open_clip
    from PIL import Image
    b, name = backbones["open_clip"], "local-dir:" + tiny["open_clip"].partition(":")[2]
    _, _, preprocess = open_clip.create_model_and_transforms(name)
    ref = torch.stack([preprocess(Image.fromarray(im)) for im in IMAGES])
    assert torch.allclose(b.normalize(b.encode_images(IMAGES)), ref, atol=1e-5)
    assert torch.equal(b.encode_texts(TEXTS)["input_ids"], open_clip.get_tokenizer(name)(TEXTS))


@pytest.mark.parametrize("name", ALL)
def test_pooled_width_matches_every_task_kind_and_heads_use_it(backbones, name):
    b = backbones[name]
    tasks = [Task("vl", "vl", ["a", "b"]), Task("pair", "vl", ["a", "b"], n_images=2),
             Task("text", "text", ["a", "b"], n_images=0), Task("image", "image", ["a", "b"])]
    inputs = [batch(b), batch(b, n_images=2), batch(b, images=None), batch(b, texts=["", ""])]
    with torch.no_grad():
        widths = [b(x).shape for x in inputs]
    assert widths == [(2, b.pooled_size(t)) for t in tasks]
    heads = Method(b, tasks).heads
    assert [h[0].in_features for h in heads] == [b.pooled_size(t) for t in tasks]
    assert {h[0].out_features for h in heads} == {2 * b.hidden_size}  # CLiMB: 2 x 768 on ViLT, whatever the images


@pytest.mark.parametrize("name", DUAL)
def test_dual_encoder_runs_only_the_towers_a_task_has(backbones, name):
    b = backbones[name]
    calls = {"vision": 0, "text": 0}
    handles = [blk.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
               for k, blocks in (("vision", b.vision_blocks), ("text", b.text_blocks)) for blk in blocks]
    seen = {}
    with torch.no_grad():
        for kind, x in (("vl", batch(b)), ("text", batch(b, images=None)), ("image", batch(b, texts=["", ""]))):
            calls.update(vision=0, text=0)
            b(x)
            seen[kind] = dict(calls)
    for h in handles:
        h.remove()
    n_v, n_t = len(b.vision_blocks), len(b.text_blocks)
    assert seen == {"vl": {"vision": n_v, "text": n_t}, "text": {"vision": 0, "text": n_t}, "image": {"vision": n_v, "text": 0}}


@pytest.mark.parametrize("name", ALL)
def test_adapters_reach_every_site_of_every_tower_at_its_width(backbones, name):
    b = backbones[name]
    injector = Injector(b)
    expected = {"vilt": [32] * 4}.get(name, [48, 48, 32, 32] * 2)  # interleaved: vision block, text block, ...
    assert injector.widths == expected
    seen = set()

    def fn(i, h):
        assert h.shape[-1] == injector.widths[i]
        seen.add(i)
        return h + torch.linspace(0, 1, h.shape[-1])  # not constant over features: LayerNorm would remove that

    x = batch(b)
    with torch.no_grad():
        plain = b(x)
        injector.fn = fn
        shifted = b(x)
    injector.remove()
    assert seen == set(range(len(injector)))
    assert not torch.allclose(plain, shifted)


def test_bottom_layers_are_the_bottom_of_both_towers(backbones):
    b = backbones["open_clip"]
    assert b.layers[:2] == [b.vision_blocks[0], b.text_blocks[0]]
    assert b.layers[-2:] == [b.vision_blocks[-1], b.text_blocks[-1]]


def test_freeze_freezes_both_towers(tiny):  # noqa: F811
    b = build_backbone(tiny["hf_clip"]).freeze()
    assert not any(p.requires_grad for p in b.parameters())


def test_vilt_encodes_each_image_with_the_text_and_concatenates(backbones):
    b = backbones["vilt"]
    types = b.vilt.embeddings.token_type_embeddings.weight
    assert types.shape[0] == 3 and torch.equal(types[2], types[1])  # CLiMB's expansion for NLVR2
    pixels, text, d = b.encode_images(IMAGES), b.encode_texts(TEXTS), b.hidden_size
    pair = {**text, "image_feats": torch.stack([pixels, pixels.flip(0)], 1)}  # example k: (image k, image 1-k)
    swapped = {**text, "image_feats": pair["image_feats"][:, [1, 0]]}
    with torch.no_grad():
        out = b(pair)
        assert torch.allclose(out[:, :d], b({**text, "image_feats": pixels[:, None]}), atol=1e-5)
        assert torch.allclose(out[:, :d], b(swapped)[:, d:], atol=1e-5)  # types 1 and 2 equal at load
        shift = torch.linspace(0, 1, d)  # not constant over features: LayerNorm would remove that
        types[2] += shift  # the second image's modality type now differs: only its half moves
        try:
            moved = b(pair)
            assert torch.allclose(moved[:, :d], out[:, :d], atol=1e-5) and not torch.allclose(moved[:, d:], out[:, d:])
        finally:
            types[2] -= shift


def test_vilt_text_only_task_feeds_the_mean_image(backbones):
    b = backbones["vilt"]
    side = b.processor.size["shortest_edge"]
    assert b.mean_image.shape == (1, 4, b.canvas, b.canvas) and int(b.mean_image[0, 3].sum()) == side * side
    assert torch.equal(b.mean_image[0, :3, 0, 0], torch.tensor([124, 116, 104], dtype=torch.uint8))


@pytest.mark.parametrize("spec, hint", [
    ("vilt:dandelin/vilt-b32-mlm", "--backbone vilt:DIR"),
    ("hf_clip:openai/clip-vit-base-patch32", "--backbone hf_clip:DIR"),
    ("open_clip:ViT-B-32:laion2b_s34b_b79k", "--backbone open_clip:ViT-B-32:/path/to/file"),
    ("vilt:/no/such/dir", "no such directory"),
    ("open_clip:ViT-B-32:/no/such/file.bin", "neither a checkpoint file nor a known tag"),
    ("open_clip:ViT-B-31", "did you mean"),
    ("vilt", "needs a hub id or a local directory"),
])
def test_unreachable_weights_give_a_one_line_error_saying_what_to_do(spec, hint):
    with pytest.raises(BenchError) as err:
        build_backbone(spec)
    message = str(err.value)
    assert hint in message and "\n" not in message


def test_cache_key_changes_with_the_encoding_code(tmp_path, monkeypatch):
    from bench.backbones.pixels import encoding_key
    (tmp_path / "pad32.py").write_text("PAD = 32\n")
    (tmp_path / "pad48.py").write_text("PAD = 48\n")  # the same backbone after an edit to how pixels are made
    monkeypatch.syspath_prepend(str(tmp_path))
    import pad32
    import pad48
    key = encoding_key("vilt", "recipe", pad32)
    assert encoding_key("vilt", "recipe", pad32) == key
    assert key != encoding_key("vilt", "recipe", pad48) and key != encoding_key("vilt", "other recipe", pad32)
