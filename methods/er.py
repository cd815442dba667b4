"""Experience replay, as CLiMB runs it. Each finished task keeps a random `memory_fraction` (1 %)
of its training examples — a per-task balanced memory (every task keeps its own share), not a
reservoir — and every `replay_every` (100) training steps of a later task t, a batch from the
memory of one earlier task k, picked uniformly, is trained on with k's head:
    on a replay step:  L = L_t(B_t) + L_k(B_k),   k ~ U{0, …, t−1},   B_k ⊂ memory of task k.
CLiMB takes that replay step as a second optimizer step right after the current one; within the
runner's one optimizer step per batch the replay loss is added to that step's loss instead (one
step on the sum rather than two steps). Steps are counted within a task (CLiMB counts within an
epoch), so a task shorter than `replay_every` steps gets no replay at all; `replay_every=1` is
interleaved replay (a memory batch with every batch), the schedule that suits short budgets. The
default sequence (20 steps per task) therefore sets `memory_fraction: 0.1, replay_every: 1` in its
YAML `hparams:`; at CLiMB's values `er` would train exactly like `finetune` there. Replay batches are as large as the
current batch, capped at the memory's size, drawn without replacement (as CLiMB). Earlier heads
stay trainable: replay updates them, as in CLiMB.

Resume is exact: task k's memory is a pure function of k's seed (the runner's per-task seed,
`ctx.seed`) and its training split, and the seeds are a buffer of `self.net`; replay draws
come from a generator seeded per task, and a killed task is retrained from its start.
"""
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.method import Method, require
from bench.registry import METHODS


@dataclass
class ERHParams:
    memory_fraction: float = 0.01  # share of each task's training split kept (CLiMB: 1 %)
    replay_every: int = 100        # a replay batch every k training steps (CLiMB: 100); 1 = interleaved

    def __post_init__(self):
        require(0 < self.memory_fraction <= 1, "memory_fraction", self.memory_fraction, "in (0, 1]")
        require(self.replay_every >= 1, "replay_every", self.replay_every, ">= 1")


@METHODS.register("er")
class ExperienceReplay(Method):
    trains_as = "finetune"  # the first task is `finetune`'s: no memory before the second task
    HParams = ERHParams

    def setup(self):
        memory = nn.Module()
        memory.register_buffer("seed", torch.full((len(self.tasks),), -1, dtype=torch.long))  # -1: not seen yet
        memory.register_buffer("values", torch.zeros(len(self.tasks), dtype=torch.long))  # scalars it stores, per task
        self.net["memory"] = memory

    def begin_task(self, ctx):
        self.net["memory"].seed[ctx.task] = ctx.seed
        remembered = ctx.train_data[ctx.task].batch(self.memory(ctx.task, ctx.train_data))
        self.net["memory"].values[ctx.task] = sum(v.numel() for v in remembered.values())
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.step = 0

    def memory(self, k: int, train_data) -> torch.Tensor:
        """Indices into task k's training split (`train_data[k]`) of its remembered examples."""
        seed = int(self.net["memory"].seed[k])
        if seed < 0:
            raise BenchError(f"er: task {k} has no memory yet")
        n = len(train_data[k])
        size = max(1, round(self.hp.memory_fraction * n))
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]

    def replay_batch(self, t: int, size: int, train_data) -> tuple[int, dict]:
        """(k, batch): an earlier task picked uniformly and up to `size` examples of its memory."""
        k = int(torch.randint(t, (), generator=self.generator))
        memory = self.memory(k, train_data)
        pick = memory[torch.randperm(len(memory), generator=self.generator)[:size]]
        return k, train_data[k].batch(pick)

    def loss(self, batch, t, ctx):
        loss = super().loss(batch, t, ctx)
        if t > 0 and (self.step + 1) % self.hp.replay_every == 0:
            k, replay = self.replay_batch(t, len(batch["label"]), ctx.train_data)
            loss = loss + super().loss(replay, k, ctx)
        return loss

    def after_step(self, ctx):
        self.step += 1

    def param_report(self):
        """The memory counts as stored: its examples' scalars (token ids, mask, image features)."""
        report = super().param_report()
        memory = int(self.net["memory"].values.sum())
        return {**report, "stored": report["stored"] + memory, "memory_values": memory}

    def trainable_parameters(self, t, ctx):
        earlier_heads = [p for k in range(t) for p in self.heads[k].parameters()]
        return super().trainable_parameters(t, ctx) + [{"params": earlier_heads, "lr": ctx.head_lr}]
