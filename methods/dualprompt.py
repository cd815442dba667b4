"""DualPrompt (Wang et al. ECCV 2022). The backbone is frozen; complementary prompts are attached
to different blocks as prefixes (bench/prompts.py: tokens that serve as extra keys and values of
one block's attention):
  - G-prompt g_l (length 5) at blocks 0-1, shared by all tasks and trained in every task;
  - E-prompts e_{t,l} (length 20) at blocks 2-4, one per task t with a key k_t.
Training task t uses e_t (the task identity is known in training) and
    L = L_task(f(x; g, e_t)) + lambda * (1 - cos(q(x), k_t)),   lambda = 1,
the matching loss pulling k_t toward the queries of task t; a prediction uses the E-prompt whose
key matches the query best, argmax_j cos(q(x), k_j) over the tasks learnt so far (the query q(x)
is the frozen, unprompted backbone's pooled output, folded to its hidden width). The E-pool
holds one prompt per task (the paper's pool size = number of tasks). Prompts and keys U(-1, 1)
as the authors' code; lr 0.005 (the paper's Adam lr; here under the harness's warm-up + decay).
Earlier tasks' E-prompts and keys are not trained again, but the G-prompt is, and the selection
of an earlier task's E-prompt can change as keys are added: earlier scores can change.

Task-incremental here: the task's head is given, the E-prompt is still chosen by the query
(`selection_hits` counts, per task, predictions whose chosen E-prompt was the task's own).
Deviations: a prefix token's key and value are the block's projections of one token (tied), where
the paper's prefix-tuning learns separate key and value halves (bench/prompts.py); on dual
encoders each tower gets its own prompts at its blocks 0-4, selected by the same keys."""
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.method import require
from bench.prompts import Prompted, cosine, uniform
from bench.registry import METHODS


@dataclass
class DualPromptHParams:
    g_length: int = 5
    g_last: int = 1            # G-prompts at blocks 0..g_last
    e_length: int = 20
    e_first: int = 2           # E-prompts at blocks e_first..e_last
    e_last: int = 4
    match_weight: float = 1.0  # lambda

    def __post_init__(self):
        for name in ("g_length", "e_length"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.match_weight >= 0, "match_weight", self.match_weight, ">= 0")
        blocks = (self.g_last, self.e_first, self.e_last)
        require(-1 <= self.g_last < self.e_first <= self.e_last, "(g_last, e_first, e_last)", blocks,
                "-1 <= g_last < e_first <= e_last (G below E)")


@METHODS.register("dualprompt")
class DualPrompt(Prompted):
    HParams = DualPromptHParams
    lr = 0.005

    def setup(self):
        super().setup()
        hp, widths = self.hp, self.injector.widths
        self.g_sites, self.e_sites = self.depths(0, hp.g_last), self.depths(hp.e_first, hp.e_last)
        if not self.e_sites:
            raise BenchError(f"dualprompt: no block {hp.e_first}..{hp.e_last} for the E-prompts "
                             f"(towers of {[len(t) for t in self.injector.towers]} blocks)")
        g = nn.ParameterList(uniform(hp.g_length, widths[k]) for k, _ in self.g_sites)
        e = nn.ModuleList(nn.ParameterList(uniform(hp.e_length, widths[k]) for k, _ in self.e_sites) for _ in self.tasks)
        keys = nn.ParameterList(uniform(self.backbone.hidden_size) for _ in self.tasks)
        self.net["prompts"] = self.prompt_modules = nn.ModuleDict({"g": g, "e": e, "key": keys})
        self.selection_hits = torch.zeros(len(self.tasks), 2, dtype=torch.long)  # per task: own E-prompt chosen, predictions

    def select(self, q: torch.Tensor) -> torch.Tensor:
        """The task whose key is nearest each query [N], among the tasks begun so far."""
        keys = torch.stack(list(self.prompt_modules["key"][: self.seen]))
        return cosine(q, keys).argmax(1)

    def prompts(self, q, t, training):
        N, pm = len(q), self.prompt_modules
        spans = {site: (p.expand(N, -1, -1), site[1]) for site, p in zip(self.g_sites, pm["g"])}
        if training:
            chosen = [pm["e"][t][j].expand(N, -1, -1) for j in range(len(self.e_sites))]
            aux = self.hp.match_weight * (1 - cosine(q, pm["key"][t][None])).mean()
        else:
            pick = self.select(q)
            self.selection_hits[t] += torch.tensor([int((pick == t).sum()), N])
            chosen = [torch.stack([pm["e"][k][j] for k in range(len(self.tasks))])[pick] for j in range(len(self.e_sites))]
            aux = q.new_zeros(())
        spans.update({site: (e, site[1]) for site, e in zip(self.e_sites, chosen)})
        return spans, aux

    def trainable_parameters(self, t, ctx):
        pm = self.prompt_modules
        return [{"params": list(self.heads[t].parameters()), "lr": ctx.head_lr},
                {"params": [*pm["g"], *pm["e"][t], pm["key"][t]], "lr": ctx.lr}]

    def task_modules(self, t):
        return [self.heads[t], self.prompt_modules]
