"""The LoRA family through PEFT (bench/lora.py, methods/lora.py, olora.py, inflora.py): PEFT wraps
every backbone, `lora` forgets nothing, O-LoRA's penalty is the paper's, InfLoRA's update stays in
its designed subspace."""
import numpy as np
import pytest
import torch

from bench.backbones import build_backbone
from bench.errors import BenchError
from bench.lora import TaskLoRAs
from bench.method import Method, Stage
from conftest import run_method
from methods.inflora import InfLoRAHParams, grow
from methods.olora import OLoRAHParams
from test_baselines import begin, build, toy_data, train_steps  # noqa: F401  (toy_data: module fixture)
from tiny_models import tiny  # noqa: F401  (session fixture)


def train(method, t: int, toy_data, steps: int = 3):  # noqa: F811
    """Begin, train (SGD through the method's loss and parameters, its task activated) and end task t."""
    ctx = begin(method, t, toy_data)
    method.activate(t, ctx.at(Stage()))
    train_steps(method, ctx, steps)
    method.end_task(ctx)


def predictions(method, t: int, batch: dict) -> torch.Tensor:
    method.activate(t, None)
    method.net.eval()
    with torch.no_grad():
        return method.predict(batch, t)


# -- PEFT on every backbone ---------------------------------------------------------------------

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]


@pytest.mark.parametrize("name", ["toy", "vilt", "hf_clip", "open_clip"])
def test_peft_wraps_every_backbone_and_runs_only_the_active_tasks_lora(tiny, name):  # noqa: F811
    b = build_backbone(name if name == "toy" else tiny[name]).eval()
    loras = TaskLoRAs(b, 2, ("q", "v"), r=4, alpha=4)
    names = {id(m): n for n, m in b.named_modules()}
    targets = [names[id(layer)].rsplit(".", 1)[-1] for layer in loras.layers]
    expected = {"open_clip": ["c_fc", "c_proj"], "hf_clip": ["q_proj", "v_proj"]}.get(name, ["query", "value"])
    # two per block, every block of every tower
    assert [sorted(targets[i:i + 2]) for i in range(0, len(targets), 2)] == [sorted(expected)] * len(b.layers)
    assert not any(p.requires_grad for p in b.parameters())
    batch = {**b.encode_texts(["what color is the circle?", "a square"]), "image_feats": b.encode_images(IMAGES)[:, None]}
    base = {k: v.clone() for k, v in b.state_dict().items() if "lora_" not in k}

    def forward():
        torch.manual_seed(0)  # ViLT samples image patches
        return b(batch)
    out = forward()
    with torch.no_grad():
        for w in loras.B(1):
            w.normal_()
    assert torch.equal(forward(), out)  # task 1's LoRA is not active
    loras.activate([1])
    assert not torch.allclose(forward(), out)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in base.items())  # the frozen weights stay bit-identical


@pytest.mark.parametrize("name", ["vilt", "open_clip"])  # hf_clip: tests/test_backbone_methods.py runs every method
def test_inflora_runs_on_vilt_and_open_clip(tmp_path, cache_dir, tiny, name):  # noqa: F811
    m = run_method("inflora", tmp_path / "r", cache_dir, backbone=tiny[name], steps=2,
                   sets=["train_cap=48", "test_cap=32", "val_size=16"])
    assert all(v is not None for v in m["matrix"][-1])


# -- lora ---------------------------------------------------------------------------------------

def test_lora_earlier_tasks_predict_bit_identically_after_later_tasks(toy_data):  # noqa: F811
    lora = build("lora", toy_data)
    first = toy_data[1][0].batch(torch.arange(16))
    train(lora, 0, toy_data)
    before = predictions(lora, 0, first)
    for t in (1, 2):
        train(lora, t, toy_data)
        assert float(sum(b.detach().abs().sum() for b in lora.loras.B(t))) > 0  # later LoRAs did train
    assert torch.equal(predictions(lora, 0, first), before)


def test_lora_run_has_zero_forgetting(run):
    A = run("lora", reuse_scores=False, steps=6, sets=["lr=1e-2"])["matrix"]
    assert all(A[i][j] == A[j][j] for i in range(len(A)) for j in range(i + 1))


@pytest.mark.parametrize("name,per_layer,summed", [("lora", 8 * (32 + 32), False), ("inflora", 10 * (32 + 32), True)])
def test_parameters_count_each_lora_once_and_inference_the_loras_that_run(toy_data, name, per_layer, summed):  # noqa: F811
    method = build(name, toy_data)
    T, n_layers = len(method.tasks), 2 * len(method.backbone.layers)  # two projections per block (toy: d = 32)
    base = sum(p.numel() for k, p in method.backbone.named_parameters() if "lora_" not in k)
    heads = [sum(p.numel() for p in h.parameters()) for h in method.heads]
    assert method.param_report() == {"stored": base + sum(heads) + T * n_layers * per_layer,
                                     "inference": base + (T if summed else 1) * n_layers * per_layer + max(heads)}
    ctx = begin(method, 1, toy_data).at(Stage())
    trained = {id(p): p for g in method.trainable_parameters(1, ctx) for p in g["params"] if p.requires_grad}
    lora = n_layers * (32 * 10 if name == "inflora" else per_layer)  # InfLoRA trains B only
    assert sum(p.numel() for p in trained.values()) == lora + heads[1]


# -- O-LoRA -------------------------------------------------------------------------------------

def set_rows(method, t: int, rows):
    """Task t's lora_A in every layer := rows(r, d)."""
    with torch.no_grad():
        for a in method.loras.A(t):
            a.copy_(rows(*a.shape))


def test_olora_penalty_is_zero_for_orthogonal_subspaces_and_grows_with_overlap(toy_data):  # noqa: F811
    olora = build("olora", toy_data)
    layers, r = len(olora.loras.layers), olora.hp.r
    set_rows(olora, 0, lambda r, d: torch.eye(r, d))                # span{e_0 .. e_r-1}
    set_rows(olora, 1, lambda r, d: torch.eye(r, d).roll(r, 1))     # span{e_r .. e_2r-1}
    assert float(olora.orthogonality(1)) == 0
    values = []
    for c in (0.0, 0.25, 0.5, 1.0):  # row k = c e_k + sqrt(1-c²) e_{r+k}: A_0 A_1^T = c I_r in every layer
        set_rows(olora, 1, lambda r, d: c * torch.eye(r, d) + (1 - c * c) ** 0.5 * torch.eye(r, d).roll(r, 1))
        values.append(float(olora.orthogonality(1)))
        assert values[-1] == pytest.approx(layers * r * c * c, rel=1e-6)
    assert values == sorted(values) and values[0] == 0 < values[1]


def test_olora_penalty_equals_a_bare_loop_and_enters_the_loss(toy_data):  # noqa: F811
    olora = build("olora", toy_data)
    g = torch.Generator().manual_seed(3)
    for t in range(3):
        set_rows(olora, t, lambda r, d: torch.randn(r, d, generator=g))
    expected = 0.0
    for i in range(2):
        for a_i, a_t in zip(olora.loras.A(i), olora.loras.A(2)):
            for j in range(a_i.shape[0]):
                for k in range(a_t.shape[0]):
                    expected += sum(float(a_i[j, n]) * float(a_t[k, n]) for n in range(a_i.shape[1])) ** 2
    assert float(olora.orthogonality(2)) == pytest.approx(expected, rel=1e-5)
    olora.net.eval()
    batch = toy_data[1][2].batch(torch.arange(8))
    ctx = begin(olora, 2, toy_data).at(Stage())
    olora.activate(2, ctx)
    torch.testing.assert_close(olora.loss(batch, 2, ctx), Method.loss(olora, batch, 2, ctx) + 0.5 * olora.orthogonality(2))
    ctx0 = begin(olora, 0, toy_data).at(Stage())
    olora.activate(0, ctx0)  # task 0 has nothing to be orthogonal to: exactly `lora`'s loss (its stage is shared)
    assert torch.equal(olora.loss(batch, 0, ctx0), Method.loss(olora, batch, 0, ctx0))


def test_olora_training_drives_the_new_subspace_away_and_sums_the_loras(toy_data):  # noqa: F811
    olora = build("olora", toy_data, lam1=50.0)
    first = toy_data[1][0].batch(torch.arange(16))
    train(olora, 0, toy_data)
    before = predictions(olora, 0, first)
    set_rows(olora, 1, lambda r, d: olora.loras.A(0)[0].detach()[:r, :d])  # start fully overlapping
    start = float(olora.orthogonality(1))
    train(olora, 1, toy_data, steps=5)
    assert float(olora.orthogonality(1).detach()) < 0.5 * start
    # every LoRA so far runs for task 0 (no task routing): its predictions move with task 1's LoRA
    assert olora.running(0) == [0, 1] and not torch.equal(predictions(olora, 0, first), before)


def test_olora_and_inflora_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="lam1"):
        OLoRAHParams(lam1=-1)
    with pytest.raises(ValueError, match="subset of q,k,v"):
        OLoRAHParams(targets="q,o")
    with pytest.raises(ValueError, match="lamb"):
        InfLoRAHParams(lamb=0.99, lame=0.9)
    with pytest.raises(BenchError, match="bad hyper-parameter of method 'olora': lam1=-1.0"):
        run_method("olora", None, None, sets=["olora.lam1=-1"])


# -- InfLoRA ------------------------------------------------------------------------------------

def test_gpm_growth_keeps_the_threshold_share_of_energy():
    C = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))  # σ² = 16, 9, 4, 1 of 30
    e = torch.eye(4, dtype=torch.float64)
    M = grow(e[:, :0], C, 0.95)  # 25/30 < 0.95 <= 29/30: three directions
    assert torch.allclose(M.abs(), e[:, :3])
    M = grow(e[:, :1], C, 0.8)  # e_0 holds 16/30; + e_1 -> 25/30 >= 0.8
    assert torch.allclose(M.abs(), e[:, :2])
    assert grow(e[:, :2], C, 0.8).shape[1] == 2  # already enough: nothing added


def test_inflora_designs_the_first_down_projection_from_the_top_input_directions(toy_data):  # noqa: F811
    inflora = build("inflora", toy_data)
    layer = inflora.loras.layers[0]
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().flatten(0, -2).double()))
    begin(inflora, 0, toy_data)
    handle.remove()
    X = torch.cat(seen)
    assert len(X) > inflora.hp.samples  # tokens of the first `samples` examples
    eigvals, eigvecs = torch.linalg.eigh(X.T @ X / len(X))
    top = eigvecs[:, eigvals.argsort(descending=True)[:inflora.hp.r]]
    A = inflora.loras.A(0)[0].detach().double() * 3 ** 0.5
    torch.testing.assert_close(A @ A.T, torch.eye(len(A), dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(A.T @ (A @ top), top, atol=1e-4, rtol=0)  # same span as the top eigenvectors


def test_inflora_update_stays_in_its_subspace_orthogonal_to_earlier_inputs(toy_data):  # noqa: F811
    inflora = build("inflora", toy_data)
    train(inflora, 0, toy_data)
    layers = range(len(inflora.loras.layers))
    M = [inflora.basis(i) for i in layers]
    assert all(0 < m.shape[1] < m.shape[0] for m in M)
    for m in M:
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-6, rtol=0)
    ctx = begin(inflora, 1, toy_data)
    A = [a.detach().clone() for a in inflora.loras.A(1)]
    for a, m in zip(A, M):
        assert float((a.double() @ m).abs().max()) < 1e-6 * float(a.abs().max())
    inflora.activate(1, ctx.at(Stage()))
    train_steps(inflora, ctx, steps=4)
    inflora.end_task(ctx)
    assert all(torch.equal(a, b) for a, b in zip(A, inflora.loras.A(1)))  # only B trains
    for i in layers:
        dW = inflora.loras.B(1)[i].detach().double() @ A[i].double()
        assert float(dW.norm()) > 0
        assert float((dW @ M[i]).norm()) <= 1e-6 * float(dW.norm())  # ΔW x = 0 for x in the earlier inputs' span
    assert all(inflora.basis(i).shape[1] >= M[i].shape[1] for i in layers)  # the memory grew with task 1
