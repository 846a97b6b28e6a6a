"""InvaSpread: the loss against a float64 loop of its formula, its symmetries and closed form at
collapse, float64 gradcheck, detached candidates, and the global-batch form."""

import math

import pytest
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods.base import StepContext
from sslbench.methods.invaspread import InvaSpread, InvaSpreadConfig, invaspread_loss


def naive(f1, f2, tau):
    """Ye et al. Eq. 2-5 as the official BatchCriterion computes them, one anchor at a time."""
    feats = [list(map(float, r)) for r in torch.cat([f1, f2])]
    feats = [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in feats]
    n2, n = len(feats), len(f1)
    total = 0.0
    for a in range(n2):
        p = (a + n) % n2
        e = {k: math.exp(sum(x * y for x, y in zip(feats[a], feats[k])) / tau) for k in range(n2) if k != a}
        den = sum(e.values())
        total -= math.log(e[p] / den)
        total -= sum(math.log(1 - e[k] / den) for k in e if k != p)
    return total / n2


def pair(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2)]


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_loss_matches_naive_loop(tau):
    f1, f2 = pair()
    assert invaspread_loss(f1, f2, tau).item() == pytest.approx(naive(f1, f2, tau), rel=1e-10)


def test_symmetries_and_invariances():
    f1, f2 = pair(seed=1)
    base = invaspread_loss(f1, f2, 0.1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(invaspread_loss(f2, f1, 0.1), base)  # swapping the views
    torch.testing.assert_close(invaspread_loss(f1[perm], f2[perm], 0.1), base)  # reordering the batch
    torch.testing.assert_close(invaspread_loss(3.0 * f1, 0.5 * f2, 0.1), base)  # feature scale


def test_closed_form_at_collapse():
    """All 2N features equal: P = 1/(2N-1) everywhere, L = log(2N-1) - (2N-2) log(1 - 1/(2N-1))."""
    n = 4
    f = torch.ones(n, 3, dtype=torch.float64)
    k = 2 * n - 1
    want = math.log(k) - (k - 1) * math.log(1 - 1 / k)
    assert invaspread_loss(f, f.clone(), 0.1).item() == pytest.approx(want, rel=1e-12)
    assert invaspread_loss(*pair(), 0.1).item() > 0


def test_gradcheck_float64():
    f1, f2 = (t.requires_grad_() for t in pair(n=3, d=3, seed=2))
    assert torch.autograd.gradcheck(
        lambda a, b: invaspread_loss(a, b, 0.5, detach_candidates=False), (f1, f2))


def test_detached_candidates_give_the_anchor_only_gradient():
    """With the repo's feat.data, the gradient is that of the loss with the candidates as constants."""
    f1, f2 = (t.requires_grad_() for t in pair(seed=3))
    invaspread_loss(f1, f2, 0.1, detach_candidates=True).backward()
    a1, a2 = (t.detach().clone().requires_grad_() for t in (f1, f2))
    const = torch.cat([f1, f2]).detach()
    invaspread_loss(a1, a2, 0.1, detach_candidates=True, all_f1=const[:5], all_f2=const[5:]).backward()
    torch.testing.assert_close(f1.grad, a1.grad)
    full = [t.detach().clone().requires_grad_() for t in (f1, f2)]
    invaspread_loss(*full, 0.1, detach_candidates=False).backward()
    assert not torch.allclose(full[0].grad, f1.grad)


def test_global_batch_form_averages_to_the_joint_loss():
    f1, f2 = pair(n=6, seed=4)
    for detach in (True, False):
        joint = invaspread_loss(f1, f2, 0.1, detach_candidates=detach)
        parts = [invaspread_loss(f1[r * 3:(r + 1) * 3], f2[r * 3:(r + 1) * 3], 0.1, detach_candidates=detach,
                                 all_f1=f1, all_f2=f2, offset=3 * r) for r in range(2)]
        torch.testing.assert_close((parts[0] + parts[1]) / 2, joint)


def test_method_step():
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    method = InvaSpread(backbone, dim, InvaSpreadConfig(embed_dim=8)).double()
    views = [torch.randn(4, 1, 16, 16, dtype=torch.float64) for _ in range(2)]
    out = method(views, StepContext())
    f1, f2 = method.embed(method.encoder(torch.cat(views))).detach().chunk(2)
    assert out.loss.item() == pytest.approx(naive(f1, f2, 0.1), rel=1e-9)
    out.loss.backward()
    assert method.embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        InvaSpreadConfig(temperature=0.0)
