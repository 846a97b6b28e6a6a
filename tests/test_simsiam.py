"""SimSiam: the symmetric negative-cosine loss against the paper's formula, the stop-gradient,
the fixed predictor learning rate and the architecture of the heads."""

import math

import pytest
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.config import OptimConfig
from sslbench.benchmark.optim import build_optimizer, set_lr
from sslbench.methods import get_method
from sslbench.methods.base import StepContext
from sslbench.methods.simsiam import SimSiamConfig, negative_cosine, simsiam_loss


def naive_simsiam(p1, p2, z1, z2):
    """Chen & He 2021 Eq. 1-2, written with Python loops in float64."""

    def d(p, z):
        total = 0.0
        for pi, zi in zip(p.tolist(), z.tolist()):
            dot = sum(a * b for a, b in zip(pi, zi))
            total += -dot / (math.sqrt(sum(a * a for a in pi)) * math.sqrt(sum(b * b for b in zi)))
        return total / len(p)

    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def build(**args):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    args = {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 4, **args}
    return get_method("simsiam").build(backbone, dim, args)


def test_loss_matches_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(naive_simsiam(p1, p2, z1, z2), abs=1e-12)
    assert negative_cosine(p1, z1 * 3.0).item() == pytest.approx(negative_cosine(p1, z1).item())  # scale-free


def test_stop_gradient_the_targets_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
                      for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_method_gradient_reaches_z_only_through_the_predictor():
    """In the method, z1's gradient comes from p1 = h(z1) alone: replacing the loss's target
    z2 by a constant copy leaves every gradient unchanged."""
    method = build()
    views = [torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    method.zero_grad()
    method(views, StepContext()).loss.backward()
    grads = [p.grad.clone() for p in method.parameters()]
    z1, z2 = method.projector(method.encoder(torch.cat(views))).chunk(2)  # one BN batch, as forward_views
    p1, p2 = method.predictor(torch.cat([z1, z2])).chunk(2)
    method.zero_grad()
    simsiam_loss(p1, p2, z1.detach().clone(), z2.detach().clone()).backward()
    for got, p in zip(grads, method.parameters()):
        torch.testing.assert_close(got, p.grad)


def test_loss_bounds():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert simsiam_loss(z2, z1, z1, z2).item() == pytest.approx(-1.0)  # predictions = targets
    assert simsiam_loss(-z2, -z1, z1, z2).item() == pytest.approx(1.0)  # opposite
    for _ in range(20):
        p1, p2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
        assert -1.0 <= simsiam_loss(p1, p2, z1, z2).item() <= 1.0


def test_predictor_group_keeps_a_fixed_lr():
    method = build()
    groups = method.param_groups()
    assert [bool(g.get("fixed_lr")) for g in groups] == [False, True]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.predictor.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))
    opt = build_optimizer(groups, OptimConfig(name="sgd"), 0.1)
    set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.01), pytest.approx(0.1)]
    opt = build_optimizer(build(fix_pred_lr=False).param_groups(), OptimConfig(name="sgd"), 0.1)
    set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.01)] * 2


def test_heads_follow_the_official_builder():
    method = build(proj_layers=3)
    bns = [m for m in method.projector if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 3 and not bns[-1].affine  # BN after every layer, the output's without affine
    assert isinstance(method.predictor[-1], torch.nn.Linear) and method.predictor[-1].bias is not None
    assert method.predictor[0].out_features == 4  # the bottleneck
    out = method([torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)], StepContext())
    assert 0 <= method.on_step_end(out, StepContext())["z_std"] <= 1


def test_config_is_validated():
    with pytest.raises(ValueError, match="proj_layers"):
        SimSiamConfig(proj_layers=0)
    with pytest.raises(ValueError, match="head sizes"):
        SimSiamConfig(pred_hidden_dim=0)
