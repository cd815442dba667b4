"""Mechanism tests of the classic continual-learning baselines (EWC, ER, LwF, freeze-bottom-k) on
the toy backbone: each asserts the behaviour its paper describes, and each could fail."""
import copy
from types import SimpleNamespace

import pytest
import torch

from bench.data import load_split
from bench.errors import BenchError
from bench.context import TaskContext
from bench.method import Method, Stage
from bench.registry import BACKBONES, METHODS, TASKS
from bench.runner import task_seed
from bench.store import load_tensors
from conftest import final_weights, kill_before_task, same_tensors, task_context

TASK_NAMES = ("vqa_color", "text_mention", "vqa_shape")


@pytest.fixture(scope="module")
def toy_data(cache_dir):
    """Training splits of three default tasks, encoded once with the toy backbone (--quick caps)."""
    backbone = BACKBONES.get("toy")()
    tasks = [TASKS.get(n)() for n in TASK_NAMES]
    return tasks, [load_split(backbone, task, "train", cache_dir, limit=192, val_size=32) for task in tasks]


def build(name: str, toy_data, **hp):
    tasks, train = toy_data
    cls = METHODS.get(name)
    torch.manual_seed(task_seed(0, -1))
    method = cls(BACKBONES.get("toy")(), tasks, cls.HParams(**hp))
    method.setup()
    return method


def begin(method, t: int, toy_data) -> TaskContext:
    """Seed torch and begin task t as the runner does; returns the task's context."""
    ctx = task_context(method, t, toy_data[1], seed=task_seed(0, t))
    torch.manual_seed(ctx.seed)
    method.begin_task(ctx)
    return ctx


def train_steps(method, ctx, steps: int = 3, lr: float = 1e-2):
    """A few plain SGD steps on task ctx.task through the method's own loss and parameters."""
    t, ctx = ctx.task, ctx.at(Stage())
    params = [p for g in method.trainable_parameters(t, ctx) for p in g["params"]]
    opt = torch.optim.SGD(params, lr=lr)
    batches = ctx.train_data[t].batches(16, torch.Generator().manual_seed(t))
    for _ in range(steps):
        opt.zero_grad()
        method.loss(next(batches), t, ctx).backward()
        opt.step()
        method.after_step(ctx)


def run_task(method, t: int, toy_data, steps: int = 3):
    ctx = begin(method, t, toy_data)
    train_steps(method, ctx, steps)
    method.end_task(ctx)


def live_backbone(method) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in method.penalised])


def set_backbone(method, flat: torch.Tensor):
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat, method.penalised)


# -- EWC ---------------------------------------------------------------------------------------

def test_ewc_fisher_is_nonnegative_nonzero_and_anchored_after_task0(toy_data):
    ewc = build("ewc", toy_data)
    assert all(float(f.abs().sum()) == 0 for f in ewc.state()[0])
    run_task(ewc, 0, toy_data)
    fisher, anchor = ewc.state()
    assert all(bool((f >= 0).all()) for f in fisher)
    assert sum(float(f.sum()) for f in fisher) > 0
    assert all(torch.equal(a, p.detach()) for a, p in zip(anchor, ewc.penalised))
    # the Fisher and the anchor are part of the checkpointed state
    state = ewc.state_dict()
    assert any(k.startswith("ewc.0.fisher.") for k in state) and any(k.startswith("ewc.0.anchor.") for k in state)
    assert sum(float(state[k].sum()) for k in state if k.startswith("ewc.0.fisher.")) > 0


def test_ewc_penalty_is_zero_at_anchor_and_grows_with_drift(toy_data):
    ewc = build("ewc", toy_data)
    run_task(ewc, 0, toy_data)
    anchor = live_backbone(ewc)
    direction = torch.randn(anchor.shape, generator=torch.Generator().manual_seed(1))
    values = []
    for eps in (0.0, 0.01, 0.03, 0.1, 0.3):
        set_backbone(ewc, anchor + eps * direction)
        values.append(float(ewc.penalty().detach()))
    assert values[0] == 0
    assert all(a < b for a, b in zip(values, values[1:])), values
    # quadratic in the drift: ten times the drift, a hundred times the penalty
    assert values[3] / values[1] == pytest.approx(100, rel=1e-3)
    # only later tasks pay it (dropout off so both losses see the same forward)
    ewc.net.eval()
    first, second = (toy_data[1][t].batch(torch.arange(8)) for t in (0, 1))
    ctx = task_context(ewc, 1, toy_data[1], stage=Stage())
    assert float(ewc.loss(first, 0, ctx).detach()) == float(Method.loss(ewc, first, 0, ctx).detach())
    torch.testing.assert_close(ewc.loss(second, 1, ctx), Method.loss(ewc, second, 1, ctx) + ewc.penalty())
    assert float(ewc.penalty().detach()) > 0


def two_tasks_then_drift(ewc, toy_data) -> list:
    """Train tasks 0 and 1, recording each one's Fisher and anchor, then move the backbone away."""
    per_task = []
    for t in (0, 1):
        ctx = begin(ewc, t, toy_data)
        train_steps(ewc, ctx)
        per_task.append(([f.clone() for f in ewc.fisher(t, ctx)], [p.detach().clone() for p in ewc.penalised]))
        ewc.end_task(ctx)
    theta = live_backbone(ewc)
    set_backbone(ewc, theta + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(2)))
    return per_task


def test_ewc_merged_penalty_has_the_gradient_of_the_per_task_sum(toy_data):
    ewc = build("ewc", toy_data)
    per_task = two_tasks_then_drift(ewc, toy_data)
    merged = torch.autograd.grad(ewc.penalty(), ewc.penalised)
    explicit = ewc.hp.lam / 2 * sum((f * (p - a).square()).sum()
                                    for fisher, anchor in per_task for p, f, a in zip(ewc.penalised, fisher, anchor))
    for g, h in zip(merged, torch.autograd.grad(explicit, ewc.penalised)):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-9)


def test_online_ewc_decays_the_running_fisher_and_anchors_at_the_latest_task(toy_data):
    ewc = build("ewc", toy_data, online=True, gamma=0.5)
    run_task(ewc, 0, toy_data)
    first = [f.clone() for f in ewc.state()[0]]
    ctx = begin(ewc, 1, toy_data)
    train_steps(ewc, ctx)
    new = ewc.fisher(1, ctx)
    ewc.end_task(ctx)
    fisher, anchor = ewc.state()
    for f, f0, f1 in zip(fisher, first, new):
        torch.testing.assert_close(f, 0.5 * f0 + f1)
    assert all(torch.equal(a, p.detach()) for a, p in zip(anchor, ewc.penalised))



def test_climb_ewc_penalises_one_random_earlier_task_per_step_at_full_lambda(toy_data):
    """CLiMB's compute_ewc_loss: λ ΣF_k(θ−θ*_k)², k = random.choice(earlier tasks), every step."""
    ewc = build("ewc", toy_data, climb=True)
    per_task = two_tasks_then_drift(ewc, toy_data)
    expected = [float(ewc.hp.lam * sum((f * (p - a).square()).sum() for p, f, a in zip(ewc.penalised, *per_task[k])))
                for k in (0, 1)]
    assert expected[0] != pytest.approx(expected[1])
    ewc.net.eval()
    batch = toy_data[1][2].batch(torch.arange(8))
    ctx = task_context(ewc, 2, toy_data[1], stage=Stage())
    plain = float(Method.loss(ewc, batch, 2, ctx))
    torch.manual_seed(0)
    drawn = [float(ewc.loss(batch, 2, ctx)) - plain for _ in range(40)]
    assert all(min(abs(d - e) for e in expected) < 1e-3 * max(expected) for d in drawn)  # one task's term, each step
    assert all(any(abs(d - e) < 1e-3 * e for d in drawn) for e in expected)  # both tasks are drawn

# -- ER ----------------------------------------------------------------------------------------

def test_er_memory_keeps_the_configured_share_of_every_past_task(toy_data):
    er = build("er", toy_data, memory_fraction=0.05, replay_every=1)
    for t in range(3):
        run_task(er, t, toy_data, steps=2)
    train = toy_data[1]
    memories = [er.memory(k, train) for k in range(3)]
    for k, mem in enumerate(memories):
        n = len(train[k])
        assert len(mem) == round(0.05 * n) and len(set(mem.tolist())) == len(mem)
        assert 0 <= int(mem.min()) and int(mem.max()) < n
    assert memories[0].tolist() != memories[2].tolist()[: len(memories[0])]  # each task draws its own
    # the memory is a function of checkpointed state: a fresh method loading the state has the same
    fresh = build("er", toy_data, memory_fraction=0.05, replay_every=1)
    with pytest.raises(BenchError):
        fresh.memory(0, train)
    fresh.load_state_dict(er.state_dict())
    assert all(torch.equal(fresh.memory(k, train), memories[k]) for k in range(3))


def test_er_replays_old_task_memory_every_k_steps(toy_data):
    er = build("er", toy_data, memory_fraction=0.1, replay_every=3)
    for t in range(2):
        run_task(er, t, toy_data, steps=2)
    train = toy_data[1]
    ctx = begin(er, 2, toy_data).at(Stage())
    drawn = []  # (task, indices) of every batch taken from an earlier task's training split
    for k, split in enumerate(train[:2]):
        split.batch = (lambda k, original: lambda idx: drawn.append((k, idx.clone())) or original(idx))(k, split.batch)
    calls = []
    forward = er.forward
    er.forward = lambda batch, t: calls.append(t) or forward(batch, t)
    try:
        batches = train[2].batches(16, torch.Generator().manual_seed(0))
        for step in range(9):
            before = len(calls)
            er.loss(next(batches), 2, ctx).backward()
            er.after_step(ctx)
            replayed = calls[before + 1:]
            assert len(replayed) == (1 if (step + 1) % 3 == 0 else 0), (step, calls)
            assert all(k < 2 for k in replayed)
    finally:
        for split in train[:2]:
            del split.batch
    assert len(drawn) == 3
    for k, idx in drawn:
        assert set(idx.tolist()) <= set(er.memory(k, train).tolist())
        assert len(idx) == min(16, len(er.memory(k, train)))
    # replay trains the replayed task's head
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for k, _ in drawn for p in er.heads[k].parameters())


# -- LwF ---------------------------------------------------------------------------------------

def test_lwf_targets_come_from_the_model_frozen_at_the_end_of_the_previous_task(toy_data):
    lwf = build("lwf", toy_data)
    run_task(lwf, 0, toy_data)
    snapshot = copy.deepcopy(lwf.net).eval()
    ctx = begin(lwf, 1, toy_data)
    batch = toy_data[1][1].batch(torch.arange(16))
    targets = lwf.distillation_targets(batch, 1)
    assert len(targets) == 1
    with torch.no_grad():
        expected = snapshot["heads"][0](snapshot["backbone"](batch))
    torch.testing.assert_close(targets[0], expected)
    train_steps(lwf, ctx, steps=3, lr=0.1)  # the live model moves ...
    with torch.no_grad():
        lwf.net.eval()
        live = lwf.heads[0](lwf.backbone(batch))
    assert not torch.allclose(live, expected, atol=1e-4)
    torch.testing.assert_close(lwf.distillation_targets(batch, 1)[0], expected)  # ... the targets do not
    lwf.end_task(ctx)
    assert lwf.teacher is None and set(lwf.state_dict()) == set(snapshot.state_dict())


def test_lwf_distillation_pulls_old_heads_toward_the_frozen_outputs():
    from methods.lwf import distillation
    teacher = torch.randn(8, 5)
    student = teacher.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(distillation(student, teacher, 2.0), student)
    assert float(grad.abs().max()) < 1e-6  # at the target: a minimum
    moved = (teacher + torch.randn(8, 5)).requires_grad_(True)
    assert float(distillation(moved, teacher, 2.0).detach()) > float(distillation(teacher, teacher, 2.0))
    # a one-output (choice-scoring) head is distilled as its sigmoid
    z, zbar = torch.randn(8, 1), torch.randn(8, 1)
    p = torch.sigmoid(zbar / 2)
    bce = -(p * torch.nn.functional.logsigmoid(z / 2) + (1 - p) * torch.nn.functional.logsigmoid(-z / 2)).mean()
    torch.testing.assert_close(distillation(z, zbar, 2.0), bce)


# -- freeze bottom k ---------------------------------------------------------------------------

def test_freeze_bottom_k_keeps_bottom_blocks_and_embeddings_bit_identical(run, tmp_path):
    run("freeze_bottom_k", out=tmp_path / "r", steps=4, sets=["lr=1e-2"])
    state = load_tensors(next((tmp_path / "r" / "runs").iterdir()) / "checkpoint.pt")["method"]
    initial = BACKBONES.get("toy")().state_dict()
    trained = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    bottom = [k for k in initial if ".layer.0." in k or "embeddings" in k or k.startswith("visual_proj")]
    top = [k for k in initial if ".layer.1." in k]
    assert bottom and top
    # a checkpoint holds the tensors that differ from the model as built (bench/runner.py)
    assert not [k for k in bottom if k in trained]
    assert all(not torch.equal(trained[k], initial[k]) for k in top)


def test_freeze_bottom_k_default_follows_climbs_three_quarters():
    from methods.freeze_bottom_k import FreezeBottomK, FreezeBottomKHParams

    def blocks(n, **hp):
        return FreezeBottomK.frozen_blocks(SimpleNamespace(backbone=SimpleNamespace(layers=[None] * n),
                                                           hp=FreezeBottomKHParams(**hp)))
    assert (blocks(12), blocks(6), blocks(2)) == (9, 4, 1)
    assert blocks(6, k=2) == 2
    with pytest.raises(BenchError):
        blocks(6, k=7)


# -- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,sets", [("ewc", []), ("er", ["er.replay_every=1", "er.memory_fraction=0.05"]),
                                         ("derpp", ["derpp.buffer_size=40"]), ("er_ace", ["er_ace.buffer_size=40"])])
def test_resume_after_kill_matches_uninterrupted(run, tmp_path, monkeypatch, method, sets):
    """Killed as the third task starts: the Fisher/anchor (EWC), memory seeds (ER) and reservoirs
    (DER++, ER-ACE) of tasks 0-1 must come back from the checkpoint for tasks 2-3 to match."""
    full = run(method, out=tmp_path / "full", sets=sets)
    kill_before_task(run, tmp_path / "killed", method, 2, monkeypatch, sets=sets)
    cls, begun = METHODS.get(method), []
    begin_task = cls.begin_task
    monkeypatch.setattr(cls, "begin_task", lambda self, ctx: begun.append(ctx.task) or begin_task(self, ctx))
    resumed = run(method, out=tmp_path / "killed", sets=sets)
    assert begun == [2, 3]  # resumed from the checkpoint, not started over
    assert resumed["matrix"] == full["matrix"]
    # toy scores sit near chance, so compare the trained weights themselves
    assert same_tensors(final_weights(tmp_path / "killed", resumed), final_weights(tmp_path / "full", full))
