"""ScaLearn (4 variants) and ATLAS on the toy backbone: what each trains, how it composes the
adapters, and that earlier tasks never change."""
from functools import cache

import pytest
import torch

from bench.adapters import adapter_set
from bench.config import resolve
from bench.data import load_split
from bench.method import n_params, task_loss
from bench.registry import METHODS, TASKS
from bench.runner import execute
from bench.store import load_tensors, runs_dir
from methods.atlas import adapter_weight, orthogonality
from conftest import ToyBackbone, training

SEQUENCE = ["vqa_color", "text_negation", "digits", "vqa_shape"]  # the default: vl, text-only, image-only, vl
D, REDUCTION = 32, 16  # toy width, adapter reduction


def build(method: str, seed: int = 0):
    torch.manual_seed(seed)
    backbone = ToyBackbone()
    m = METHODS.get(method)(backbone, [TASKS.get(n)() for n in SEQUENCE])
    m.setup()
    return m


def randomise_adapters(m):
    """Trained-looking adapters (the up-projections start at zero, which would hide everything)."""
    with torch.no_grad():
        for p in m.adapters.parameters():
            p.normal_(0, 0.3)


def run_with_snapshots(method, out, cache_dir):
    """Run on the toy default sequence; returns metrics and the method state saved after each task."""
    cfg = resolve(method, METHODS.get(method), [], sequence="default", backbone="toy", seed=0, quick=True)
    ckpt = runs_dir(out) / cfg.run_id / "checkpoint.pt"
    snapshots = []
    metrics = execute(cfg, out, cache_dir=cache_dir, log=lambda *_: snapshots.append(load_tensors(ckpt)["method"]))
    return metrics, snapshots


@cache
def n_sites() -> int:
    return 2 * len(ToyBackbone().layers)  # after attention and after FFN of every block


@cache
def adapter_params() -> int:
    return n_params(adapter_set(n_sites(), D, REDUCTION).parameters())
OMEGA = {  # for S sites, N sources, width d: the paper's parameter counts
    "scalearn": lambda S, N: S * N * D,
    "scalearn_uniform": lambda S, N: S * N,
    "scalearn_pp": lambda S, N: N * D,
    "scalearn_uniform_pp": lambda S, N: N,
}


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, cache_dir):
    return run_with_snapshots("adapter", tmp_path_factory.mktemp("adapter"), cache_dir)[0]


@pytest.mark.parametrize("method", sorted(OMEGA))
def test_scalearn_scaling_stage_trains_only_the_coefficients(method, tmp_path, cache_dir, adapter_run):
    m, snapshots = run_with_snapshots(method, tmp_path, cache_dir)
    S, T = n_sites(), len(m["tasks"])
    stages = {(s["task"], s["stage"]): s for s in m["stages"]}
    assert sorted(stages) == sorted((t, name) for t in range(T) for name in ("adapter", "scaling"))
    omegas = [OMEGA[method](S, t + 1) for t in range(T)]
    for t in range(T):
        head = stages[t, "adapter"]["trainable"] - adapter_params()  # stage 1 = adapter t + head t
        assert head > 0
        assert stages[t, "scaling"]["trainable"] == head + omegas[t]  # stage 2 = head t + its coefficients, nothing else
    # cost accounting: stored = the `adapter` method's + every task's coefficients; inference of
    # the last task runs all T adapters and its coefficients
    assert m["params"]["stored"] == adapter_run["params"]["stored"] + sum(omegas)
    last_head = stages[T - 1, "adapter"]["trainable"] - adapter_params()
    backbone = adapter_run["params"]["stored"] - sum(s["trainable"] for s in adapter_run["stages"])
    assert m["params"]["inference"] == backbone + last_head + T * adapter_params() + omegas[-1]
    # every earlier adapter, coefficient and head is frozen once its task is done: zero forgetting
    final = snapshots[-1]
    for t, snap in enumerate(snapshots[:-1]):
        for key, value in snap.items():
            if key.startswith((f"adapters.{t}.", f"scalings.{t}.", f"heads.{t}.")):
                assert torch.equal(value, final[key]), key
        assert (final[f"scalings.{t}.omega"] - 2 / (t + 1)).abs().max() > 0.005  # w was learned
    A = m["matrix"]
    assert all(A[T - 1][j] == A[j][j] for j in range(T))


@pytest.mark.parametrize("method", sorted(OMEGA))
def test_scalearn_init_and_linear_unnormalised_scaling(method):
    m = build(method)
    for t, scaling in enumerate(m.scalings):
        omega = scaling.omega.detach()
        assert omega.numel() == OMEGA[method](n_sites(), t + 1)
        assert abs(omega.mean().item() - 2 / (t + 1)) < 0.002
        if omega.numel() > 10:
            assert 0.0005 < omega.std().item() < 0.002
    randomise_adapters(m)
    m.net.eval()
    t, h = 3, torch.randn(2, 5, D)
    training(m, t, "scaling")
    outs = [m.adapters[n][1](h) for n in range(t + 1)]
    base = m.injector.fn(1, h)
    # no softmax: the init sums to ~2 over the sources, and the output is linear in w
    assert torch.allclose(m.scalings[t].omega.detach().sum(1), torch.full((), 2.0), atol=0.01)
    assert torch.allclose(base, h + sum(2 / (t + 1) * a for a in outs), atol=0.02)
    with torch.no_grad():
        m.scalings[t].omega.mul_(3)
    assert torch.allclose(m.injector.fn(1, h) - h, 3 * (base - h), atol=1e-5)
    with torch.no_grad():
        m.scalings[t].omega.zero_()
        m.scalings[t].omega[:, 0] = 1.0
    assert torch.allclose(m.injector.fn(1, h), h + outs[0], atol=1e-6)  # w = (1, 0, 0, 0): adapter 0 alone


def test_scalearn_stage1_is_the_plain_adapter():
    m = build("scalearn")
    randomise_adapters(m)
    ctx = training(m, 2, "adapter")
    h = torch.randn(2, 5, D)
    assert torch.equal(m.injector.fn(0, h), h + m.adapters[2][0](h))
    assert {id(p) for g in m.trainable_parameters(2, ctx) for p in g["params"]} == \
        {id(p) for p in [*m.heads[2].parameters(), *m.adapters[2].parameters()]}


def test_atlas_weights_lie_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        q, k = torch.randn(D, generator=g) * scale, torch.randn(D, generator=g)
        h = torch.randn(8, 6, D, generator=g) * scale
        w = adapter_weight(q, k, h, torch.randn(8, 6, D, generator=g) * scale)
        assert w.shape == (8,) and bool(((w >= 0) & (w <= 1)).all())
    q, silent = torch.randn(D, generator=g), torch.zeros(3, 4, D)
    same = q.expand(3, 4, D)  # every token equal to the query: the description is the query
    assert torch.allclose(adapter_weight(q, 5 * q, same, silent), torch.ones(3))   # key aligned with the description
    assert torch.allclose(adapter_weight(q, -q, silent, same), torch.zeros(3), atol=1e-6)
    m = build("atlas")
    randomise_adapters(m)
    h = torch.randn(4, 7, D)
    with torch.no_grad():
        ws = m.weights(3, 2, h, [m.adapters[n][2](h) for n in range(4)])
    assert len(ws) == 4 and all(bool(((w >= 0) & (w <= 1)).all()) for w in ws)
    assert len({round(float(w[0]), 6) for w in ws}) > 1  # the weights differ per adapter


def test_atlas_orthogonality_penalty(cache_dir):
    assert orthogonality(torch.eye(4)[:2], torch.eye(4)[2:]) == 0
    assert orthogonality(torch.eye(4)[:2], torch.eye(4)[1:3]) > 0
    assert orthogonality(torch.zeros(2, 4), torch.eye(4)) == 0
    m = build("atlas")
    basis = torch.linalg.qr(torch.randn(D, D))[0].T  # orthonormal rows
    r = D // REDUCTION
    with torch.no_grad():
        for i in range(n_sites()):
            m.adapters[0][i].down.weight.copy_(basis[:r])
            m.adapters[1][i].down.weight.copy_(basis[r:2 * r] * 3)
            m.keys[0].weight[i] = basis[10]
            m.keys[1].weight[i] = basis[11]
            m.experience[1].weight[i, 0] = basis[12]
            m.queries[1].weight[i] = basis[13]
    assert m.ortho_penalty(1).abs().item() < 1e-10
    with torch.no_grad():
        m.adapters[1][0].down.weight.add_(0.1 * basis[:r])
    assert m.ortho_penalty(1).item() > 0
    with torch.no_grad():
        m.adapters[1][0].down.weight.copy_(basis[r:2 * r])
        m.keys[1].weight[3] = basis[10] + basis[11]
    assert m.ortho_penalty(1).item() == pytest.approx(0.5, rel=1e-4)  # cos^2 = 1/2 at one site
    # and it enters the loss (weight 0.1) only while expanding, from task 1 on
    split = load_split(m.backbone, m.tasks[1], "train", cache_dir, limit=16, seed=0, val_size=8)
    batch = next(split.batches(8))
    m.net.eval()
    for stage, weight in (("experience", 0.0), ("expansion", 0.1)):
        ctx = training(m, 1, stage)
        plain = task_loss(m.forward(batch, 1), batch["label"], m.tasks[1])
        assert m.loss(batch, 1, ctx).item() == pytest.approx(plain.item() + weight * 0.5, rel=1e-4)


def test_atlas_two_stages_mixed_sequence_and_frozen_past(tmp_path, cache_dir, adapter_run):
    m, snapshots = run_with_snapshots("atlas", tmp_path, cache_dir)
    S, T = n_sites(), len(m["tasks"])
    stages = [(s["task"], s["stage"]) for s in m["stages"]]
    assert stages == [(0, "expansion")] + [(t, s) for t in range(1, T) for s in ("experience", "expansion")]
    by = {(s["task"], s["stage"]): s["trainable"] for s in m["stages"]}
    for t in range(T):
        head = by[t, "expansion"] - adapter_params() - 2 * S * D  # stage 2: adapter t, its key and query, head t
        assert head > 0
        if t:
            assert by[t, "experience"] == head + S * t * D  # stage 1: queries for the t earlier adapters, head t
    A = m["matrix"]
    assert all(v is not None and v >= 0 for i, row in enumerate(A) for v in row[: i + 1])
    assert all(A[T - 1][j] == A[j][j] for j in range(T))
    final = snapshots[-1]
    for t, snap in enumerate(snapshots[:-1]):
        for key, value in snap.items():
            if key.startswith((f"adapters.{t}.", f"adapter_keys.{t}.", f"queries.{t}.", f"experience.{t}.", f"heads.{t}.")):
                assert torch.equal(value, final[key]), key
        if t:  # stage 1 learned the queries for the earlier adapters
            key, before = f"experience.{t}.weight", snapshots[t - 1]  # absent before: as built, untrained
            assert key in snap and (key not in before or not torch.equal(snap[key], before[key]))
    assert m["params"]["stored"] > adapter_run["params"]["stored"]
