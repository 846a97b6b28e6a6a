"""The method registry and protocol, shared pieces (EMA, queue, LARS), and a registry smoke test."""

import copy

import pytest
import torch

from sslbench.benchmark.augment import BatchAugment, get_augment_recipe
from sslbench.benchmark.backbones import build_backbone, list_backbones
from sslbench.benchmark.engine import build_method, view_geometry
from sslbench.benchmark.errors import ConfigError, UnknownNameError
from sslbench.benchmark.optim import LARS, build_optimizer
from sslbench.benchmark.recipes import get_recipe, resolve
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods import get_method, list_methods, register_method
from sslbench.methods.base import Method, StepContext, TensorEpochData, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.momentum import FeatureQueue, ema_update


def small(name):
    entry = get_method(name)
    args = {"simclr": dict(proj_hidden_dim=32, proj_dim=16),
            "mocov2": dict(queue_size=24, proj_hidden_dim=32, proj_dim=16, symmetric=True),
            "byol": dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)}[name]
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    return entry.build(backbone, dim, args)


def test_registry_lists_and_rejects():
    assert {"simclr", "mocov2", "byol"} <= set(list_methods())
    with pytest.raises(UnknownNameError, match="Valid methods: " + ", ".join(list_methods())):
        get_method("simclrr")
    with pytest.raises(ValueError, match="already registered"):
        register_method("simclr", config=object, family="", paper="", default_recipe="")(Method)


def _smoke_setup(name):
    """The method's default recipe on 28 px synthetic images (RGB for colour methods), its own
    augmentation (all views, multi-crop included), its own optimiser and parameter groups; the
    method's epoch-start hook has seen the (random) training split."""
    entry = get_method(name)
    cfg = resolve(entry.default_recipe, ["train.device=cpu"])
    c = 3 if entry.needs_color else 1
    method = build_method(cfg, c, 28, num_samples=64)
    augment = BatchAugment(get_augment_recipe(cfg.augment), (0.5,) * c, (0.25,) * c, 28)
    optimizer = build_optimizer(method.param_groups(), cfg.optim, 1e-3)
    with torch.no_grad():
        method.on_epoch_start(StepContext(step=0, total_steps=4, steps_per_epoch=1, seed=0), _split_data(c))
    return method, augment, optimizer


def _split_data(channels):
    """A random 64-image training split for ``on_epoch_start`` (normalised as the smoke views)."""
    g = torch.Generator().manual_seed(7)
    return TensorEpochData((torch.randint(0, 256, (64, channels, 28, 28), generator=g).float() / 255 - 0.5) / 0.25)


def _smoke_step(method, augment, optimizer, step):
    """One engine step (forward, backward, before_optimizer_step, step, on_step_end) on a fixed
    batch of step ``step``; returns the loss, the step's output and the hook's logs."""
    g = torch.Generator().manual_seed(100 + step)
    c = augment.mean.__len__()
    images = torch.randint(0, 256, (16, c, 28, 28), dtype=torch.uint8, generator=g)
    indices = torch.randperm(64, generator=g)[:16]
    geometry = None
    if method.needs_geometry:
        views, params = augment(images, torch.Generator().manual_seed(step), return_params=True)
        geometry = view_geometry(params, 28, 28)
    else:
        views = augment(images, torch.Generator().manual_seed(step))
    ctx = StepContext(step=step, total_steps=4, steps_per_epoch=1, indices=indices, seed=0, geometry=geometry)
    out = method(views, ctx)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    method.before_optimizer_step(ctx)
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    optimizer.step()
    logs = method.on_step_end(out, ctx)
    return out.loss.detach(), grads, logs


@pytest.mark.parametrize("name", list_methods())
def test_registry_smoke_two_steps_and_exact_resume(name):
    """Every registered method: two steps train (finite loss, gradients reach the encoder), its
    frozen networks move only by their hook, and a checkpoint after step 1 resumes to the same
    step 2 (loss and every tensor of the state)."""
    method, augment, optimizer = _smoke_setup(name)
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    trained = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not any(id(p) in trained for n, p in method.named_parameters() if n in frozen), \
        "a frozen (target) parameter is handed to the optimiser"
    before = copy.deepcopy(method.state_dict())
    loss0, grads, _ = _smoke_step(method, augment, optimizer, 0)
    assert torch.isfinite(loss0), f"{name}: loss {loss0}"
    enc = [g for n, g in grads.items() if n.startswith("encoder.")]
    assert enc and any(g.abs().sum() > 0 for g in enc), f"{name}: no gradient reaches the encoder"
    assert not frozen & set(grads), f"{name}: frozen parameters got gradients: {frozen & set(grads)}"
    state1 = copy.deepcopy(method.state_dict())
    opt1 = copy.deepcopy(optimizer.state_dict())
    assert any(not torch.equal(before[k], state1[k]) for k in before if k.startswith("encoder."))
    if frozen:  # EMA targets / key encoders move by the hook, after the optimiser step
        assert any(not torch.equal(before[k], state1[k]) for k in frozen), f"{name}: target did not move"
    loss1, _, _ = _smoke_step(method, augment, optimizer, 1)
    assert torch.isfinite(loss1)
    state2 = method.state_dict()

    resumed, _, opt_r = _smoke_setup(name)
    resumed.load_state_dict(state1)
    opt_r.load_state_dict(opt1)
    loss1_r, _, _ = _smoke_step(resumed, augment, opt_r, 1)
    torch.testing.assert_close(loss1_r, loss1, rtol=1e-5, atol=1e-6)
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, state2[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_registry_entries_are_complete():
    for name in list_methods():
        entry = get_method(name)
        assert entry.family and "http" in entry.paper, name
        assert get_recipe(entry.default_recipe).config.method == name, name


def test_ema_closed_form_after_k_steps():
    """With a fixed online network, k EMA steps give target = m^k * t0 + (1 - m^k) * online."""
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = copy.deepcopy(target.state_dict())
    for _ in range(5):
        ema_update(target, online, 0.9)
    for key in t0:
        expected = 0.9 ** 5 * t0[key] + (1 - 0.9 ** 5) * online.state_dict()[key]
        assert torch.allclose(target.state_dict()[key], expected, atol=1e-6)


def test_ema_update_is_bit_identical_to_the_per_parameter_loop():
    """The foreach kernels do exactly ``t.mul_(m).add_(o, alpha=1 - m)`` per parameter (a conv
    backbone with BN and a head: many shapes), step after step; buffers are left alone."""
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    online = torch.nn.Sequential(backbone, mlp(dim, 32, 8))
    target, naive = copy.deepcopy(online), copy.deepcopy(online)
    buffers = {n: b.clone() for n, b in target.named_buffers()}
    with torch.no_grad():
        for b in online.buffers():  # the online statistics must not leak into the target
            b.add_(1)
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        for step, m in enumerate((0.996, 0.9, 0.5, cosine_momentum(3, 10, 0.99))):
            ema_update(target, online, m)
            for t, o in zip(naive.parameters(), online.parameters()):
                t.mul_(m).add_(o, alpha=1.0 - m)
            for (name, a), b in zip(target.state_dict().items(), naive.state_dict().values()):
                assert torch.equal(a, b), f"step {step}: {name}"
    assert buffers and all(torch.equal(b, buffers[n]) for n, b in target.named_buffers())


def test_ema_update_refuses_mismatched_networks():
    """zip would silently pair the first parameters only: a different count or shape is an error."""
    with pytest.raises(ValueError, match="parameters"):
        ema_update(torch.nn.Linear(3, 2), torch.nn.Linear(3, 2, bias=False), 0.9)
    with pytest.raises(ValueError, match="shape"):
        ema_update(torch.nn.Linear(3, 2), torch.nn.Linear(2, 3), 0.9)
    with pytest.raises(ValueError, match="parameters"):
        ema_update(torch.nn.Sequential(torch.nn.Linear(3, 3)), torch.nn.Sequential(torch.nn.Linear(3, 3),
                                                                                 torch.nn.Linear(3, 3)), 0.9)


def test_byol_target_follows_cosine_momentum():
    method = small("byol")
    online0 = copy.deepcopy(method.encoder.state_dict())
    target0 = copy.deepcopy(method.target_encoder.state_dict())
    with torch.no_grad():  # move the online network away from the target
        for p in method.encoder.parameters():
            p.add_(1.0)
    logs = method.on_step_end(None, StepContext(step=3, total_steps=10))
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
    out = method.training_step(views, StepContext())
    assert torch.equal(method.queue.features, queue_before), "forward must not touch the queue"
    method.on_step_end(out, StepContext())
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


def test_fixed_lr_group_keeps_the_peak_learning_rate():
    from sslbench.benchmark.config import OptimConfig
    from sslbench.benchmark.optim import set_lr

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [a]}, {"params": [b], "fixed_lr": True, "lr_scale": 2.0}],
                          OptimConfig(name="sgd"), 0.4)
    set_lr(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), pytest.approx(0.8)]


def test_step_context_epochs_and_seeded_generators():
    ctx = StepContext(step=7, total_steps=20, steps_per_epoch=3, seed=5)
    assert ctx.epoch == 2 and ctx.epoch_float == pytest.approx(7 / 3)
    a = torch.rand(3, generator=ctx.generator())
    assert torch.equal(a, torch.rand(3, generator=StepContext(7, 20, 3, seed=5).generator()))
    assert not torch.equal(a, torch.rand(3, generator=StepContext(8, 20, 3, seed=5).generator()))
    with pytest.raises(ValueError, match="steps_per_epoch 0"):
        StepContext(steps_per_epoch=0)
