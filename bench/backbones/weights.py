"""Loading pretrained transformers models from a hub id or a local directory, with a one-line
error that says how to point at local weights when the hub cannot be reached (DESIGN §8)."""
import json
import os
from contextlib import contextmanager, nullcontext

from bench.backbones.pixels import encoding_key
from bench.errors import BenchError


def require_source(backbone: str, source: str | None, example: str) -> str:
    if not source:
        raise BenchError(f"backbone '{backbone}' needs a hub id or a local directory: "
                         f"--backbone {backbone}:{example} or --backbone {backbone}:/path/to/dir")
    return source


def fetch_hint(backbone: str, source: str) -> str:
    return (f"no model hub is reachable here: on a machine with access run `hf download {source} --local-dir DIR` "
            f"(or save_pretrained(DIR)), copy DIR here and use --backbone {backbone}:DIR")


@contextmanager
def no_loading_bars():
    """transformers draws a "Loading weights" bar on every model build, i.e. once per run: noise
    beside the suite's own progress. Only for local weights: a hub download keeps its bar."""
    from transformers.utils import logging as hf_logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def hf_pretrained(cls, backbone: str, source: str, **kwargs):
    """`cls.from_pretrained(source)`; a missing directory or an unreachable hub is a BenchError."""
    source = os.path.expanduser(source)
    local = os.path.isdir(source)
    if not local and source.startswith((".", "/")):
        raise BenchError(f"backbone '{backbone}': no such directory '{source}'")
    try:
        with no_loading_bars() if local else nullcontext():
            return cls.from_pretrained(source, **kwargs)
    except OSError as e:  # transformers' error for files it cannot find locally or fetch
        if local:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BenchError(f"backbone '{backbone}': cannot load {cls.__name__} from '{source}': {first}") from None
        raise BenchError(f"backbone '{backbone}': cannot fetch '{source}': {fetch_hint(backbone, source)}") from None


def hf_model_and_processors(model_cls, backbone: str, arg: str | None, example: str):
    """(source, model, tokenizer, image processor), all three from the same hub id or directory."""
    from transformers import AutoImageProcessor, AutoTokenizer
    source = require_source(backbone, arg, example)
    return (source, hf_pretrained(model_cls, backbone, source), hf_pretrained(AutoTokenizer, backbone, source),
            hf_pretrained(AutoImageProcessor, backbone, source))


def preprocessing_key(backbone: str, source: str, tokenizer, processor, max_tokens: int, *code) -> str:
    """Cache key of what `encode_texts`/`encode_images` produce: source, tokenizer and processor
    config, and the backbone's encoding code (`code`: its classes)."""
    recipe = json.dumps([source, processor.to_dict(), tokenizer.name_or_path, len(tokenizer), max_tokens],
                        sort_keys=True, default=str)
    return encoding_key(backbone, recipe, *code)
