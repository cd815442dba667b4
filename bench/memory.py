"""Replay memories shared by the rehearsal methods (DER++, ER-ACE, A-GEM): a reservoir of
remembered training examples, the lookup that finds a training batch's examples in their split,
and the loss of a memory sample that mixes tasks.

A remembered example is (task k, its index in `ctx.train_data[k]`): the runner's splits are fixed
per seed, so an index names the same example for the whole run, costs two integers, and the
memory is a few buffers of `self.net` (checkpointed, so a resumed run continues with it).
"""
from typing import Callable, Iterator

import torch
from torch import nn

from bench.errors import BenchError
from bench.method import Method
from bench.store import tensor_hash, update_digest


def _row_key(row: list[torch.Tensor]) -> bytes:
    """A 128-bit digest of the tensors' bytes (any dtype, bf16 too): the index holds 16 bytes per
    image and per example, not a copy of each image (a ViLT canvas is 1.48 MB)."""
    h = tensor_hash()
    for r in row:
        update_digest(h, r)
    return h.digest()


class SplitIndex:
    """Where a training batch's examples are in their split: the loop hands a method batches
    (dicts of tensors), not indices, so each example is found by its content (text fields, label
    and images). Examples with identical content are interchangeable for replay, so the first is
    taken."""

    def __init__(self, split):
        self.split = split
        fields = {k: v.cpu() for k, v in split.fields.items()}
        self.images = {}  # image features -> the first index holding them
        canon = None
        if split.images is not None:
            canon = torch.tensor([self.images.setdefault(_row_key([split.images[i].cpu()]), i) for i in range(len(split.images))])
            fields["image_index"] = canon[fields["image_index"]]
        self.keys = sorted(fields)
        self.table = {}
        for i in range(len(split) - 1, -1, -1):  # backwards: the first of equal examples wins
            self.table[_row_key([fields[k][i] for k in self.keys])] = i

    def find(self, batch: dict) -> torch.Tensor:
        fields = {k: v.detach().cpu() for k, v in batch.items() if k in self.keys}
        if "image_index" in self.keys:
            feats = batch["image_feats"].detach().cpu()
            fields["image_index"] = torch.tensor([[self.images.get(_row_key([im]), -1) for im in row] for row in feats])
        found = [self.table.get(_row_key([fields[k][b] for k in self.keys]), -1) for b in range(len(fields["label"]))]
        if -1 in found:
            raise BenchError("a training batch holds an example that is not in its task's training split")
        return torch.tensor(found)


class Reservoir(nn.Module):
    """Reservoir sampling (Vitter's Algorithm R), as DER++ and ER-ACE fill their memory: the n-th
    example of the training stream (0-based, all tasks in order) takes slot n while the memory has
    room, else slot j ~ U{0, …, n} if j < size; so after N examples every one of them is in the
    memory with probability size / N. `widths` (one per task) also keeps the logits each example
    had when it was inserted, per task since task heads differ in width (DER++)."""

    def __init__(self, size: int, widths: list[int] | None = None):
        super().__init__()
        self.size = size
        self.register_buffer("task", torch.full((size,), -1, dtype=torch.long))  # -1: empty slot
        self.register_buffer("index", torch.zeros(size, dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # examples of the stream so far
        # one buffer per task, not a [size, max width] one: its shape must not depend on the number of tasks
        self.logits = nn.Module()
        for k, w in enumerate(widths or []):
            self.logits.register_buffer(str(k), torch.zeros(size, w))

    def __len__(self) -> int:
        return min(int(self.seen), self.size)

    def add(self, t: int, index: torch.Tensor, generator: torch.Generator, logits: torch.Tensor | None = None):
        """Offer the examples `index` of task t (in stream order) to the reservoir."""
        seen = int(self.seen)
        position = seen + torch.arange(len(index))
        draw = (torch.rand(len(index), generator=generator, dtype=torch.float64) * (position + 1)).long()  # U{0..n}
        slot = torch.where(position < self.size, position, draw)
        # sequential semantics within a batch: of two examples drawn to one slot, the later stays
        last = {s: i for i, s in enumerate(slot.tolist()) if s < self.size}
        if last:
            slots, rows = torch.tensor(list(last)), torch.tensor(list(last.values()))
            self.task[slots] = t
            self.index[slots] = index[rows].to(self.index.device)
            if logits is not None:
                getattr(self.logits, str(t))[slots] = logits.detach()[rows.to(logits.device)].float()
        self.seen.fill_(seen + len(index))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Up to n filled slots, uniformly without replacement."""
        return torch.randperm(len(self), generator=generator)[:n]


def by_task(tasks: torch.Tensor, index: torch.Tensor, train_data) -> Iterator[tuple[int, torch.Tensor, dict]]:
    """(k, rows, batch): a sample of remembered examples (task, index) grouped by task, since each
    task's examples have their own fields and head; `rows` are their positions in the sample."""
    for k in tasks.unique().tolist():
        rows = (tasks == k).nonzero().squeeze(1)
        yield k, rows, train_data[k].batch(index[rows].to(train_data[k].fields["label"].device))


def sample_mean(tasks: torch.Tensor, index: torch.Tensor, train_data,
                loss: Callable[[int, torch.Tensor, dict], torch.Tensor]) -> torch.Tensor:
    """The mean over a mixed-task sample of a per-task mean loss `loss(k, rows, batch)`: each
    task's share weighs its loss."""
    return sum(len(rows) / len(tasks) * loss(k, rows, batch) for k, rows, batch in by_task(tasks, index, train_data))


class Rehearsal(Method):
    """Base of the reservoir-replay methods (DER++, ER-ACE): the memory (`hp.buffer_size` slots,
    with insertion-time logits when `keeps_logits`), offered every training batch through
    `remember`, and earlier heads that stay trainable, since replay trains them."""
    keeps_logits = False

    def setup(self):
        widths = [t.choices or t.n_classes for t in self.tasks] if self.keeps_logits else None
        self.net["memory"] = Reservoir(self.hp.buffer_size, widths)

    @property
    def memory(self) -> Reservoir:
        return self.net["memory"]

    def begin_task(self, ctx):
        self.generator = torch.Generator().manual_seed(ctx.seed)  # reservoir and sample draws
        self.split = SplitIndex(ctx.train_data[ctx.task])

    def remember(self, batch: dict, t: int, logits: torch.Tensor | None = None):
        self.memory.add(t, self.split.find(batch), self.generator, logits)

    def trainable_parameters(self, t, ctx):
        earlier_heads = [p for k in range(t) for p in self.heads[k].parameters()]
        return super().trainable_parameters(t, ctx) + [{"params": earlier_heads, "lr": ctx.head_lr}]

    def param_report(self):
        report = super().param_report()
        report["stored"] += sum(b.numel() for b in self.memory.buffers())  # task ids, indices (, logits)
        return report
