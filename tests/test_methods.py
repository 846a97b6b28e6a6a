"""The method registry and protocol, shared pieces (EMA, queue, LARS), and a registry smoke test."""

import copy

import pytest
import torch

from sslbench.benchmark.backbones import build_backbone, list_backbones
from sslbench.benchmark.errors import ConfigError, UnknownNameError
from sslbench.benchmark.optim import LARS
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods import get_method, list_methods, register_method
from sslbench.methods.base import Method, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.momentum import FeatureQueue, ema_update


def small(name):
    entry = get_method(name)
    args = {"simclr": dict(proj_hidden_dim=32, proj_dim=16),
            "mocov2": dict(queue_size=24, proj_hidden_dim=32, proj_dim=16, symmetric=True),
            "byol": dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)}[name]
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    return entry.cls(backbone, dim, entry.config(**args))


def test_registry_lists_and_rejects():
    assert {"simclr", "mocov2", "byol"} <= set(list_methods())
    with pytest.raises(UnknownNameError, match="Valid methods: byol, mocov2, simclr"):
        get_method("simclrr")
    with pytest.raises(ValueError, match="already registered"):
        register_method("simclr", config=object, family="", paper="", default_recipe="")(Method)


@pytest.mark.parametrize("name", ["simclr", "mocov2", "byol"])
def test_two_steps_train_and_update_state(name):
    method = small(name)
    opt = torch.optim.SGD([p for g in method.param_groups() for p in g["params"]], lr=0.1)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 1, 16, 16, generator=g) for _ in range(2)]
    before = copy.deepcopy(method.state_dict())
    for step in range(2):
        out = method.training_step(views)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in method.encoder.parameters() if p.grad is not None]
        assert grads and any(gr.abs().sum() > 0 for gr in grads), "no gradient reaches the encoder"
        opt.step()
        method.on_step_end(out, step, 10)
    after = method.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    # frozen targets receive no gradient, only EMA updates
    for mod_name in ("key_encoder", "target_encoder"):
        if hasattr(method, mod_name):
            assert all(not p.requires_grad for p in getattr(method, mod_name).parameters())
            assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(mod_name + "."))
            assert not any(p is q for p in getattr(method, mod_name).parameters()
                           for g in method.param_groups() for q in g["params"])


def test_ema_closed_form_after_k_steps():
    """With a fixed online network, k EMA steps give target = m^k * t0 + (1 - m^k) * online."""
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = copy.deepcopy(target.state_dict())
    for _ in range(5):
        ema_update(target, online, 0.9)
    for key in t0:
        expected = 0.9 ** 5 * t0[key] + (1 - 0.9 ** 5) * online.state_dict()[key]
        assert torch.allclose(target.state_dict()[key], expected, atol=1e-6)


def test_byol_target_follows_cosine_momentum():
    method = small("byol")
    online0 = copy.deepcopy(method.encoder.state_dict())
    target0 = copy.deepcopy(method.target_encoder.state_dict())
    with torch.no_grad():  # move the online network away from the target
        for p in method.encoder.parameters():
            p.add_(1.0)
    logs = method.on_step_end(None, step=3, total_steps=10)
    m = cosine_momentum(3, 10, method.cfg.base_momentum)
    assert logs["ema_momentum"] == pytest.approx(m)
    key = "0.0.weight"
    expected = m * target0[key] + (1 - m) * (online0[key] + 1.0)
    assert torch.allclose(method.target_encoder.state_dict()[key], expected, atol=1e-6)


def test_queue_is_fifo_and_wraps():
    q = FeatureQueue(5, 2)
    keys = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    q.enqueue(keys[:3])
    assert torch.equal(q.features[:3], keys[:3]) and int(q.ptr) == 3
    q.enqueue(keys[3:7])  # wraps: entries 3,4 then 0,1
    assert torch.equal(q.features[3:5], keys[3:5]) and torch.equal(q.features[0:2], keys[5:7])
    assert int(q.ptr) == 2


def test_mocov2_enqueues_this_steps_keys_only_after_the_loss():
    method = small("mocov2")
    views = [torch.randn(4, 1, 16, 16) for _ in range(2)]
    queue_before = method.queue.features.clone()
    out = method.training_step(views)
    assert torch.equal(method.queue.features, queue_before), "forward must not touch the queue"
    method.on_step_end(out, 0, 10)
    keys = out.state["keys"]
    assert keys.shape[0] == 8  # symmetric: both views' keys
    assert torch.allclose(method.queue.features[:8], keys)
    assert torch.allclose(keys.norm(dim=1), torch.ones(8))


def test_forward_views_groups_equal_resolutions():
    calls = []

    def f(x):
        calls.append(x.shape[0])
        return x.mean(dim=(1, 2, 3), keepdim=False)[:, None]

    views = [torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 4, 4)]
    outs = forward_views(f, views)
    assert calls == [6, 3] and len(outs) == 3
    assert torch.allclose(outs[2][:, 0], views[2].mean(dim=(1, 2, 3)))


def test_mlp_builder():
    head = mlp(8, 16, 4, num_layers=3, last_bn=True)
    assert head(torch.randn(5, 8)).shape == (5, 4)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 3


def test_lars_matches_its_formula():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lars_exclude": True, "weight_decay": 0.0}],
               lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    w.grad = torch.tensor([0.6, 0.8])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 0.01 * 5.0 / g.norm()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)
    assert torch.allclose(b.detach(), torch.tensor([0.0]))


@pytest.mark.parametrize("name", ["small-cnn", "resnet18-small"])
def test_backbones_discover_feature_dim(name):
    model, dim = build_backbone(name, 1, 28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, dim)
    assert name in list_backbones()


def test_backbone_errors():
    with pytest.raises(UnknownNameError, match="backbone"):
        build_backbone("resnet-does-not-exist", 3, 32)
    with pytest.raises(ConfigError, match="cannot process"):
        build_backbone("vit_tiny_patch16_224", 3, 8)
