"""Batched evaluation under inference mode: accuracy or VQA score, in %; scores carried forward for
methods whose earlier tasks cannot change (`SettledScores`)."""
import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from bench.data import EncodedSplit
from bench.examples import cell_score
from bench.precision import autocast
from bench.settings import seen_only
from bench.store import state_digest


@torch.inference_mode()
def _example_scores(method, t: int, data: EncodedSplit, batch_size: int, precision: str, ctx, models=None):
    """Per batch of task t's `data`, (the examples' indices, each one's score in [0, 1]: accuracy, or
    the VQA soft score (min(#humans/3, 1)) of the predicted answer), device tensors. With the final
    model of task t, or as trained in `ctx` (validation). `models` (class- / domain-IL, bench/task_id.py):
    per example, the task index whose model predicts it, chosen without its task id."""
    metric = method.tasks[t].metric
    everything = torch.arange(len(data), device=data.fields["label"].device)
    groups = [(t, everything)] if models is None else [(int(k), everything[models == k]) for k in models.unique()]
    method.net.eval()
    try:
        for k, rows in groups:
            method.activate(k, ctx)
            for i in range(0, len(rows), batch_size):
                batch = data.batch(rows[i:i + batch_size])
                label = batch["label"]
                with autocast(precision, label.device.type):
                    pred = seen_only(method.tasks[k], method.predict(batch, k)).argmax(-1)
                yield rows[i:i + batch_size], label.gather(1, pred[:, None])[:, 0] if metric == "vqa_score" else pred == label
    finally:
        method.net.train()


def score(method, t: int, data: EncodedSplit, batch_size: int = 256, precision: str = "fp32", ctx=None) -> float:
    """Task t's score (%) on `data`; one host sync per evaluation, not per batch."""
    total = sum(values.sum().double() for _, values in _example_scores(method, t, data, batch_size, precision, ctx))
    return float(100.0 * total / len(data))


def per_example_scores(method, t: int, data: EncodedSplit, batch_size: int = 256, precision: str = "fp32",
                       models=None) -> np.ndarray:
    """What `score` averages, per test example in the split's order (bool for accuracy, float32 VQA
    scores), so bench.examples.cell_score of it is the score; for the report's statistics."""
    rows, parts = zip(*_example_scores(method, t, data, batch_size, precision, None, models))
    values = torch.cat([p if p.dtype == torch.bool else p.float() for p in parts])
    return values[torch.cat(rows).argsort()].cpu().numpy()


# Calls that read or set a tensor's autograd flags, never its values: PEFT's set_adapter (in a
# method's `activate`) freezes every task's LoRA, which is not a read of the later tasks' weights.
FLAG_CALLS = (torch.Tensor.requires_grad_, torch.Tensor.requires_grad.__get__, torch.Tensor.is_leaf.__get__)


class TensorReads(TorchFunctionMode):
    """Records which of the model's registered tensors (`named`: id -> name) torch functions read
    while it is active, and whether they read any other tensor that existed before (not produced
    inside, not in `exempt`: the data). Autograd-flag calls (`FLAG_CALLS`) read no values."""

    def __init__(self, named: dict[int, str], exempt: set[int]):
        super().__init__()
        self.named, self.exempt = named, exempt
        self.read: dict[str, torch.Tensor] = {}
        self.produced: set[int] = set()
        self.foreign = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in FLAG_CALLS:
            return func(*args, **(kwargs or {}))
        for x in tree_leaves((args, kwargs or {})):
            if isinstance(x, torch.Tensor):
                name = self.named.get(id(x))
                if name is not None:
                    self.read[name] = x
                elif id(x) not in self.produced and id(x) not in self.exempt:
                    self.foreign = True
        out = func(*args, **(kwargs or {}))
        self.produced.update(id(x) for x in tree_leaves(out) if isinstance(x, torch.Tensor))
        return out


class SettledScores:
    """Test scores carried forward for a method with parameter isolation (`Method.isolates_tasks`):
    task t's predictions read only tensors that are final once task t is trained, so scoring it
    again after every later task repeats the same forward passes (evaluation after every task is
    O(T^2) forwards; this makes it O(T)). Each task is scored once while its forward is traced
    (which of the model's registered tensors it reads); later its score is reused only while every
    one of those names still holds the same tensor object with the same contents (xxh3 digest), so
    a method that trains anything its earlier tasks read is re-scored. A forward that reads a
    tensor outside the model, or none of it (compiled code the trace cannot see into), is never
    reused."""

    def __init__(self, method):
        self.method = method
        self.settled: dict[int, tuple[dict[str, torch.Tensor], str, np.ndarray]] = {}

    def registered(self) -> dict[str, torch.Tensor]:
        net = self.method.net
        return {**dict(net.named_parameters(remove_duplicate=False)), **dict(net.named_buffers(remove_duplicate=False))}

    def examples(self, t: int, data: EncodedSplit, batch_size: int = 256, precision: str = "fp32") -> np.ndarray:
        """Task t's per-example test scores (bench/examples.py), carried forward while settled."""
        tensors = self.registered()
        known = self.settled.get(t)
        if known is not None:
            read, digest, value = known
            if all(tensors.get(name) is tensor for name, tensor in read.items()) and state_digest(read) == digest:
                return value
        exempt = {id(x) for x in data.tensors()}
        with TensorReads({id(x): name for name, x in tensors.items()}, exempt) as reads:
            value = per_example_scores(self.method, t, data, batch_size, precision)
        if reads.foreign or not reads.read:  # read nothing of the model: the trace did not see the forward
            self.settled.pop(t, None)
        else:
            self.settled[t] = (reads.read, state_digest(reads.read), value)
        return value

    def score(self, t: int, data: EncodedSplit, batch_size: int = 256, precision: str = "fp32") -> float:
        return cell_score(self.examples(t, data, batch_size, precision))
