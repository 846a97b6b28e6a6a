"""Losses against independent naive implementations of the papers' formulas (float64 loops)."""

import math

import pytest
import torch

from sslbench.methods.losses import byol_loss, info_nce, nt_xent


def naive_nt_xent(z1, z2, tau):
    """SimCLR Eq. 1, literally: for each of the 2N anchors, -log softmax over the other 2N-1."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = [float(z[i] @ z[k] / (z[i].norm() * z[k].norm())) / tau for k in range(n2)]
        denom = sum(math.exp(sims[k]) for k in range(n2) if k != i)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / n2


def naive_info_nce(q, k, queue, tau):
    """MoCo Eq. 1: positive key vs the queue's negatives, for each query."""
    q, k, queue = q.double(), k.double(), queue.double()
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i] / q[i].norm()
        ki = k[i] / k[i].norm()
        pos = math.exp(float(qi @ ki) / tau)
        negs = sum(math.exp(float(qi @ (n / n.norm())) / tau) for n in queue)
        total += -math.log(pos / (pos + negs))
    return total / q.shape[0]


@pytest.mark.parametrize("tau", [0.07, 0.2, 0.5, 1.0])
def test_nt_xent_matches_naive(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(naive_nt_xent(z1, z2, tau), rel=1e-5)


def test_nt_xent_properties():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    # symmetric in the two views, invariant to the scale of the embeddings
    assert torch.allclose(nt_xent(z1, z2, 0.3), nt_xent(z2, z1, 0.3))
    assert torch.allclose(nt_xent(z1, z2, 0.3), nt_xent(3 * z1, 0.5 * z2, 0.3), atol=1e-6)
    # identical, well-separated views -> loss near its minimum; random pairs -> near log(2N-1)
    e = torch.eye(8, 16) * 10
    assert nt_xent(e, e, 0.05).item() < 1e-3
    wide = torch.randn(512, 2048, generator=g)
    assert nt_xent(wide, torch.randn(512, 2048, generator=g), 1.0).item() == pytest.approx(
        math.log(1023), rel=0.01)


def test_nt_xent_gradcheck():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_info_nce_matches_naive(tau):
    g = torch.Generator().manual_seed(3)
    q, k, queue = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(11, 8, generator=g)
    assert info_nce(q, k, queue, tau).item() == pytest.approx(naive_info_nce(q, k, queue, tau), rel=1e-5)


def test_info_nce_stops_gradient_to_keys_and_queue():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    queue = torch.randn(16, 8, requires_grad=True)
    info_nce(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_byol_loss_matches_formula_and_stops_gradient():
    g = torch.Generator().manual_seed(4)
    p = torch.randn(7, 6, generator=g, requires_grad=True)
    z = torch.randn(7, 6, generator=g, requires_grad=True)
    pd, zd = p.detach(), z.detach()
    naive = sum(float(((pd[i] / pd[i].norm() - zd[i] / zd[i].norm()) ** 2).sum()) for i in range(7)) / 7
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(naive, rel=1e-5)
    loss.backward()
    assert z.grad is None and p.grad is not None
    assert byol_loss(z.detach(), 2 * z.detach()).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(z.detach(), -z.detach()).item() == pytest.approx(4.0, abs=1e-5)
