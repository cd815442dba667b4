"""Scores kept beside the matrix, on a short sequence with held-out compositions and two probe
tasks (toy backbone): the runner's novel-composition scores and probe scores equal a bare loop's
(the model's forward over the whole split; an sklearn fit on features of a bare backbone forward),
metrics.json gives back every formula (matrix metrics, novel summary, retention = after / before),
`frozen` keeps retention 1, the report shows both column groups, and a killed run resumes with the
probe's and novel split's finished rows kept."""
from statistics import mean

import pytest
import torch

from bench import metrics as M
from bench import report
from bench.config import plan_tasks, resolve
from bench.data import encode
from bench.registry import METHODS
from conftest import kill_before_task, run_method
from tiny_models import tiny  # noqa: F401  (session fixture)

SEQUENCE = """
tasks:
  - {name: vqa_color, holdout: [circle]}
  - text_mention
  - {name: vqa_shape, holdout: [blue]}
probe: [digits, text_negation]
quick: {steps: 2, train_cap: 64, test_cap: 32, val_size: 16, lr: 1.0e-2}
"""
FP32 = ("precision=fp32",)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "beside.yaml"
    path.write_text(SEQUENCE)
    return str(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir, sequence):
    """metrics of finetune and frozen, and their results directory."""
    out = tmp_path_factory.mktemp("beside")
    return out, {m: run_method(m, out, cache_dir, sequence=sequence, sets=FP32, reuse_stages=False)
                 for m in ("finetune", "frozen", "multitask")}


def whole(split) -> tuple[dict, torch.Tensor]:
    """A split's examples as one batch, and its labels."""
    batch = dict(split.fields)
    if "image_index" in batch:
        batch["image_feats"] = split.images[batch.pop("image_index")]
    return batch, batch.pop("label")


@torch.no_grad()
def bare_probe(method, t, task, plan) -> float:
    """Probe score (%) by hand: the backbone's forward with task t active over each whole split,
    then a standardised logistic regression (ProbeSettings' defaults)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if t is not None:
        method.activate(t, None)
    method.net.eval()
    (x, y), (x_test, y_test) = [whole(encode(method.backbone, task, task.load(s, limit=cap, val_size=plan.val_size)))
                                for s, cap in (("train", plan.train_cap), ("test", plan.test_cap))]
    fit = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=0))
    fit.fit(method.backbone(x).numpy(), y.numpy())
    predicted = fit.predict(method.backbone(x_test).numpy())
    method.net.train()
    return float(100.0 * (predicted == y_test.numpy()).mean())


@torch.no_grad()
def bare_novel(method, j, task, plan) -> float:
    method.activate(j, None)
    method.net.eval()
    batch, labels = whole(encode(method.backbone, task, task.load("novel", limit=plan.test_cap)))
    out = float(100.0 * (method.forward(batch, j).argmax(-1) == labels).double().mean())
    method.net.train()
    return out


def test_runner_scores_equal_a_bare_loop(tmp_path, cache_dir, sequence):
    from bench.run_state import RunState
    from bench.runner import Run
    cfg = resolve("finetune", METHODS.get("finetune"), [("precision", "fp32")], sequence=sequence, backbone="toy", quick=True)
    run = Run(cfg, "cpu", cache_dir, lambda *_: None, cache_prefix=False, reuse_dir=None)
    probe_plans = plan_tasks(cfg, "probe")
    before = [bare_probe(run.method, None, task, p) for task, p in zip(run.probe.tasks, probe_plans)]
    (tmp_path / "run").mkdir()
    state = RunState(tmp_path / "run", run.method, lambda *_: None, cfg.run_id)
    run.train_sequence(state, reuse_scores=False, compile=False)
    progress, last = state.progress, len(run.tasks) - 1
    assert progress["probe"][0] == before
    assert progress["probe"][-1] == [bare_probe(run.method, last, task, p) for task, p in zip(run.probe.tasks, probe_plans)]
    assert progress["novel"][-1] == [bare_novel(run.method, j, task, p) if task.holdout else None
                                     for j, (task, p) in enumerate(zip(run.tasks, run.plans))]
    assert progress["probe"][-1] != before  # fine-tuning moved the features: the check above can fail


def test_metrics_json_gives_back_every_formula(finished):
    for m in (finished[1][name] for name in ("finetune", "frozen")):
        A, N, P = m["matrix"], m["novel"]["matrix"], m["probe"]["scores"]
        assert m["summary"] == M.summary(A, m["chance"], m["single_task"])  # the matrix metrics, unchanged
        held = [j for j, task in enumerate(m["tasks"]) if task in m["novel"]["tasks"]]
        assert m["novel"]["tasks"] == ["vqa_color", "vqa_shape"] and held == [0, 2]
        assert [[v is not None for v in row] for row in N] == [[j in held and j <= i for j in range(3)] for i in range(3)]
        assert m["novel"]["summary"] == {"novel_final": mean(N[-1][j] for j in held), "seen_final": mean(A[-1][j] for j in held)}
        assert len(P) == len(A) + 1 and m["probe"]["tasks"] == ["digits", "text_negation"] and m["probe"]["kind"] == ["linear"] * 2
        R = [[P[i + 1][k] / P[0][k] for k in range(2)] for i in range(len(A))]
        assert m["probe"]["retention"] == R
        assert m["probe"]["summary"] == {"retention_final": mean(R[-1]), "retention_mean": mean(v for row in R for v in row)}


def test_joint_method_fills_only_the_last_rows(finished):
    """multitask trains once: its earlier rows stay None beside the matrix too."""
    m = finished[1]["multitask"]
    N, P = m["novel"]["matrix"], m["probe"]["scores"]
    assert N[:2] == [[None] * 3] * 2 and [v is not None for v in N[2]] == [True, False, True]
    assert P[1:3] == [[None, None]] * 2 and None not in P[0] + P[3]
    assert m["probe"]["summary"]["retention_final"] == mean(P[3][k] / P[0][k] for k in range(2))


def test_frozen_keeps_retention_one(finished):
    frozen = finished[1]["frozen"]["probe"]
    assert all(v == 1.0 for row in frozen["retention"] for v in row)
    assert finished[1]["finetune"]["probe"]["retention"] != frozen["retention"]


def test_report_shows_novel_and_retention_columns(finished):
    runs = list(finished[1].values())
    table = report.leaderboard(report.runs_frame(runs))
    for m in runs:
        row = table[table["method"] == m["method"]].iloc[0]
        assert row["novel_final_mean"] == m["novel"]["summary"]["novel_final"]
        assert row["seen_final_mean"] == m["novel"]["summary"]["seen_final"]
        assert row["retention_final_mean"] == pytest.approx(100 * m["probe"]["summary"]["retention_final"])
        assert row["retention_mean_mean"] == pytest.approx(100 * m["probe"]["summary"]["retention_mean"])
    page = report.sortable_rows(table)
    groups = [h["group"] for h in page["header"]]
    for label, group in (("Novel final", "Novel compositions (VQACL)"), ("Retention final %", "Retention of pretrained ability")):
        assert groups[[h["label"] for h in page["header"]].index(label)] == group
    assert "Novel final" in report.pretty(table).columns


def test_resume_keeps_finished_probe_and_novel_rows(tmp_path, cache_dir, sequence, finished, monkeypatch):
    import bench.probe

    def run(method, out, **kw):
        return run_method(method, out, cache_dir, sequence=sequence, sets=FP32, **kw)
    kill_before_task(run, tmp_path, "finetune", 2, monkeypatch, reuse_stages=False)
    probed = []
    real = bench.probe.RetentionProbe.row
    monkeypatch.setattr(bench.probe.RetentionProbe, "row", lambda self, method, t: probed.append(t) or real(self, method, t))
    resumed = run("finetune", tmp_path, reuse_stages=False)
    assert probed == [2]  # neither the pretrained row nor tasks 0-1 again
    full = finished[1]["finetune"]
    assert resumed["probe"] == full["probe"] and resumed["novel"] == full["novel"] and resumed["matrix"] == full["matrix"]


def test_zero_shot_probe_on_clip_is_clips_own_zero_shot(tmp_path, cache_dir, tiny):  # noqa: F811
    """An image-only probe on a CLIP backbone is scored zero-shot: each test image gets the label
    CLIPModel's own `logits_per_image` ranks first, given the prompts (checked per image: with
    CLIP's choices as labels the probe scores 100; the random tiny CLIP chooses one label for most
    images, so this catches a wrong prompt or similarity, not a per-image slip)."""
    import dataclasses
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
    from bench.backbones import build_backbone
    from bench.probe import ProbeSettings, zero_shot_score
    from bench.registry import TASKS
    seq = tmp_path / "zero_shot.yaml"
    seq.write_text("tasks: [text_mention]\nprobe: [digits]\nquick: {steps: 2, train_cap: 16, test_cap: 48, val_size: 8}\n")
    m = run_method("frozen", tmp_path / "r", cache_dir, sequence=str(seq), backbone=tiny["hf_clip"], sets=FP32)
    assert m["probe"]["kind"] == ["zero_shot"]
    path = tiny["hf_clip"].partition(":")[2]
    model, tokenizer = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    processor = CLIPImageProcessor.from_pretrained(path)
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    task, backbone = TASKS.get("digits")(), build_backbone(tiny["hf_clip"]).eval()
    split = encode(backbone, task, task.load("test", limit=48))
    pixels = split.images[split.fields["image_index"][:, 0]].float() / 255
    prompts = tokenizer([f"a photo of a {label}." for label in task.labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        chosen = model(**prompts, pixel_values=(pixels - mean) / std).logits_per_image.argmax(-1)
    as_clip = dataclasses.replace(split, fields={**split.fields, "label": chosen})
    assert zero_shot_score(backbone, task, as_clip, 16, "fp32", ProbeSettings().template) == 100.0
    expected = 100.0 * int((chosen == split.fields["label"]).sum()) / len(split)
    assert m["probe"]["scores"] == [[expected], [expected]]
