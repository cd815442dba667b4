"""The harness reads no tensor value on the host per training step or per evaluation batch (on a
GPU each read is a sync that stalls the device queue; perf (a) found the harness's own work per
step to be a few one-element ops). Counted, not timed: every `.item()`, `float()`, `int()` or
`bool()` of a tensor is one `aten._local_scalar_dense` call. The model's own reads are left out:
transformers' BERT reads the attention mask once per training forward, in the bare loop too."""
import collections
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import run_method

READ = torch.ops.aten._local_scalar_dense.default


class HostReads(TorchDispatchMode):
    """Counts every op, and the host reads made outside transformers' model code."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func] += 1
        if func is READ and not any("/transformers/" in f.filename for f in traceback.extract_stack()):
            self.reads += 1
        return func(*args, **(kwargs or {}))


def finetune(tmp_path, cache_dir, name: str, sets: list[str]) -> HostReads:
    with HostReads() as mode:
        run_method("finetune", tmp_path / name, cache_dir, sets=sets)
    return mode


def test_host_reads_do_not_grow_with_steps_or_evaluation_batches(tmp_path, cache_dir):
    finetune(tmp_path, cache_dir, "warm", ["steps=1"])  # the data encoded first: the runs below only read it
    base = ["val_checks=1"]
    short = finetune(tmp_path, cache_dir, "short", base + ["steps=2", "eval_batch_size=256"])
    long = finetune(tmp_path, cache_dir, "long", base + ["steps=6", "eval_batch_size=256"])
    small = finetune(tmp_path, cache_dir, "small", base + ["steps=2", "eval_batch_size=4"])
    # the runs did what they differ in: 3x the optimizer steps; more evaluation batches
    step, predict = torch.ops.aten._fused_adamw_.default, torch.ops.aten.argmax.default
    assert long.calls[step] == 3 * short.calls[step] > 0
    assert small.calls[predict] > short.calls[predict] > 0
    assert short.reads > 0  # the counter sees the reads there are (loading the data, validation checks)
    assert long.reads == short.reads
    assert small.reads == short.reads
