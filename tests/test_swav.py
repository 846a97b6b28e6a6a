"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against naive float64 loops written from
the paper, prototype normalisation and freezing, the queue, multi-crop pairing, exact resume."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods import StepContext, get_method
from sslbench.methods.multicrop import crop_pairs
from sslbench.methods.swav import SwAVConfig, sinkhorn, swapped_prediction_loss

# ------------------------------------------------------------------------------------------------
# Naive references (Python loops in float64, from the paper's §3.1 / the official algorithm)


def naive_sinkhorn(scores: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """Q (K x B) = exp(C^T Z / eps), total 1; then ``iters`` x (prototype rows to 1/K, sample
    columns to 1/B); returns B * Q^T (each sample's code sums to 1)."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[j][i] / eps) for j in range(b)] for i in range(k)]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        for i in range(k):
            r = sum(q[i])
            q[i] = [x / r / k for x in q[i]]
        for j in range(b):
            c = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] = q[i][j] / c / b
    return [[q[i][j] * b for i in range(k)] for j in range(b)]


def naive_swapped_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], pairs, tau: float) -> float:
    total = 0.0
    for t, s in pairs:
        z, q = scores[s].double().tolist(), codes[t].double().tolist()
        for zb, qb in zip(z, q):
            log_norm = math.log(sum(math.exp(v / tau) for v in zb))
            total -= sum(qk * (v / tau - log_norm) for qk, v in zip(qb, zb)) / len(z)
    return total / len(pairs)


def _scores(b: int, k: int, seed: int = 0) -> torch.Tensor:
    """Cosine-like scores in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, 8, generator=g, dtype=torch.float64), dim=1) @ F.normalize(
        torch.randn(k, 8, generator=g, dtype=torch.float64), dim=1).T


# ------------------------------------------------------------------------------------------------
# Sinkhorn-Knopp


@pytest.mark.parametrize("eps, iters", [(0.05, 3), (0.05, 1), (0.3, 5)])
def test_sinkhorn_matches_the_naive_loop(eps, iters):
    s = _scores(7, 5)
    torch.testing.assert_close(sinkhorn(s, eps, iters), torch.tensor(naive_sinkhorn(s.tolist(), eps, iters),
                                                                     dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # float32 input: float32 maths, same codes to float32 precision.
    torch.testing.assert_close(sinkhorn(s.float(), eps, iters), sinkhorn(s, eps, iters).float(),
                               rtol=1e-4, atol=1e-5)


def test_sinkhorn_codes_are_doubly_stochastic():
    s = _scores(12, 4)
    q = sinkhorn(s, 0.05, 3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12, dtype=torch.float64))  # each code sums to 1
    assert (q >= 0).all()
    q = sinkhorn(s, 0.3, 200)  # converged: each prototype receives B / K of the mass
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12, dtype=torch.float64))


def test_sinkhorn_shared_rows_take_part_but_are_not_returned():
    s, queue = _scores(4, 5, seed=1), _scores(6, 5, seed=2)
    q = sinkhorn(s, 0.05, 3, shared=queue)
    full = torch.tensor(naive_sinkhorn(torch.cat((queue, s)).tolist(), 0.05, 3), dtype=torch.float64)
    assert q.shape == (4, 5)
    torch.testing.assert_close(q, full[6:], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(q, sinkhorn(s, 0.05, 3))


def test_sinkhorn_is_shift_invariant_and_finite_at_small_eps():
    s = _scores(6, 4, seed=3)
    torch.testing.assert_close(sinkhorn(s + 0.7, 0.05, 3), sinkhorn(s, 0.05, 3))
    q = sinkhorn(s.float(), 0.005, 3)  # exp(1 / 0.005) overflows float32 without the shift
    assert torch.isfinite(q).all() and (q.sum(dim=1) <= 1 + 1e-5).all()


def test_sinkhorn_keeps_half_precision_inputs_in_float32():
    q = sinkhorn(_scores(5, 3).to(torch.bfloat16), 0.05, 3)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()


# ------------------------------------------------------------------------------------------------
# Swapped prediction


def test_swapped_prediction_loss_matches_the_naive_loop_over_pairs():
    g = torch.Generator().manual_seed(4)
    scores = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    codes = [torch.softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    pairs = crop_pairs(2, 4)
    loss = swapped_prediction_loss(scores, codes, pairs, 0.1)
    assert loss.item() == pytest.approx(naive_swapped_loss(scores, codes, pairs, 0.1), rel=1e-6)


def test_swapped_prediction_gradient_closed_form():
    """dL/dz_s = sum over targets t of (softmax(z_s / tau) - q_t) / (tau * B * |P|)."""
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    pairs, tau = crop_pairs(2, 3), 0.2
    swapped_prediction_loss(scores, codes, pairs, tau).backward()
    for s, z in enumerate(scores):
        expected = sum((torch.softmax(z.detach() / tau, dim=1) - codes[t]) for t, p in pairs if p == s)
        torch.testing.assert_close(z.grad, expected / (tau * 3 * len(pairs)), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# The method


def _method(**overrides):
    args = dict(proj_hidden_dim=16, proj_dim=8, num_prototypes=6, **overrides)
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    return get_method("swav").build(backbone, dim, args)


def _views(step: int, local: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    return [torch.randn(4, 1, 16, 16, generator=g) for _ in range(2)] + [
        torch.randn(4, 1, 8, 8, generator=g) for _ in range(local)]


def _step(method, opt, step: int, steps_per_epoch: int = 1, local: int = 0):
    ctx = StepContext(step=step, total_steps=100, steps_per_epoch=steps_per_epoch)
    out = method(_views(step, local), ctx)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    method.before_optimizer_step(ctx)
    opt.step()
    method.on_step_end(out, ctx)
    return out


def _opt(method):
    return torch.optim.AdamW(method.param_groups(), lr=0.05)


def test_config_validation():
    for bad in ({"temperature": 0.0}, {"epsilon": -1.0}, {"num_prototypes": 0}, {"queue_length": -1},
                {"sinkhorn_iterations": 0}, {"freeze_prototypes_epochs": -1}):
        with pytest.raises(ValueError):
            SwAVConfig(**bad)


def test_loss_is_the_swapped_prediction_of_global_codes_over_multicrop_pairs():
    method = _method()
    views = _views(0, local=2)
    out = method.training_step(views, StepContext())
    # Recomputed by hand: codes from the 2 global views only, 2 x 3 pairs; BN sees the views of
    # one resolution together, as in the method.
    with torch.no_grad():
        big = F.normalize(method.projector(method.encoder(torch.cat(views[:2]))), dim=1).chunk(2)
        small = F.normalize(method.projector(method.encoder(torch.cat(views[2:]))), dim=1).chunk(2)
        z = list(big) + list(small)
        scores = [method.prototypes(v) for v in z]
        codes = [sinkhorn(scores[t], 0.05, 3) for t in range(2)]
    expected = naive_swapped_loss(scores, codes, crop_pairs(2, 4), 0.1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_prototypes_are_unit_norm_frozen_in_epoch_0_and_updated_in_epoch_1():
    method = _method()
    opt = _opt(method)
    w0 = method.prototypes.weight.detach().clone()
    torch.testing.assert_close(w0.norm(dim=1), torch.ones(6))  # normalised at construction
    enc0 = method.encoder.state_dict()["0.0.weight"].clone()
    for step in range(2):  # epoch 0 (2 steps per epoch): no update at all
        _step(method, opt, step, steps_per_epoch=2)
        assert method.prototypes.weight.grad is None
    torch.testing.assert_close(method.prototypes.weight.detach(), w0, rtol=0, atol=1e-7)
    assert not torch.equal(method.encoder.state_dict()["0.0.weight"], enc0)  # the rest trains
    _step(method, opt, 2, steps_per_epoch=2)  # epoch 1: updated, then re-normalised
    w1 = method.prototypes.weight.detach()
    assert (w1 - w0).abs().max() > 1e-3
    torch.testing.assert_close(w1.norm(dim=1), torch.ones(6))


def test_queue_is_fifo_filled_from_epoch_queue_starts_and_used_once_full():
    method = _method(queue_length=8, epoch_queue_starts=1)
    opt = _opt(method)
    outs = [_step(method, opt, step, steps_per_epoch=2) for step in range(2)]  # epoch 0
    assert int(method.queue_fill) == 0 and not any(o.logs["queue_used"] for o in outs)
    outs += [_step(method, opt, step, steps_per_epoch=2) for step in range(2, 5)]  # epoch 1, 2
    assert [o.logs["queue_used"] for o in outs] == [0.0, 0.0, 0.0, 0.0, 1.0]  # full after 2 batches of 4
    for t in range(2):  # ring buffer: step 4's rows replaced step 2's
        z = [o.state["z"][:, 8 * t:8 * (t + 1)] for o in outs]  # (B, 2 x 8): both global views
        torch.testing.assert_close(method.queued(t)[:4], z[4])
        torch.testing.assert_close(method.queued(t)[4:], z[3])
    assert int(method.queue_fill) == 8 and int(method.queue.ptr) == 4
    # The forward reads the queue but never writes it (BN statistics aside), and its codes use it.
    before = {k: v.clone() for k, v in method.state_dict().items() if k.startswith(("queue", "prototypes"))}
    assert set(before) == {"queue.features", "queue.ptr", "queue_fill", "prototypes.weight"}
    ctx = StepContext(step=5, total_steps=100, steps_per_epoch=2)
    out = method.training_step(_views(5), ctx)
    assert all(torch.equal(method.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        z = F.normalize(method.projector(method.encoder(torch.cat(_views(5)))), dim=1).chunk(2)
        scores = [method.prototypes(v) for v in z]
        codes = [sinkhorn(scores[t], 0.05, 3, shared=method.prototypes(method.queued(t)))
                 for t in range(2)]
    assert out.loss.item() == pytest.approx(naive_swapped_loss(scores, codes, [(0, 1), (1, 0)], 0.1), rel=1e-5)


def test_queue_needs_two_global_views():
    method = _method(queue_length=8)
    with pytest.raises(ValueError, match="2 global views"):
        method.training_step([torch.randn(4, 1, 16, 16), torch.randn(4, 1, 8, 8)], StepContext())


def test_resume_with_the_queue_is_exact():
    method = _method(queue_length=8, epoch_queue_starts=0, freeze_prototypes_epochs=1)
    opt = _opt(method)
    for step in range(3):
        _step(method, opt, step, local=1)
    saved, saved_opt = copy.deepcopy(method.state_dict()), copy.deepcopy(opt.state_dict())
    a = [_step(method, opt, step, local=1).loss.item() for step in (3, 4)]
    resumed = _method(queue_length=8, epoch_queue_starts=0, freeze_prototypes_epochs=1)
    resumed.load_state_dict(saved)
    opt_r = _opt(resumed)
    opt_r.load_state_dict(saved_opt)
    b = [_step(resumed, opt_r, step, local=1).loss.item() for step in (3, 4)]
    assert a == b
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key
