"""Which task's model predicts a test example when the task id is not given (class- and
domain-incremental settings, bench/settings.py).

A method's `predict(batch, t)` takes a task index. In `class` / `domain` the harness chooses it
without the example's task:

- `shared`: a method whose `activate` is the base class's no-op selects nothing per task but its
  head, and the heads of one input format are one module; it predicts with the index of the last
  trained task of the example's input format (what any method of one model does).
- `predicted`: a method that overrides `activate` (per-task adapters, fusions, LoRAs, experts)
  gets the task id from `NearestPrototype`, never the oracle; metrics.json records the predictor's
  accuracy per task after every task.
- `oracle`: a method that declares `needs_task_id = True` is given the true task id; the report
  marks its rows "oracle task id" and metrics.json says so.
"""
import torch

from bench.backbones import build_backbone
from bench.backbones.base import FROZEN
from bench.prefix import FrozenPrefix
from bench.train import overrides

PROTOTYPE_EXAMPLES = 256  # training examples per task averaged into its prototype
ORACLE_MARK = " (oracle task id)"  # after the name of a method given the true task id, in tables and figures


def task_id_source(method) -> str:
    """"oracle", "predicted" or "shared" (see the module docstring)."""
    if getattr(type(method), "needs_task_id", False):
        return "oracle"
    return "predicted" if overrides(method, "activate") else "shared"


class NearestPrototype:
    """The task-id predictor: nearest task prototype on the frozen pretrained backbone's pooled
    features. Task k's prototype is the mean pooled feature of the first `PROTOTYPE_EXAMPLES` of
    its training split (already in a fixed random order); after task i a test example goes to the
    nearest prototype (Euclidean) among tasks 0..i whose features are as wide as its own (the input
    format is visible at test time). The features are computed by a separate copy of the pretrained
    backbone, so they are the same for every method, and cached on disk as `frozen`'s pooled
    outputs are (bench/prefix.py)."""

    def __init__(self, backbone_spec: str, train: list, test: list, novel: dict, precision: str, cache_dir,
                 batch_size: int, device):
        backbone = build_backbone(backbone_spec)
        backbone.freeze()
        backbone.to(device)
        prefix = FrozenPrefix(backbone, len(backbone.layers), True, [backbone], precision)

        def features(split):
            return prefix.attach(split, cache_dir, batch_size).fields[FROZEN + "pooled"].float().flatten(1)
        self.prototypes = [features(split)[:PROTOTYPE_EXAMPLES].mean(0) for split in train]
        self.test = [features(split) for split in test]
        self.novel = {j: features(split) for j, split in novel.items()}

    def __call__(self, i: int, j: int, novel: bool = False) -> torch.Tensor:
        """The predicted task of each of task j's test (or novel) examples after task i."""
        x = (self.novel if novel else self.test)[j]
        candidates = [k for k in range(i + 1) if len(self.prototypes[k]) == x.shape[1]]
        distances = torch.cdist(x, torch.stack([self.prototypes[k] for k in candidates]))
        return torch.tensor(candidates, device=x.device)[distances.argmin(1)]


class Router:
    """Per evaluated cell (i, j), the task index each of task j's test examples (or novel-composition
    examples, bench/novel.py: routed the same way) is predicted with."""

    def __init__(self, method, space, cfg, data: dict, novel: dict, cache_dir, device):
        self.source, self.space = task_id_source(method), space
        self.predictor = None
        if self.source == "predicted":
            self.predictor = NearestPrototype(cfg.backbone, data["train"], data["test"], novel, cfg.precision, cache_dir,
                                              cfg.eval_batch_size, device)

    def models(self, i: int, j: int, n: int, device, novel: bool = False) -> torch.Tensor | None:
        """None: task j's own model (the oracle)."""
        if self.source == "oracle":
            return None
        if self.source == "predicted":
            return self.predictor(i, j, novel).to(device)
        latest = max(k for k in range(i + 1) if self.space.group[k] == self.space.group[j])
        return torch.full((n,), latest, device=device)
