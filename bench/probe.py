"""Retention of pretrained ability: probe tasks (the sequence file's `probe:` list) are never
trained; each is scored with the method's model before the first task (row 0: the pretrained
backbone) and after each task i (row i + 1), and retention is score after / score before.

"The model after task i" is the method's backbone with task i activated (`Method.activate(i)`,
what the method runs for its latest task): the shared backbone as training left it plus whatever
of task i's modules live inside its forward (adapters, LoRA, mixtures of experts, fusions). Task
heads and what a method adds in its own `forward` (the prompt methods' prompts) are not part of
it, so a method that never changes the backbone's forward (`frozen`, the prompt methods) keeps
retention 1 exactly. Row 0 runs the backbone as built, before any `activate`.

Scoring, per probe task:
- zero-shot, for a CLIP backbone (bench/backbones/dual_encoder.py) and an image-only task: each
  test image goes to the label whose prompt ("a photo of a {label}.", CLIP's generic template)
  has the most similar embedding;
- otherwise a linear probe: the backbone's pooled features of the probe's training split,
  standardised, fit by an L-BFGS logistic regression (CLIP's linear-probe protocol; C fixed at 1
  instead of CLIP's validation sweep, max_iter 1000 as CLIP), scored on its test split.
Probe tasks must be single-label classification (cross-entropy, not multiple choice)."""
from dataclasses import dataclass
from statistics import mean

from bench.errors import BenchError

COLUMN_GROUP = "Retention of pretrained ability"
COLUMNS = [("retention_final", "Retention final %"), ("retention_mean", "Retention mean %")]  # higher is better


@dataclass
class ProbeSettings:
    C: float = 1.0                       # inverse L2 strength of the logistic regression
    max_iter: int = 1000                 # L-BFGS iterations at most (CLIP's)
    template: str = "a photo of a {}."   # CLIP's zero-shot prompt


def check_probe_task(task) -> None:
    if task.loss != "ce" or task.choices:
        raise BenchError(f"probe task '{task.name}' must be single-label classification "
                         f"(not soft VQA scores or multiple choice)")


def probe_kind(backbone, task) -> str:
    from bench.backbones.dual_encoder import DualEncoder
    return "zero_shot" if isinstance(backbone, DualEncoder) and task.kind == "image" and task.n_images == 1 else "linear"


def splits(kind: str) -> tuple[str, ...]:
    return ("test",) if kind == "zero_shot" else ("train", "test")


class RetentionProbe:
    """The probe tasks with their encoded splits (`data[k]`: split name -> EncodedSplit)."""

    def __init__(self, backbone, tasks: list, data: list[dict], batch_size: int, precision: str,
                 settings: ProbeSettings | None = None):
        for task in tasks:
            check_probe_task(task)
        self.tasks, self.data, self.batch_size, self.precision = tasks, data, batch_size, precision
        self.kinds = [probe_kind(backbone, t) for t in tasks]
        self.settings = settings or ProbeSettings()

    def row(self, method, t: int | None) -> list[float]:
        """Each probe task's score (%) with the model after task t (None: as built, before any task)."""
        if t is not None:
            method.activate(t, None)
        method.net.eval()
        try:
            return [self.score(method.backbone, task, kind, data) for task, kind, data in zip(self.tasks, self.kinds, self.data)]
        finally:
            method.net.train()

    def score(self, backbone, task, kind: str, data: dict) -> float:
        if kind == "zero_shot":
            return zero_shot_score(backbone, task, data["test"], self.batch_size, self.precision, self.settings.template)
        fit = [features(backbone, data[name], self.batch_size, self.precision) for name in ("train", "test")]
        labels = [data[name].fields["label"].numpy() for name in ("train", "test")]
        return linear_probe_score(fit[0], labels[0], fit[1], labels[1], self.settings)


def features(backbone, data, batch_size: int, precision: str):
    """Pooled features [N, d] (float32, host) of `data` in its order."""
    import torch
    from bench.backbones.base import pooled
    from bench.precision import autocast
    out = []
    with torch.inference_mode():
        for batch in data.batches(batch_size):
            with autocast(precision, batch["label"].device.type):
                out.append(pooled(backbone, batch).float().cpu())
    return torch.cat(out).numpy()


def linear_probe_score(train_x, train_y, test_x, test_y, settings: ProbeSettings) -> float:
    """Test accuracy (%) of a logistic regression fit on standardised training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits
    model = make_pipeline(StandardScaler(), LogisticRegression(C=settings.C, max_iter=settings.max_iter, random_state=0))
    # one BLAS thread: the fit is small (vqa_yesno: 1,280 x 384, 119 iterations), and OpenBLAS's
    # threads beside torch's on a busy 2-core machine made it take 8 s instead of 0.08 s
    with threadpool_limits(1):
        model.fit(train_x, train_y)
        return float(100.0 * (model.predict(test_x) == test_y).mean())


def zero_shot_score(backbone, task, data, batch_size: int, precision: str, template: str) -> float:
    """Accuracy (%) of CLIP zero-shot classification of `data`'s images among the task's labels."""
    import torch
    from bench.backbones.dual_encoder import spread
    from bench.precision import autocast
    device = next(backbone.parameters()).device
    prompts = {k: v.to(device) for k, v in backbone.encode_texts([template.format(label) for label in task.labels]).items()}
    correct = 0
    with torch.inference_mode(), autocast(precision, device.type):
        labels = spread(backbone.text_embeddings(prompts))
        for batch in data.batches(batch_size):
            images = spread(backbone.image_embeddings(batch["image_feats"][:, 0]))
            correct += int(((images @ labels.T).argmax(-1) == batch["label"]).sum())
    return 100.0 * correct / len(data)


def result(rows: list, tasks, kinds: list[str]) -> dict:
    """metrics.json "probe": the scores P (row 0 before the first task, row i + 1 after task i;
    None where not scored), retention R[i][k] = P[i + 1][k] / P[0][k], its last row's mean over the
    probe tasks (final) and the mean of every defined R[i][k] (mean)."""
    before = rows[0]
    retention = [[None if a is None or not b else a / b for a, b in zip(row, before)] for row in rows[1:]]
    defined = [v for row in retention for v in row if v is not None]
    return {"tasks": [t.name for t in tasks], "kind": kinds, "scores": rows, "retention": retention,
            "summary": {"retention_final": None if None in retention[-1] else mean(retention[-1]),
                        "retention_mean": mean(defined) if defined else None}}


def report_columns(run: dict) -> dict:
    """The run's leaderboard columns (bench/report.py), retention as a percentage."""
    probe = run.get("probe")
    return {k: None if v is None else 100.0 * v for k, v in probe["summary"].items()} if probe else {}
