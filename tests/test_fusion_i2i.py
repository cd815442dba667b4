"""AdapterFusion, Pfeiffer adapters and I2I: the fusion layer's mechanism, I2I's distillation and
that its fusion leaves no trace in what is stored or used at inference."""
import pytest
import torch
from torch import nn

import bench.runner
from bench.fusion import Fusion, fusion_set, fusion_set_params
from bench.method import n_params
from bench.registry import METHODS
from bench.store import load_tensors
from bench.task import Task
from conftest import ToyBackbone, run_method, training

TEXTS = ["is there a red circle?", "what shape is blue?", "a green triangle", "the yellow square is big"]


def build(method: str, n_tasks: int = 3):
    tasks = [Task(f"t{k}", "text", ["a", "b", "c"]) for k in range(n_tasks)]
    m = METHODS.get(method)(ToyBackbone(), tasks)
    m.setup()
    m.net.eval()  # no dropout: outputs are compared exactly
    return m


def batch(m):
    return dict(m.backbone.encode_texts(TEXTS))


def randomise_adapters(m):
    torch.manual_seed(1)
    for bank in m.adapters:
        for b in bank:
            nn.init.normal_(b.down.weight, std=0.3)
            nn.init.normal_(b.up.weight, std=0.3)


# -- the fusion layer ---------------------------------------------------------------------------
def test_value_starts_as_identity_and_regulariser_is_zero_only_there():
    f = Fusion(16)
    assert torch.equal(f.value.weight, torch.eye(16)) and not f.value.bias.any()
    assert f.value_penalty().item() == 0.0
    with torch.no_grad():
        f.value.weight.add_(0.05 * torch.randn(16, 16))
    assert f.value_penalty().item() == pytest.approx(((torch.eye(16) - f.value.weight) ** 2).sum().item())
    assert f.value_penalty().item() > 0
    assert fusion_set_params(3, 16) == n_params(fusion_set(3, 16).parameters())


def test_fusion_weights_adapters_by_attention_and_sums_values():
    f, h = Fusion(8), torch.randn(2, 5, 8)
    outs = [torch.randn(2, 5, 8) for _ in range(3)]
    w = f.attention(h, torch.stack(outs, -2))
    assert torch.allclose(w.sum(-1), torch.ones(2, 5))
    expected = h + sum(w[..., n, None] * outs[n] for n in range(3))  # W_V = I at init
    assert torch.allclose(f(h, outs), expected, atol=1e-6)


def test_fused_output_equals_the_dominant_adapters_output():
    """Force the scores so adapter 1 wins everywhere: q = c e_0 (W_Q = 0), k_n = a_n(h) (W_K = I),
    and adapter 1's output is +1 along e_0 while adapter 0's is -1. With W_V = I the fused model
    must then compute exactly what adapter 1 alone computes."""
    m = build("adapter_fusion")
    randomise_adapters(m)
    x = batch(m)
    training(m, 1, "adapter")
    alone = m.forward(x, 1)
    training(m, 1, "fusion")
    assert not torch.allclose(m.forward(x, 1), alone, atol=1e-3)  # an unforced fusion mixes adapters
    with torch.no_grad():
        for f in m.fusions["1"]:
            f.query.weight.zero_()
            f.query.bias.zero_()
            f.query.bias[0] = 50.0
            f.key.weight.copy_(torch.eye(f.key.weight.shape[0]))
        for bank in m.adapters:
            for b in bank:
                b.up.weight[0].zero_()
        for b0, b1 in zip(m.adapters[0], m.adapters[1]):
            b0.up.bias[0], b1.up.bias[0] = -1.0, 1.0
        training(m, 1, "adapter")
        alone = m.forward(x, 1)
        training(m, 1, "fusion")
        assert torch.allclose(m.forward(x, 1), alone, atol=1e-5)


def test_fusion_loss_adds_the_value_regulariser():
    m = build("adapter_fusion")
    x = {**batch(m), "label": torch.tensor([0, 1, 2, 0])}
    ctx = training(m, 1, "fusion")
    plain = nn.functional.cross_entropy(m.forward(x, 1), x["label"])
    assert m.loss(x, 1, ctx).item() == pytest.approx(plain.item())  # W_V = I: no penalty yet
    with torch.no_grad():
        m.fusions["1"][0].value.weight.add_(0.1)
    plain = nn.functional.cross_entropy(m.forward(x, 1), x["label"])
    penalty = m.hp.value_reg * m.fusions["1"][0].value_penalty()
    assert penalty.item() > 0
    assert m.loss(x, 1, ctx).item() == pytest.approx((plain + penalty).item(), rel=1e-5)


@pytest.mark.parametrize("method", ["adapter", "pfeiffer", "adapter_fusion", "i2i"])
def test_inference_params_are_the_modules_a_forward_pass_uses(method):
    """`task_modules(t)` must list exactly the non-backbone parameters task t's prediction touches."""
    m = build(method)
    for t in range(len(m.tasks)):
        for p in m.net.parameters():
            p.requires_grad_(True)
            p.grad = None
        m.activate(t, None)
        m.forward(batch(m), t).sum().backward()
        used = {id(p) for name, mod in m.net.items() if name != "backbone" for p in mod.parameters() if p.grad is not None}
        listed = {id(p) for mod in m.task_modules(t) for p in mod.parameters()}
        assert used == listed, f"task {t}"


def test_pfeiffer_adapts_only_after_the_ffn():
    houlsby, pfeiffer = build("adapter"), build("pfeiffer")
    n_layers = len(pfeiffer.backbone.layers)
    assert len(pfeiffer.injector) == n_layers and len(houlsby.injector) == 2 * n_layers
    ffn = {id(pfeiffer.backbone.adapter_sites(layer)["ffn"]) for layer in pfeiffer.backbone.layers}
    assert {id(mod) for mod in pfeiffer.injector.modules} == ffn


# -- I2I through the real runner ----------------------------------------------------------------
def kd_loss(method, x, t):
    method.net.eval()
    with torch.no_grad():
        loss = method.distillation_loss(x, t).item()
    method.net.train()
    return loss


@pytest.fixture(scope="module")
def i2i_runs(tmp_path_factory, cache_dir):
    """adapter, i2i (with a spy on each training stage) and i2i_light on the toy backbone."""
    out = tmp_path_factory.mktemp("i2i")
    real_fit, seen = bench.runner.fit, {"kd": [], "keys": []}

    def spy(method, ctx, train, val, **kw):
        t = next(iter(train))
        seen["keys"].append((t, ctx.stage.name, set(method.state_dict())))
        if ctx.stage.name != "initialize":
            return real_fit(method, ctx, train, val, **kw)
        x = next(train[t].batches(64))
        before = kd_loss(method, x, t)
        stats = real_fit(method, ctx, train, val, **kw)
        seen["kd"].append((t, before, kd_loss(method, x, t)))
        return stats

    runs = {"adapter": run_method("adapter", out, cache_dir)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.runner, "fit", spy)
        runs["i2i"] = run_method("i2i", out, cache_dir)
    runs["i2i_light"] = run_method("i2i_light", out, cache_dir)
    checkpoints = {name: load_tensors(out / "runs" / r["run_id"] / "checkpoint.pt")["method"] for name, r in runs.items()}
    return runs, seen, checkpoints


def test_initialize_distils_the_fusion_into_the_new_adapter(i2i_runs):
    _, seen, _ = i2i_runs
    assert [t for t, *_ in seen["kd"]] == [1, 2, 3]
    for t, before, after in seen["kd"]:
        assert before > 0, "the improvised teacher should differ from a fresh (identity) adapter"
        assert after < before, f"task {t}: KD loss {before:.3g} -> {after:.3g}"


def test_fusion_never_enters_the_state_or_the_checkpoint(i2i_runs):
    runs, seen, ckpt = i2i_runs
    assert len({frozenset(k) for _, _, k in seen["keys"]}) == 1, "state_dict keys changed between stages"
    assert set(ckpt["i2i"]) == set(ckpt["adapter"])
    assert all(ckpt["i2i"][k].shape == ckpt["adapter"][k].shape for k in ckpt["adapter"])


def test_i2i_costs_adapter_at_inference_and_reports_its_training_extra(i2i_runs):
    runs, _, _ = i2i_runs
    adapter, i2i = runs["adapter"]["params"], runs["i2i"]["params"]
    assert i2i["inference"] == adapter["inference"] and i2i["stored"] == adapter["stored"]
    stages = runs["i2i"]["stages"]
    assert [s["stage"] for s in stages if s["task"] == 0] == ["train"]
    for t in (1, 2, 3):
        by = {s["stage"]: s for s in stages if s["task"] == t}
        assert list(by) == ["improvise", "initialize", "train"]
        head = by["train"]["trainable"] - by["initialize"]["trainable"]  # train = adapter + head
        assert by["improvise"]["trainable"] == head + i2i["transient_per_task"][t] > by["train"]["trainable"]
        assert all(s["seconds"] > 0 for s in by.values())


def test_i2i_light_improvises_on_the_configured_fraction(i2i_runs):
    runs, _, _ = i2i_runs
    fraction = METHODS.get("i2i_light").HParams().improvise_data
    assert 0 < fraction < 1 and runs["i2i_light"]["provenance"]["config"]["hparams"]["improvise_data"] == fraction
    for name in ("i2i", "i2i_light"):
        f = runs[name]["provenance"]["config"]["hparams"]["improvise_data"]  # as the sequence file sets it
        for t in (1, 2, 3):
            by = {s["stage"]: s for s in runs[name]["stages"] if s["task"] == t}
            for stage in ("improvise", "initialize"):
                assert by[stage]["examples"] == max(1, round(f * by["train"]["examples"]))
                assert by[stage]["steps"] == max(1, round(f * by["train"]["steps"]))
