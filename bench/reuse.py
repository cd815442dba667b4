"""Stages computed once and reused by every run that trains exactly the same thing.

Several methods start a task by training adapter t and head t on their own, which is the whole of
the `adapter` method's training: AdapterFusion's and ScaLearn's stage 1 (both papers train the
single-task adapters first), I2I's first task. A stage says so with `Stage(shared=...)`; the runner
then keys the stage by everything its result depends on, and the first run to reach it trains it
and stores the trained tensors while the others load them:

    the shared name, the code of the loop and of the adapter and LoRA machinery, the run settings that
    enter training (batch size, schedule, clipping, validation checks, precision), the step
    budget and the batch-order seed, the optimizer groups (learning rates, weight decay), the
    initial values of the trained tensors, every backbone tensor, the torch RNG state (dropout),
    and the training and validation tensors themselves.

So an entry is only read where training would have produced the same tensors; the RNG state after
the stage is stored too, so the rest of the run goes on exactly as if it had trained the stage
(tests/test_reuse.py checks runs with and without reuse give identical numbers). Entries live
under <cache>/stages/, written atomically; an unreadable entry is retrained. A reused stage's cost
is reported as the seconds it took where it was trained (`reused: true` in metrics.json "stages").
"""
import json
import time
from pathlib import Path

import torch

from bench.cache import ImageRows, code_digest, file_lock
from bench.store import load_tensors, save_tensors, state_digest, tensor_hash, update_digest

SETTINGS = ("batch_size", "eval_batch_size", "weight_decay", "warmup", "grad_clip", "val_checks", "precision")


def rng_states(groups: list[dict]) -> list[torch.Tensor]:
    """The generators dropout draws from: the CPU one, and the GPU's when training there."""
    device = groups[0]["params"][0].device
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def set_rng_states(groups: list[dict], states: list[torch.Tensor]) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state(states[1], groups[0]["params"][0].device)


def stage_key(method, shared: str, groups: list[dict], train: dict, val: dict, steps: int, cfg, seed: int) -> str:
    """Digest of everything the stage's trained tensors depend on (see the module docstring)."""
    import bench.adapters
    import bench.evaluate
    import bench.lora
    import bench.precision
    import bench.train
    from bench.registry import METHODS
    h = tensor_hash()
    code = code_digest(bench.train, bench.evaluate, bench.precision, bench.adapters, bench.lora, type(method.backbone),
                       *METHODS.get(shared).__mro__[:-1])
    settings = {k: getattr(cfg, k) for k in SETTINGS}
    layout = [{k: v for k, v in g.items() if k != "params"} | {"n": len(g["params"])} for g in groups]
    h.update(json.dumps([shared, code, settings, steps, seed, layout, sorted(train), sorted(val)], default=str).encode())
    for g in groups:
        for p in g["params"]:
            update_digest(h, p)
    h.update(state_digest(method.backbone.state_dict()).encode())
    for state in rng_states(groups):
        update_digest(h, state)
    for splits in (train, val):
        for t in sorted(splits):
            for name, tensor in sorted(splits[t].fields.items()):
                h.update(f"{t}/{name}".encode())
                update_digest(h, tensor)
            images = splits[t].images
            if isinstance(images, ImageRows):  # rows of immutable shards: named, not hashed (GBs of pixels)
                h.update(images.identity)
            elif images is not None:
                update_digest(h, images)
    return h.hexdigest()[:20]


def fit_or_reuse(fit_stage, method, shared: str, groups: list[dict], train: dict, val: dict, steps: int, cfg,
                 seed: int, cache_dir: Path) -> dict:
    """`fit_stage()`'s stats, training only when no run has trained this stage before; otherwise the
    stored tensors are copied into the trained parameters and the RNG moves on as training would."""
    params = [p for g in groups for p in g["params"]]
    key = stage_key(method, shared, groups, train, val, steps, cfg, seed)
    path = Path(cache_dir) / "stages" / f"{shared}-{key}.pt"
    with file_lock(path.with_suffix(".lock")):  # a run side by side waits, then reads, instead of retraining
        if path.exists():
            try:
                entry = load_tensors(path)
                if len(entry["params"]) != len(params) or any(a.shape != b.shape for a, b in zip(entry["params"], params)):
                    raise ValueError("stored tensors do not match the stage's parameters")
                with torch.no_grad():
                    for p, v in zip(params, entry["params"]):
                        p.copy_(v)
                set_rng_states(groups, entry["rng"])
                return {**entry["stats"], "reused": True}
            except Exception:  # a damaged entry is retrained, never trusted
                path.unlink(missing_ok=True)
        t0 = time.time()
        stats = fit_stage()
        stats["seconds"] = time.time() - t0
        save_tensors(path, {"params": [p.detach().cpu() for p in params], "rng": rng_states(groups), "stats": stats})
        return stats
