"""InstDisc: the NCE loss against the paper's Eq. 5-6 written out, the full softmax (Eq. 2), the
memory bank's update and invariants, seeded negatives, and the fixed normaliser Z."""

import math

import pytest
import torch
import torch.nn.functional as F

import sslbench.methods.instdisc as instdisc_module
from sslbench.benchmark.backbones import build_backbone
from sslbench.methods.base import StepContext
from sslbench.methods.instdisc import InstDisc, InstDiscConfig, instdisc_nce_loss


def build(num_samples=40, **kw):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    args = {"embed_dim": 8, "num_negatives": 6, "temperature": 0.1, **kw}
    return InstDisc(backbone, dim, InstDiscConfig(**args), num_samples=num_samples).double()


def views(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 16, 16, generator=g, dtype=torch.float64)]


def naive_nce(v, bank, cols, tau, z, n):
    """Eq. 4-6 written out: P(i|v) = exp(v_i.f/tau)/Z, h = P/(P + m/N),
    J = -mean(log h_pos + sum log(1 - h_neg))."""
    total = 0.0
    m = len(cols[0]) - 1
    for b in range(len(v)):
        for k, col in enumerate(cols[b]):
            p = math.exp(sum(bank[col][d] * v[b][d] for d in range(len(v[b]))) / tau) / z
            h = p / (p + m / n)
            total += math.log(h) if k == 0 else math.log(1 - h)
    return -total / len(v)


def test_nce_loss_matches_eq_5_6():
    g = torch.Generator().manual_seed(1)
    v = F.normalize(torch.randn(3, 5, generator=g, dtype=torch.float64), dim=1)
    bank = F.normalize(torch.randn(20, 5, generator=g, dtype=torch.float64), dim=1)
    cols = torch.randint(0, 20, (3, 8), generator=g)
    tau, z = 0.07, 1234.5
    logits = torch.stack([bank[c] @ v[b] for b, c in enumerate(cols)]) / tau
    got = instdisc_nce_loss(logits, math.log(z), 20)
    want = naive_nce(v.tolist(), bank.tolist(), cols.tolist(), tau, z, 20)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("num_samples", [40, 4000])  # score the whole bank / gather the sampled rows
def test_method_loss_is_nce_over_its_bank_and_sampled_negatives(num_samples):
    method = build(num_samples)
    ctx = StepContext(step=3, seed=7, indices=torch.tensor([5, 0, 17, 39]))
    out = method.training_step(views(), ctx)
    v = F.normalize(method.embed(method.encoder(views()[0])), dim=1).detach()
    g = ctx.generator()
    neg = torch.randint(0, num_samples, (4, 6), generator=g)
    cols = torch.cat([ctx.indices[:, None], neg], dim=1)
    z = float(out.state["normalizer"])  # first step: N * mean(exp(s)) over this batch's scores
    scores = torch.stack([method.bank[c] @ v[b] for b, c in enumerate(cols)]) / 0.1
    assert z == pytest.approx(num_samples * scores.exp().mean().item(), rel=1e-10)
    want = naive_nce(v.tolist(), method.bank.tolist(), cols.tolist(), 0.1, z, num_samples)
    assert out.loss.item() == pytest.approx(want, rel=1e-9)


def test_full_softmax_over_the_bank_is_eq_2():
    method = build(num_samples=12, loss="softmax", num_negatives=0)
    idx = torch.tensor([3, 11, 0, 7])
    out = method.training_step(views(), StepContext(indices=idx))
    v = F.normalize(method.embed(method.encoder(views()[0])), dim=1).detach()
    want = 0.0
    for b in range(4):
        e = [math.exp(float(method.bank[j] @ v[b]) / 0.1) for j in range(12)]
        want -= math.log(e[int(idx[b])] / sum(e))
    assert out.loss.item() == pytest.approx(want / 4, rel=1e-10)


def test_sampled_softmax_puts_the_positive_first():
    method = build(loss="softmax", num_negatives=6)
    ctx = StepContext(step=1, indices=torch.tensor([1, 2, 3, 4]))
    out = method.training_step(views(), ctx)
    v = F.normalize(method.embed(method.encoder(views()[0])), dim=1).detach()
    cols = torch.cat([ctx.indices[:, None], torch.randint(0, 40, (4, 6), generator=ctx.generator())], 1)
    logits = torch.stack([method.bank[c] @ v[b] for b, c in enumerate(cols)]) / 0.1
    assert out.loss.item() == pytest.approx((-logits.log_softmax(1)[:, 0]).mean().item(), rel=1e-10)


def test_bank_update_closed_form_other_rows_unchanged_and_unit_norm():
    method = build()
    before = method.bank.clone()
    idx = torch.tensor([5, 0, 17, 39])
    out = method.training_step(views(), StepContext(indices=idx))
    assert torch.equal(method.bank, before), "the forward pass must not write the bank"
    method.on_step_end(out, StepContext(indices=idx))
    f = out.state["features"]
    expected = F.normalize(0.5 * before[idx] + 0.5 * f, dim=1)
    torch.testing.assert_close(method.bank[idx], expected, rtol=0, atol=1e-12)
    others = torch.ones(40, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(method.bank[others], before[others])
    torch.testing.assert_close(method.bank[idx].norm(dim=1), torch.ones(4, dtype=torch.float64))
    # initialised as lemniscate: uniform in [-s, s], s = 1/sqrt(D/3) -> unit norm in expectation
    init = build(num_samples=4000, embed_dim=128).bank
    assert init.abs().max() <= 1 / math.sqrt(128 / 3)
    assert (init.pow(2).sum(1).mean() - 1).abs() < 0.01


def test_negatives_are_seeded_by_seed_and_step():
    method = build()
    idx = torch.tensor([1, 2, 3, 4])
    draw = [method._negatives(4, StepContext(step=s, seed=seed, indices=idx), torch.device("cpu"))
            for s, seed in [(5, 1), (5, 1), (6, 1), (5, 2)]]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[3])
    assert draw[0].shape == (4, 6) and draw[0].min() >= 0 and draw[0].max() < 40
    losses = [method.training_step(views(), StepContext(step=s, indices=idx)).loss for s in (5, 5, 6)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_each_rank_draws_its_rows_of_the_joint_draw(monkeypatch):
    method = build()
    ctx = StepContext(step=2, seed=3)
    joint = method._negatives(8, ctx, torch.device("cpu"))
    monkeypatch.setattr(instdisc_module, "world_size", lambda: 2)
    for r in range(2):
        monkeypatch.setattr(instdisc_module, "rank", lambda r=r: r)
        assert torch.equal(method._negatives(4, ctx, torch.device("cpu")), joint[4 * r:4 * (r + 1)])


def test_normaliser_is_estimated_once_then_fixed():
    method = build()
    assert float(method.normalizer) < 0
    for step in range(3):
        ctx = StepContext(step=step, indices=torch.arange(4) + 4 * step)
        out = method.training_step(views(seed=step), ctx)
        assert ("normalizer" in out.state) == (step == 0)
        method.on_step_end(out, ctx)
        if step == 0:
            z0 = float(method.normalizer)
            assert z0 > 0
        assert float(method.normalizer) == z0
    assert "normalizer" in method.state_dict() and "bank" in method.state_dict()


def test_errors():
    backbone, dim = build_backbone("small-cnn", 1, 16)
    with pytest.raises(ValueError, match="num_samples"):
        InstDisc(backbone, dim, InstDiscConfig(), num_samples=1)
    with pytest.raises(ValueError, match="indices"):
        build().training_step(views(), StepContext())
    with pytest.raises(ValueError, match="num_negatives"):
        InstDiscConfig(num_negatives=0)
    with pytest.raises(ValueError, match="loss"):
        InstDiscConfig(loss="infonce")
    with pytest.raises(ValueError, match="memory_momentum"):
        InstDiscConfig(memory_momentum=1.0)
