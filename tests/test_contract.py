"""The method contract seen from a plugin: the gradient hook (A-GEM written on it, fp32 and bf16),
per-task settings that apply to their task only, and the context every hook receives."""
import pytest
import torch

import bench.train
from bench.method import Method
from bench.store import load_tensors
from conftest import plugin, run_method


class AGem(Method):
    """A-GEM (Chaudhry et al. 2019) on the gradient hook: after backward, the reference gradient
    g_ref of the loss on a memory batch of an earlier task; where g . g_ref < 0 the step's gradient
    becomes g - (g . g_ref / g_ref . g_ref) g_ref. `project = False` computes g_ref and keeps g: a
    control that must train exactly as finetune does."""
    project = True
    memory = 16  # the first examples of each earlier task's training split

    def begin_task(self, ctx):
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.dots = []  # (g . g_ref before, after) per step

    def after_backward(self, ctx, param_groups):
        if ctx.task == 0:
            return
        params = [p for g in param_groups for p in g["params"] if p.grad is not None]
        k = int(torch.randint(ctx.task, (), generator=self.generator))
        batch = ctx.train_data[k].batch(torch.arange(self.memory))
        with torch.random.fork_rng(devices=[]), ctx.autocast():  # draws no dropout from the run's stream
            ref = torch.autograd.grad(Method.loss(self, batch, k, ctx), params, allow_unused=True)
        ref = [torch.zeros_like(p) if r is None else r for p, r in zip(params, ref)]
        dot = sum((p.grad * r).sum() for p, r in zip(params, ref))
        if self.project and dot < 0:
            scale = dot / sum((r * r).sum() for r in ref)
            for p, r in zip(params, ref):
                p.grad -= scale * r
        self.dots.append((float(dot), float(sum((p.grad * r).sum() for p, r in zip(params, ref)))))


class AGemControl(AGem):
    project = False


class NoGradient(Method):
    """Zeroes every gradient in the hook: with no weight decay, nothing may change."""

    def after_backward(self, ctx, param_groups):
        for g in param_groups:
            for p in g["params"]:
                p.grad = torch.zeros_like(p)


def changed_tensors(out, metrics) -> dict:
    """The trained tensors that differ from the model as built (what the checkpoint stores)."""
    return load_tensors(out / "runs" / metrics["run_id"] / "checkpoint.pt")["method"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_gradient_hook_that_keeps_the_gradient_trains_exactly_as_finetune(precision, monkeypatch, tmp_path, cache_dir):
    plugin(monkeypatch, "zz_agem_control", AGemControl)
    sets = [f"precision={precision}", "steps=4"]
    finetune = run_method("finetune", tmp_path / "ft", cache_dir, sets=sets, reuse_stages=False)
    control = run_method("zz_agem_control", tmp_path / "control", cache_dir, sets=sets)
    assert control["matrix"] == finetune["matrix"]
    a, b = changed_tensors(tmp_path / "ft", finetune), changed_tensors(tmp_path / "control", control)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_what_the_hook_leaves_in_grad_is_what_the_optimizer_steps_on(monkeypatch, tmp_path, cache_dir):
    plugin(monkeypatch, "zz_no_gradient", NoGradient)
    metrics = run_method("zz_no_gradient", tmp_path, cache_dir, sets=["weight_decay=0", "steps=3"])
    assert changed_tensors(tmp_path, metrics) == {}


def test_a_gem_projects_conflicting_gradients_under_bf16(monkeypatch, tmp_path, cache_dir):
    seen = []
    real = AGem.end_task

    def end_task(self, ctx):
        seen.extend(self.dots)
        return real(self, ctx)
    monkeypatch.setattr(AGem, "end_task", end_task)
    plugin(monkeypatch, "zz_agem", AGem)
    run_method("zz_agem", tmp_path, cache_dir, sets=["precision=bf16", "steps=8", "lr=3e-3"])
    assert len(seen) == 3 * 8  # every step of tasks 1..3
    conflicts = [(before, after) for before, after in seen if before < 0]
    assert conflicts, "no step conflicted with the memory: the projection was not exercised"
    for before, after in seen:
        if before < 0:  # projected onto the half-space g . g_ref >= 0, i.e. orthogonal to g_ref
            assert abs(after) <= 1e-3 * abs(before)
        else:
            assert after == before


def test_a_task_learning_rate_applies_to_that_task_only(monkeypatch, tmp_path, cache_dir):
    sequence = tmp_path / "one_lr.yaml"
    sequence.write_text("tasks: [vqa_color, {name: text_mention, lr: 0.005}, digits]\n"
                        "options: {steps: 2, train_cap: 64, test_cap: 32, val_size: 16}\n")
    lrs, real = [], bench.train.adamw

    def adamw(groups, weight_decay):
        lrs.append(sorted(g["lr"] for g in groups))
        return real(groups, weight_decay)
    monkeypatch.setattr(bench.train, "adamw", adamw)
    run_method("finetune", tmp_path / "r", cache_dir, sequence=str(sequence), reuse_stages=False)
    assert lrs == [sorted([lr, Method.head_lr]) for lr in (Method.lr, 0.005, Method.lr)]
