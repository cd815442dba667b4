"""The method contract seen from a plugin: the gradient hook (A-GEM, methods/agem.py, is written on
it: tests/test_rehearsal.py), per-task settings that apply to their task only, and the context
every hook receives."""
import torch

import bench.train
from bench.method import Method
from bench.store import load_tensors
from conftest import plugin, run_method


class NoGradient(Method):
    """Zeroes every gradient in the hook: with no weight decay, nothing may change."""

    def after_backward(self, ctx, param_groups):
        for g in param_groups:
            for p in g["params"]:
                p.grad = torch.zeros_like(p)


def changed_tensors(out, metrics) -> dict:
    """The trained tensors that differ from the model as built (what the checkpoint stores)."""
    return load_tensors(out / "runs" / metrics["run_id"] / "checkpoint.pt")["method"]


def test_what_the_hook_leaves_in_grad_is_what_the_optimizer_steps_on(monkeypatch, tmp_path, cache_dir):
    plugin(monkeypatch, "zz_no_gradient", NoGradient)
    metrics = run_method("zz_no_gradient", tmp_path, cache_dir, sets=["weight_decay=0", "steps=3"])
    assert changed_tensors(tmp_path, metrics) == {}


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
