"""Mechanism tests of the rehearsal methods on the toy backbone: the reservoir memory
(bench/memory.py), DER++'s stored logits and loss, ER-ACE's asymmetric cross-entropy and A-GEM's
gradient projection, each against values computed independently."""
import itertools
import tracemalloc
from types import SimpleNamespace

import pytest
import torch

from bench.data import EncodedSplit
from bench.errors import BenchError
from bench.memory import Reservoir, SplitIndex
from bench.method import Stage, task_loss
from conftest import plugin, run_method
from methods.agem import AGEM, AGEMHParams
from methods.derpp import DERppHParams
from methods.er_ace import ERACEHParams, ace_loss
from methods.moe_adapters import MoEAdapterHParams
from test_baselines import begin, build, toy_data  # noqa: F401  (toy_data is a fixture)
from test_contract import changed_tensors


@pytest.mark.parametrize("make", [lambda: DERppHParams(buffer_size=0), lambda: DERppHParams(alpha=-1),
                                  lambda: ERACEHParams(buffer_size=0), lambda: AGEMHParams(ref_batch=0),
                                  lambda: MoEAdapterHParams(top_k=0)])
def test_bad_hyper_parameters_are_one_line_errors(make):
    with pytest.raises(BenchError) as e:
        make()
    assert "\n" not in str(e.value)


# -- the reservoir -------------------------------------------------------------------------------

def test_reservoir_keeps_every_subset_of_the_stream_with_equal_probability():
    """Algorithm R keeps each size-subset of an N-example stream with probability 1 / C(N, size),
    also when the stream arrives in batches (two draws to one slot: the later example stays)."""
    size, batches, trials = 2, (2, 2, 1), 1000
    n = sum(batches)
    generator = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(itertools.combinations(range(n), size), 0)
    for _ in range(trials):
        memory, start = Reservoir(size), 0
        for b in batches:
            memory.add(0, torch.arange(start, start + b), generator)
            start += b
        counts[tuple(sorted(memory.index.tolist()))] += 1
    expected = trials / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 27.88, chi2  # chi-square, 9 degrees of freedom, p = 0.001
    assert len(memory) == size and int(memory.seen) == n and memory.task.tolist() == [0] * size


def test_reservoir_keeps_the_stream_in_order_while_it_has_room():
    memory = Reservoir(8)
    memory.add(2, torch.tensor([5, 9, 1]), torch.Generator())
    assert len(memory) == 3 and memory.index[:3].tolist() == [5, 9, 1] and memory.task.tolist() == [2] * 3 + [-1] * 5


def test_split_index_finds_each_example_of_a_batch(toy_data):
    for split in toy_data[1]:
        idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(1))[:24]
        found = SplitIndex(split).find(split.batch(idx))
        # equal content is the same example for replay: compare what the found indices hold
        for k, v in split.batch(found).items():
            assert torch.equal(v, split.batch(idx)[k])


def test_split_index_holds_no_copy_of_the_images():
    """Replay on a pixel backbone finds batches in splits of thousands of large images: the index
    must not keep each image's bytes (a ViLT canvas is 1.48 MB), only a small key per image."""
    n_images, image = 256, (4, 2048)  # 32 KB per image, 8 MB in all
    images = torch.randn(n_images, *image, generator=torch.Generator().manual_seed(0))
    fields = {"label": torch.arange(2 * n_images) % 5, "image_index": torch.arange(2 * n_images)[:, None] % n_images}
    split = EncodedSplit(fields, images)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = SplitIndex(split)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < images.numel() * images.element_size() / 16, held
    idx = torch.tensor([3, 300, 511, 0])
    assert index.find(split.batch(idx)).tolist() == idx.tolist()  # every example distinct: found exactly


# -- DER++ ---------------------------------------------------------------------------------------

def same_content(split, i: int) -> set[int]:
    """The examples of `split` equal to example i in every field (interchangeable for replay)."""
    every, one = split.batch(torch.arange(len(split))), split.batch(torch.tensor([i]))
    equal = torch.ones(len(split), dtype=torch.bool)
    for k, v in every.items():
        equal &= (v == one[k]).flatten(1).all(1) if v.dim() > 1 else v == one[k]
    return set(equal.nonzero().flatten().tolist())


def der_steps(method, t, toy_data, steps, batch_size=16):
    """Training steps on task t with each example once; returns {index: its logits before the step}."""
    ctx = begin(method, t, toy_data).at(Stage())
    split = ctx.train_data[t]
    opt = torch.optim.SGD([p for g in method.trainable_parameters(t, ctx) for p in g["params"]], lr=0.05)
    order, before = torch.randperm(len(split), generator=torch.Generator().manual_seed(t)), {}
    for s in range(steps):
        idx = order[s * batch_size:(s + 1) * batch_size]
        batch = split.batch(idx)
        with torch.no_grad():
            before.update(zip(idx.tolist(), method.forward(batch, t)))
        opt.zero_grad()
        method.loss(batch, t, ctx).backward()
        opt.step()
    return ctx, before


def test_derpp_stores_the_logits_each_example_had_when_inserted(toy_data):
    method = build("derpp", toy_data, buffer_size=24)
    method.net.eval()  # no dropout: the test's forward before each step is the loss's forward
    expected = {}
    for t in range(2):
        _, before = der_steps(method, t, toy_data, steps=4)
        expected.update({(t, i): z for i, z in before.items()})
    memory = method.net["memory"]
    assert len(memory) == 24 and int(memory.seen) == 2 * 4 * 16 and set(memory.task.tolist()) == {0, 1}
    stale = 0
    for slot in range(24):
        k, i = int(memory.task[slot]), int(memory.index[slot])
        stored = getattr(memory.logits, str(k))[slot]
        inserted = [expected[(k, j)] for j in same_content(toy_data[1][k], i) if (k, j) in expected]
        assert any(torch.equal(stored, z) for z in inserted)
        with torch.no_grad():
            now = method.forward(toy_data[1][k].batch(torch.tensor([i])), k)[0]
        stale += not torch.allclose(stored, now)
    assert stale > 12  # the model moved on: insertion-time logits, not today's


def loss_on_a_filled_memory(name: str, toy_data, **hp):
    """The loss of `name` on 8 examples of task 1 after three steps filled its 20-slot memory, with
    the memory as it was before and the (slot, task, example) the loss's sample drew, in order."""
    method = build(name, toy_data, buffer_size=20, **hp)
    method.net.eval()
    der_steps(method, 0, toy_data, steps=2)
    ctx, _ = der_steps(method, 1, toy_data, steps=1)
    memory = {k: v.clone() for k, v in method.net["memory"].state_dict().items()}
    state = method.generator.get_state()
    batch = ctx.train_data[1].batch(torch.arange(100, 108))
    with torch.no_grad():
        got = method.loss(batch, 1, ctx)
    drawn = []
    for slot in torch.randperm(20, generator=torch.Generator().set_state(state))[:8].tolist():
        k, i = int(memory["task"][slot]), int(memory["index"][slot])
        drawn.append((slot, k, ctx.train_data[k].batch(torch.tensor([i]))))
    return method, batch, got, memory, drawn


def test_derpp_loss_is_ce_plus_alpha_mse_plus_beta_ce_on_the_memory(toy_data):
    alpha, beta = 0.3, 0.7
    method, batch, got, memory, drawn = loss_on_a_filled_memory("derpp", toy_data, alpha=alpha, beta=beta)
    with torch.no_grad():  # by hand, one remembered example at a time
        terms = []
        for slot, k, ex in drawn:
            out = method.forward(ex, k)
            mse = (out[0] - memory[f"logits.{k}"][slot]).square().mean()
            terms.append(alpha * mse + beta * task_loss(out, ex["label"], method.tasks[k]))
        want = task_loss(method.forward(batch, 1), batch["label"], method.tasks[1]) + sum(terms) / len(terms)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


# -- ER-ACE --------------------------------------------------------------------------------------

CE_TASK = SimpleNamespace(choices=0, loss="ce")


def test_ace_is_the_cross_entropy_over_the_classes_present_in_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(6, 7, requires_grad=True)
    labels = torch.tensor([1, 4, 4, 1, 6, 1])
    loss = ace_loss(logits, labels, CE_TASK)
    present = sorted(set(labels.tolist()))
    want = sum(-logits[b, y] + torch.logsumexp(logits[b, present], 0) for b, y in enumerate(labels.tolist())) / 6
    assert torch.allclose(loss, want)
    loss.backward()
    absent = [c for c in range(7) if c not in present]
    assert torch.all(logits.grad[:, absent] == 0) and torch.all(logits.grad[:, present] != 0)


def test_ace_drops_the_bce_terms_of_answers_no_example_scores():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    labels = torch.tensor([[1.0, 0, 0, 0, 0], [0.3, 0, 0.6, 0, 0], [0, 0, 1.0, 0, 0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    want = bce[:, [0, 2]].sum() / 3
    assert torch.allclose(ace_loss(logits, labels, SimpleNamespace(choices=0, loss="soft_bce")), want)


def test_er_ace_masks_incoming_classes_and_replays_with_the_full_cross_entropy(toy_data):
    method, batch, got, _, drawn = loss_on_a_filled_memory("er_ace", toy_data)
    with torch.no_grad():
        out, labels = method.forward(batch, 1), batch["label"].tolist()
        present = sorted(set(labels))
        incoming = sum(-out[b, y] + torch.logsumexp(out[b, present], 0) for b, y in enumerate(labels)) / len(labels)
        replay = []
        for _, k, ex in drawn:
            z, y = method.forward(ex, k)[0], int(ex["label"][0])
            replay.append(-z[y] + torch.logsumexp(z, 0))  # every class of the head
    assert len(present) < out.shape[1]  # some class is absent from the batch, so the mask matters
    assert torch.allclose(got, incoming + sum(replay) / len(replay), rtol=1e-5, atol=1e-6)


# -- A-GEM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_agem_without_projection_trains_exactly_as_finetune(precision, tmp_path, cache_dir):
    sets = [f"precision={precision}", "steps=4"]
    finetune = run_method("finetune", tmp_path / "ft", cache_dir, sets=sets, reuse_stages=False)
    control = run_method("agem", tmp_path / "control", cache_dir, sets=sets + ["agem.project=false"], reuse_stages=False)
    assert control["matrix"] == finetune["matrix"]
    a, b = changed_tensors(tmp_path / "ft", finetune), changed_tensors(tmp_path / "control", control)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_agem_projects_conflicting_gradients_onto_the_memory_half_space_under_bf16(monkeypatch, tmp_path, cache_dir):
    """After every step's hook, by hand in float64 from the gradient before it and the same memory
    batch: g' = g − min(g·r, 0) / (r·r) r, so g'·r ≥ 0."""
    seen = []

    class Checked(AGEM):
        def after_backward(self, ctx, param_groups):
            params = [p for g in param_groups for p in g["params"] if p.grad is not None]
            g = [p.grad.double() for p in params]
            state = self.generator.get_state()
            super().after_backward(ctx, param_groups)
            if ctx.task == 0:
                return
            after, self.generator = self.generator, torch.Generator().set_state(state)
            r = [x.double() for x in self.reference_gradient(ctx, params)]
            self.generator = after
            dot = sum((a * b).sum() for a, b in zip(g, r))
            want = [a - min(float(dot), 0.0) / sum((b * b).sum() for b in r) * b for a, b in zip(g, r)]
            err = sum((p.grad.double() - w).square().sum() for p, w in zip(params, want)).sqrt()
            assert err <= 1e-6 * sum(w.square().sum() for w in want).sqrt()  # fp32 rounding of the same formula
            seen.append((float(dot), float(sum((p.grad.double() * b).sum() for p, b in zip(params, r)))))
    plugin(monkeypatch, "zz_agem_checked", Checked)
    run_method("zz_agem_checked", tmp_path, cache_dir, sets=["precision=bf16", "steps=8", "lr=3e-3"])
    assert len(seen) == 3 * 8  # every step of tasks 1..3
    assert any(before < 0 for before, _ in seen), "no step conflicted with the memory: the projection was not exercised"
    for before, after in seen:
        assert after >= -1e-4 * abs(before)  # on the half-space g . g_ref >= 0 (orthogonal where projected)
        if before >= 0:
            assert after == pytest.approx(before, rel=1e-6)
