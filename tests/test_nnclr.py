"""NNCLR: nearest neighbours against a brute-force search, the loss against a float64 loop of
Eq. 2 (+ the §3.2 transposed term), the support set's life cycle, and the global-batch form."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods.base import StepContext
from sslbench.methods.nnclr import NNCLR, NNCLRConfig, nearest_neighbour, nnclr_loss


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def naive(nn, p, tau, symmetric):
    """Eq. 2: -log exp(n_i.p_i/tau)/sum_k exp(n_i.p_k/tau); the §3.2 symmetrisation adds
    -log exp(n_i.p_i/tau)/sum_k exp(n_k.p_i/tau)."""
    nn = [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in nn.tolist()]
    p = [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in p.tolist()]
    n = len(nn)

    def s(a, b):
        return math.exp(sum(x * y for x, y in zip(a, b)) / tau)

    rows = sum(-math.log(s(nn[i], p[i]) / sum(s(nn[i], p[k]) for k in range(n))) for i in range(n)) / n
    if not symmetric:
        return rows
    cols = sum(-math.log(s(nn[i], p[i]) / sum(s(nn[k], p[i]) for k in range(n))) for i in range(n)) / n
    return (rows + cols) / 2


def test_nearest_neighbour_matches_brute_force():
    z, q = unit(7, 5, seed=1), unit(30, 5, seed=2)
    got, idx = nearest_neighbour(3.0 * z, q)  # scale-free: cosine on the normalised query
    for i in range(7):
        dists = [sum((a - b) ** 2 for a, b in zip(z[i].tolist(), row.tolist())) for row in q]
        assert int(idx[i]) == dists.index(min(dists))
        assert torch.equal(got[i], q[idx[i]])


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_matches_naive_loop(symmetric):
    nn, p = unit(5, 4, seed=3), torch.randn(5, 4, dtype=torch.float64)
    got = nnclr_loss(nn, p, 0.1, symmetric=symmetric)
    assert got.item() == pytest.approx(naive(nn, p, 0.1, symmetric), rel=1e-10)


def test_neighbours_get_no_gradient_and_global_batch_averages_to_joint():
    nn = unit(6, 4, seed=4).requires_grad_()
    p = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    nnclr_loss(nn, p, 0.1).backward()
    assert nn.grad is None and p.grad.abs().sum() > 0
    for symmetric in (False, True):
        joint = nnclr_loss(nn, p, 0.1, symmetric=symmetric)
        parts = [nnclr_loss(nn[3 * r:3 * r + 3], p[3 * r:3 * r + 3], 0.1, symmetric=symmetric,
                            all_nn_a=nn, all_p_b=p, offset=3 * r) for r in range(2)]
        torch.testing.assert_close((parts[0] + parts[1]) / 2, joint)


def build(size=10):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    cfg = NNCLRConfig(support_set_size=size, proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
    return NNCLR(backbone, dim, cfg).double()


def test_support_set_is_read_before_and_written_after_the_loss_fifo():
    method = build(size=10)
    views = [torch.randn(4, 1, 16, 16, dtype=torch.float64) for _ in range(2)]
    queue = method.support_set.features.clone()
    out = method.training_step(views, StepContext())
    assert torch.equal(method.support_set.features, queue), "the loss must not write the support set"
    z1 = out.state["keys"]
    assert not any(torch.allclose(z, q) for z in z1 for q in queue), "the batch is not in the set"
    # the loss is computed with the neighbours from the set as it was before this step
    z = method.projector(method.encoder(torch.cat(views)))
    p1, p2 = method.predictor(z).chunk(2)
    nn1, nn2 = (nearest_neighbour(F.normalize(t, dim=1), queue)[0] for t in z.detach().chunk(2))
    want = (naive(nn1, p2, 0.1, True) + naive(nn2, p1, 0.1, True)) / 2
    assert out.loss.item() == pytest.approx(want, rel=1e-9)
    torch.testing.assert_close(z1, F.normalize(z.detach()[:4], dim=1))
    # FIFO: rows 0-3 now hold this step's first-view projections, the rest is unchanged
    method.on_step_end(out, StepContext())
    assert torch.equal(method.support_set.features[:4], z1)
    assert torch.equal(method.support_set.features[4:], queue[4:]) and int(method.support_set.ptr) == 4
    for step in (1, 2):  # 12 entries into 10 slots: the oldest (rows 0, 1) are overwritten last
        out = method.training_step(views, StepContext(step=step))
        method.on_step_end(out, StepContext(step=step))
    assert int(method.support_set.ptr) == 2
    assert torch.equal(method.support_set.features[:2], out.state["keys"][2:])
    assert torch.equal(method.support_set.features[8:], out.state["keys"][:2])
    assert torch.allclose(method.support_set.features.norm(dim=1), torch.ones(10, dtype=torch.float64))


def test_config_errors():
    with pytest.raises(ValueError, match="temperature"):
        NNCLRConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="support_set_size"):
        NNCLRConfig(support_set_size=0)
