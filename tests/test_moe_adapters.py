"""MoE-Adapters (methods/moe_adapters.py) on the toy backbone: top-k gates that sum to one per
token, and earlier tasks' predictions that later tasks' experts leave bit-identical."""
import torch

from bench.method import Stage
from conftest import training
from methods.moe_adapters import top_k_gates
from test_baselines import build, toy_data  # noqa: F401  (toy_data is a fixture)


def test_top_k_gates_are_a_softmax_over_each_tokens_k_best_scores():
    torch.manual_seed(0)
    scores = torch.randn(2, 5, 6)
    gates = top_k_gates(scores, 2)
    for token, g in zip(scores.reshape(-1, 6), gates.reshape(-1, 6)):  # by hand, token by token
        best = sorted(range(6), key=lambda n: -float(token[n]))[:2]
        e = [float(token[n].exp()) for n in best]
        want = torch.zeros(6)
        for n, v in zip(best, e):
            want[n] = v / sum(e)
        assert torch.allclose(g, want)
    assert torch.allclose(gates.sum(-1), torch.ones(2, 5)) and (gates > 0).sum(-1).eq(2).all()
    assert torch.equal(top_k_gates(scores[..., :1], 2), torch.ones(2, 5, 1))  # fewer experts than k: all of them


def test_every_token_at_every_site_mixes_top_k_experts_with_weights_summing_to_one(toy_data, monkeypatch):
    method = build("moe_adapters", toy_data)
    seen = []
    import methods.moe_adapters as moe
    real = moe.top_k_gates
    monkeypatch.setattr(moe, "top_k_gates", lambda s, k: seen.append(real(s, k)) or seen[-1])
    for t in (0, 2):
        training(method, t, train_data=toy_data[1])
        method.forward(toy_data[1][t].batch(torch.arange(4)), t)
    n_sites = len(method.injector)
    assert len(seen) == 2 * n_sites and [g.shape[-1] for g in seen] == [2] * n_sites + [6] * n_sites
    for g in seen:
        assert torch.allclose(g.sum(-1), torch.ones(g.shape[:-1])) and (g > 0).sum(-1).eq(2).all()


def test_later_tasks_experts_leave_earlier_predictions_bit_identical(toy_data):
    method = build("moe_adapters", toy_data)
    probe = [split.batch(torch.arange(16)) for split in toy_data[1]]
    before = {}
    for t in range(3):
        ctx = training(method, t, train_data=toy_data[1])
        params = [p for g in method.trainable_parameters(t, ctx.at(Stage())) for p in g["params"]]
        opt = torch.optim.SGD(params, lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            method.loss(toy_data[1][t].batch(torch.arange(16, 48)), t, ctx).backward()
            opt.step()
        method.net.eval()
        with torch.no_grad():
            for j in range(t + 1):
                method.activate(j, None)
                out = method.predict(probe[j], j)
                if j in before:
                    assert torch.equal(out, before[j]), f"task {j}'s predictions changed while training task {t}"
                before[j] = out
        method.net.train()
    # the new experts trained (their up-projections start at zero), so the check above had something to miss
    assert any(expert[site].up.weight.abs().sum() > 0 for expert in method.experts[2] for site in range(len(method.injector)))
