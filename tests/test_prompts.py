"""Prompt methods (L2P, DualPrompt, CODA-Prompt) and their one injection mechanism
(bench/prompts.py), on the toy backbone and the tiny ViLT / CLIP models: each test asserts what the
mechanism or the paper says, against values computed independently here."""
import math

import numpy as np
import pytest
import torch

from bench.backbones import build_backbone
from bench.config import resolve
from bench.errors import BenchError
from bench.prompts import PromptInjector
from bench.registry import BACKBONES, METHODS
from test_baselines import begin, build, toy_data, train_steps  # noqa: F401  (toy_data: module fixture)
from tiny_models import tiny  # noqa: F401  (session fixture)

# the toy backbone has 2 blocks: the methods' defaults (blocks 0-4) are rescaled to it
TOY = {"l2p": {}, "dualprompt": {"g_last": 0, "e_first": 1, "e_last": 1, "e_length": 5}, "coda_prompt": {"pool_size": 8, "length": 2}}


def shallow(method: str) -> list[str]:
    """`--set`s that fit a prompt method's defaults to the 2-block tiny backbones (others: none)."""
    return [f"{method}.{k}={v}" for k, v in TOY.get(method, {}).items()]


RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
TEXTS = ["what color is the big circle on the left?", "red"]  # the second is padded in a batch


@pytest.fixture(scope="module")
def backbones(tiny):  # noqa: F811
    out = {"toy": BACKBONES.get("toy")().eval()}
    for name in ("vilt", "hf_clip", "open_clip"):
        out[name] = build_backbone(tiny[name]).eval()
    return out


def batch(b, rows=slice(None)):
    fields = dict(b.encode_texts(TEXTS[rows]))
    fields["image_feats"] = b.encode_images(IMAGES[rows])[:, None]
    torch.manual_seed(0)  # ViLT orders its image patches at random
    return fields


def tokens(injector, n: int, seed: int, batch_size: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, n, d, generator=g).requires_grad_() for d in injector.widths]


@pytest.mark.parametrize("name", ["toy", "vilt", "hf_clip", "open_clip"])
@pytest.mark.parametrize("where", ["input", "prefix"])
def test_prompts_reach_every_tower_and_padding_stays_masked(backbones, name, where):
    """Prompt tokens (L2P: before block 0 through the last; a prefix: in block 1 only) change every
    example's output and get gradients, in every tower; a padded example's output equals its
    output alone (the widened mask shows the prompts, keeps padding masked, keeps causality)."""
    b = backbones[name]
    with torch.no_grad():
        plain = b(batch(b))
    injector = PromptInjector(b)
    ps = tokens(injector, 3, seed=1)
    span = {(k, 0): (p, len(t) - 1) for k, (p, t) in enumerate(zip(ps, injector.towers))} if where == "input" \
        else {(k, 1): (p, 1) for k, p in enumerate(ps)}
    with injector.use(span):
        out = b(batch(b))
    with injector.use({site: (p[1:], last) for site, (p, last) in span.items()}), torch.no_grad():
        alone = b(batch(b, slice(1, 2)))
    out.sum().backward()
    with torch.no_grad():  # (the same grad mode: nn.MultiheadAttention has a no-grad fast path)
        assert torch.equal(b(batch(b)), plain)  # after `use`, nothing of the prompts is left
    assert ((out.detach() - plain).abs().amax(1) > 1e-4).all()
    torch.testing.assert_close(out[1:].detach(), alone, atol=2e-5, rtol=1e-4)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ps)


def test_a_prefix_is_extra_keys_and_values_of_its_block(backbones):
    """Hand-computed BERT block (toy backbone, post-LN): with prefix tokens p at block 1,
    attention over keys [W_k p; W_k h] and values [W_v p; W_v h], padding masked, then the
    block's output sublayers."""
    b = backbones["toy"]
    fields = batch(b)
    embeds, mask, types = b.token_inputs(fields)
    h0 = b.encoder.embeddings(inputs_embeds=embeds, token_type_ids=types)
    layer0, layer1 = b.layers
    injector = PromptInjector(b)
    p = tokens(injector, 4, seed=2)[0].detach()
    with torch.no_grad(), injector.use({(0, 1): (p, 1)}):
        got = b._blocks(h0, mask, 0, 2)
    with torch.no_grad():
        h = b._blocks(h0, mask, 0, 1)  # block 0 has no prompt
        att = layer1.attention.self
        heads, dh = att.num_attention_heads, att.attention_head_size
        split = lambda x: x.view(x.shape[0], x.shape[1], heads, dh).transpose(1, 2)  # noqa: E731
        q, k, v = split(att.query(h)), split(att.key(torch.cat([p, h], 1))), split(att.value(torch.cat([p, h], 1)))
        visible = torch.cat([torch.ones(2, 4, dtype=torch.bool), mask.bool()], 1)
        want = torch.empty_like(h)
        for i in range(2):  # a bare loop over examples, heads and queries
            ctx = torch.empty(h.shape[1], heads * dh)
            for a in range(heads):
                for j in range(h.shape[1]):
                    s = [float(q[i, a, j] @ k[i, a, m]) / math.sqrt(dh) if visible[i, m] else -math.inf for m in range(k.shape[2])]
                    w = torch.tensor(s).softmax(0)
                    ctx[j, a * dh:(a + 1) * dh] = (w[:, None] * v[i, a]).sum(0)
            mid = layer1.attention.output(ctx[None], h[i:i + 1])
            want[i] = layer1.output(layer1.intermediate(mid), mid)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# -- L2P -----------------------------------------------------------------------------------------
def queries(method, toy_data, t: int, n: int = 32):  # noqa: F811
    fields = toy_data[1][t].batch(torch.arange(n))
    return fields, method.query(fields)


def test_l2p_prepends_the_prompts_of_the_nearest_keys(toy_data):  # noqa: F811
    m = build("l2p", toy_data, pool_size=6, length=2, top_k=3)
    _, q = queries(m, toy_data, 0)
    with torch.no_grad():
        spans, match = m.prompts(q, 0, True)
    (tokens_, last), = spans.values()
    keys, pool = m.pool.keys.detach(), m.pool.prompts[0].detach()
    total = 0.0
    for i in range(len(q)):  # bare loop: cosine by hand, the 3 largest
        cos = [float(q[i] @ keys[j] / (q[i].norm() * keys[j].norm())) for j in range(6)]
        top = sorted(range(6), key=lambda j: -cos[j])[:3]
        torch.testing.assert_close(tokens_[i].detach(), torch.cat([pool[j] for j in top]))
        total += sum(1 - cos[j] for j in top)
    assert last == len(m.backbone.layers) - 1
    assert math.isclose(float(match), 0.1 * total / len(q), rel_tol=1e-5)


def test_l2p_surrogate_loss_pulls_the_selected_keys_toward_the_queries(toy_data):  # noqa: F811
    m = build("l2p", toy_data, pool_size=6, length=2, top_k=2, match_weight=1.0)
    _, q = queries(m, toy_data, 0)
    before = m.select(q)[1].mean()
    ctx = begin(m, 0, toy_data)
    train_steps(m, ctx, steps=5, lr=2.0)
    after = m.select(q)[1].mean()
    assert after > before + 0.1, (before, after)


# -- DualPrompt ----------------------------------------------------------------------------------
def test_dualprompt_trains_task_t_with_its_e_prompt_and_predicts_with_the_best_matching_key(toy_data):  # noqa: F811
    m = build("dualprompt", toy_data, **TOY["dualprompt"], match_weight=5.0)
    for t in (0, 1):
        ctx = begin(m, t, toy_data)
        e_before = [[p.detach().clone() for p in m.prompt_modules["e"][k]] for k in range(3)]
        train_steps(m, ctx, steps=8, lr=1.0)
        for k in range(3):  # only task t's E-prompt trains
            assert all(torch.equal(a, p) != (k == t) for a, p in zip(e_before[k], m.prompt_modules["e"][k]))
    keys = torch.stack([k.detach() for k in m.prompt_modules["key"][:2]])
    for t in (0, 1):
        fields, q = queries(m, toy_data, t)
        cos = torch.tensor([[float(x @ k / (x.norm() * k.norm())) for k in keys] for x in q])
        want = cos.argmax(1)  # the best matching key, by hand
        assert torch.equal(m.select(q), want)
        assert (want == t).float().mean() >= 0.9  # the matching loss made each task's key its queries'
        spans, _ = m.prompts(q, t, False)
        (e_tokens, _), = [v for (k, i), v in spans.items() if i == 1]
        torch.testing.assert_close(e_tokens.detach(), torch.stack([m.prompt_modules["e"][int(j)][0].detach() for j in want]))
    assert m.selection_hits[:2, 0].sum() >= 0.9 * m.selection_hits[:2, 1].sum()


# -- CODA-Prompt ---------------------------------------------------------------------------------
def test_coda_weights_are_the_papers_attention_formula():
    coda = METHODS.get("coda_prompt")
    q = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    A = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    K = torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, 0.0]])
    # alpha[n, m] = <q_n * A_m, K_m> / (|q_n * A_m| |K_m|), by hand:
    # n=0: q*A_0 = (1, 0, -2): (1 - 2) / (sqrt 5 sqrt 3); q*A_1 = (0, 2, -1): -2 / (sqrt 5 sqrt 5)
    # n=1: q*A_0 = (0.5, 0, 6): 6.5 / (sqrt 36.25 sqrt 3); q*A_1 = (0, 0, 3): 0
    want = torch.tensor([[-1 / math.sqrt(15), -2 / 5], [6.5 / math.sqrt(36.25 * 3), 0.0]])
    torch.testing.assert_close(coda.weights(None, q, K, A), want)


def test_coda_prompt_is_the_weighted_sum_of_components_and_earlier_ones_stay_frozen(toy_data):  # noqa: F811
    m = build("coda_prompt", toy_data, **TOY["coda_prompt"])
    train_steps(m, begin(m, 0, toy_data), steps=3, lr=0.05)
    first = {n: p.detach().clone() for n, p in m.comps[0].named_parameters()}
    m.net.zero_grad(set_to_none=True)
    ctx = begin(m, 1, toy_data)
    for name in ("K", "A", "P"):  # task 1's components start orthonormal, and orthogonal to task 0's
        for b in range(len(m.sites[0])):
            both = torch.cat([m.comps[s][0][name][b].detach().flatten(1) for s in (0, 1)])
            torch.testing.assert_close(both @ both.T, torch.eye(len(both)), atol=1e-5, rtol=0)
    _, q = queries(m, toy_data, 1)
    spans, _ = m.prompts(q, 1, True)
    for j, block in enumerate(m.sites[0]):
        K, A, P = (torch.cat([m.comps[s][0][n][j].detach() for s in (0, 1)]) for n in ("K", "A", "P"))
        want = torch.zeros_like(spans[0, block][0])
        for i in range(len(q)):  # bare loop over examples and components
            for c in range(len(K)):
                x = q[i] * A[c]
                want[i] += float(x @ K[c] / (x.norm() * K[c].norm())) * P[c]
        torch.testing.assert_close(spans[0, block][0].detach(), want, atol=1e-5, rtol=1e-4)
    train_steps(m, ctx, steps=3, lr=0.05)
    assert all(torch.equal(first[n], p) and p.grad is None for n, p in m.comps[0].named_parameters())
    assert all(p.grad is not None for p in m.comps[1].parameters())


# -- validation, cost, runs ----------------------------------------------------------------------
@pytest.mark.parametrize("name,hp,message", [
    ("l2p", {"top_k": 11}, "method 'l2p': top_k=11: must be at most pool_size=10"),
    ("l2p", {"length": 0}, "method 'l2p': length=0: must be an integer >= 1"),
    ("dualprompt", {"e_first": 1}, r"method 'dualprompt': .*G below E"),
    ("coda_prompt", {"first": 3, "last": 2}, r"method 'coda_prompt': .*0 <= first <= last")])
def test_bad_hyperparameters_are_one_line_errors(name, hp, message):
    with pytest.raises(BenchError, match=message):  # refused when the run is configured, as every method's
        resolve(name, METHODS.get(name), [(f"{name}.{k}", str(v)) for k, v in hp.items()])


# per task on the toy backbone (32 wide, 2 blocks), by hand: (trained, stored in all)
PROMPTS = {"l2p": (10 * 5 * 32 + 10 * 32,) * 2,                  # the pool: 10 prompts of 5 tokens, 10 keys
           "dualprompt": (5 * 32 + 5 * 32 + 32,                 # G at block 0, E_t at block 1, key k_t
                          5 * 32 + 4 * (5 * 32 + 32)),          # G + 4 tasks' E-prompts and keys
           "coda_prompt": (2 * (2 * 2 * 32 + 2 * 2 * 32),       # 2 blocks x 2 components x (K, A: 2 x 32; P: 2 tokens x 32)
                           4 * 2 * (2 * 2 * 32 + 2 * 2 * 32))}  # 4 tasks' components


@pytest.mark.parametrize("name", sorted(TOY))
def test_runs_and_reports_its_prompts(run, name):
    from bench.method import n_params
    from bench.registry import TASKS
    metrics = run(name, sets=shallow(name))
    assert all(None not in row[: i + 1] for i, row in enumerate(metrics["matrix"]))
    toy = BACKBONES.get("toy")()
    tasks = [TASKS.get(n)() for n in ("vqa_color", "text_negation", "digits", "vqa_shape")]
    heads = [n_params(h.parameters()) for h in METHODS.get("finetune")(toy, tasks).heads]
    trained, stored = PROMPTS[name]
    assert metrics["params"]["trainable_per_task"] == [h + trained for h in heads]
    assert metrics["params"]["stored"] == n_params(toy.parameters()) + sum(heads) + stored
    assert metrics["params"]["inference"] == n_params(toy.parameters()) + max(heads) + stored
