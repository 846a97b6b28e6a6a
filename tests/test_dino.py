"""DINO: the loss against a naive loop over the paper's formula, the centre and temperature
schedules, the frozen last layer, the EMA teacher, and ViT / ResNet backbones under multi-crop."""

import copy
import math

import numpy as np
import pytest
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.config import OptimConfig
from sslbench.benchmark.optim import build_optimizer
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods import get_method
from sslbench.methods.base import StepContext, StepOutput
from sslbench.methods.dino import DINOConfig, dino_loss, teacher_temperature

IMAGE = 16


def small_dino(backbone="small-cnn", **kw):
    torch.manual_seed(0)
    encoder, dim = build_backbone(backbone, 1, IMAGE)
    args = {"hidden_dim": 32, "bottleneck_dim": 8, "out_dim": 24, **kw}
    return get_method("dino").build(encoder, dim, args)


def multicrop_views(batch=4, num_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 1, IMAGE, IMAGE, generator=g) for _ in range(2)]
            + [torch.randn(batch, 1, IMAGE // 2, IMAGE // 2, generator=g) for _ in range(num_local)])


def naive_dino_loss(student, teacher, center, tau_s, tau_t):
    """The paper's Eq. (3) with Algorithm 1's centring, as plain Python floats: for every global
    view i and every other view j, H(P_t^i, P_s^j) averaged over the batch, then over pairs."""
    num_views, batch, k = len(student), student[0].shape[0], student[0].shape[1]
    total, pairs = 0.0, 0
    for i in range(len(teacher)):
        for j in range(num_views):
            if i == j:
                continue
            pair = 0.0
            for b in range(batch):
                t = [(float(teacher[i][b, q]) - float(center[0, q])) / tau_t for q in range(k)]
                t_max = max(t)
                z_t = sum(math.exp(x - t_max) for x in t)
                s = [float(student[j][b, q]) / tau_s for q in range(k)]
                s_max = max(s)
                log_z_s = s_max + math.log(sum(math.exp(x - s_max) for x in s))
                pair += -sum(math.exp(t[q] - t_max) / z_t * (s[q] - log_z_s) for q in range(k))
            total += pair / batch
            pairs += 1
    return total / pairs


def test_loss_matches_naive_loop_with_centring_and_temperatures():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]  # 2 global + 2 local
    teacher = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 5, generator=g, dtype=torch.float64)
    for tau_s, tau_t in ((0.1, 0.04), (0.5, 0.07), (1.0, 1.0)):
        got = dino_loss(student, teacher, center, tau_s, tau_t)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(naive_dino_loss(student, teacher, center, tau_s, tau_t), rel=1e-10)
    # The centre matters (a per-row constant shift would not).
    assert not math.isclose(dino_loss(student, teacher, center, 0.1, 0.04).item(),
                            dino_loss(student, teacher, torch.zeros_like(center), 0.1, 0.04).item())
    assert dino_loss(student, teacher, center + 3.0, 0.1, 0.04).item() == pytest.approx(
        dino_loss(student, teacher, center, 0.1, 0.04).item(), rel=1e-12)


def test_loss_gradient_reaches_the_student_only():
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    center = torch.randn(1, 4, generator=g, dtype=torch.float64)
    dino_loss(student, teacher, center, 0.1, 0.04).backward()
    assert all(t.grad is None for t in teacher) and all(s.grad is not None for s in student)
    assert torch.autograd.gradcheck(lambda *s: dino_loss(list(s), [t.detach() for t in teacher], center, 0.1, 0.04),
                                    tuple(s.detach().requires_grad_() for s in student))


def test_loss_of_the_joint_batch_is_the_mean_over_halves():
    """Per-sample given the centre: two data-parallel halves average to the joint-batch loss."""
    g = torch.Generator().manual_seed(2)
    student = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 5, generator=g, dtype=torch.float64)
    halves = [dino_loss([s[h] for s in student], [t[h] for t in teacher], center, 0.1, 0.04)
              for h in (slice(0, 3), slice(3, 6))]
    assert dino_loss(student, teacher, center, 0.1, 0.04).item() == pytest.approx(
        (halves[0] + halves[1]).item() / 2, rel=1e-12)


def test_teacher_temperature_warms_up_linearly_then_stays():
    schedule = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])  # the official array
    for epoch in range(100):
        assert teacher_temperature(epoch, 0.04, 0.07, 30) == pytest.approx(schedule[epoch], abs=1e-12)
    assert teacher_temperature(0, 0.04, 0.07, 30) == 0.04 and teacher_temperature(29, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07  # no warm-up
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04 and teacher_temperature(1, 0.04, 0.07, 1) == 0.07
    method = small_dino(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=3)
    out = method(multicrop_views(), StepContext(step=5, total_steps=20, steps_per_epoch=5))  # epoch 1
    assert out.logs["teacher_temp"] == pytest.approx(0.055)


def test_centre_is_an_ema_of_teacher_batch_means_closed_form():
    method = small_dino(center_momentum=0.9)
    views = multicrop_views()
    center0 = method.center.clone()
    out = method(views, StepContext())
    assert torch.equal(method.center, center0), "the forward pass must not touch the centre"
    with torch.no_grad():  # the teacher's mean over the global views only
        expected = method.teacher_head(method.teacher_encoder(torch.cat(views[:2]))).mean(0, keepdim=True)
    torch.testing.assert_close(out.state["batch_center"], expected, rtol=1e-5, atol=1e-6)

    g = torch.Generator().manual_seed(3)
    means = [torch.randn(1, 24, generator=g) for _ in range(5)]
    for k, x in enumerate(means):
        method.on_step_end(StepOutput(torch.zeros(()), {"teacher_temp": 0.04}, {"batch_center": x}),
                           StepContext(step=k, total_steps=10))
    closed = 0.9 ** 5 * center0 + sum(0.1 * 0.9 ** (4 - k) * x for k, x in enumerate(means))
    torch.testing.assert_close(method.center, closed, rtol=1e-5, atol=1e-6)
    assert "center" in method.state_dict()


def _step(method, optimizer, step, steps_per_epoch=1, total_steps=4):
    ctx = StepContext(step=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    out = method(multicrop_views(seed=step), ctx)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    method.before_optimizer_step(ctx)
    optimizer.step()
    method.on_step_end(out, ctx)
    return out


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_frozen_in_epoch_0_and_trained_in_epoch_1(norm_last_layer):
    method = small_dino(norm_last_layer=norm_last_layer, freeze_last_layer=1)
    # AdamW with weight decay: a zeroed gradient would still decay the weights; DINO drops it.
    optimizer = build_optimizer(method.param_groups(), OptimConfig(name="adamw", weight_decay=0.1), 1e-2)
    last = dict(method.head.last_layer.named_parameters())
    assert last["parametrizations.weight.original0"].requires_grad is (not norm_last_layer)
    before = {n: p.detach().clone() for n, p in last.items()}
    mlp_before = method.head.mlp[0].weight.detach().clone()
    _step(method, optimizer, step=0)  # epoch 0
    assert all(torch.equal(p, before[n]) for n, p in last.items())
    assert not torch.equal(method.head.mlp[0].weight, mlp_before)
    _step(method, optimizer, step=1)  # epoch 1
    v = last["parametrizations.weight.original1"]
    assert not torch.equal(v, before["parametrizations.weight.original1"])
    g = last["parametrizations.weight.original0"]
    assert torch.equal(g, before["parametrizations.weight.original0"]) is norm_last_layer
    if norm_last_layer:  # unit-norm rows of the effective weight
        torch.testing.assert_close(method.head.last_layer.weight.norm(dim=1), torch.ones(24))


def test_teacher_gets_no_gradient_and_follows_the_ema():
    method = small_dino(base_momentum=0.9)
    teacher = {f"teacher_{n}" for n, _ in [*method.encoder.named_parameters(prefix="encoder"),
                                           *method.head.named_parameters(prefix="head")]}
    params = dict(method.named_parameters())
    assert teacher <= set(params) and not any(params[n].requires_grad for n in teacher)
    trained = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not any(id(params[n]) in trained for n in teacher)
    optimizer = torch.optim.SGD([p for g in method.param_groups() for p in g["params"]], lr=0.1)
    teacher0 = {n: params[n].detach().clone() for n in teacher}
    ctx = StepContext(step=2, total_steps=10, steps_per_epoch=1)
    out = method(multicrop_views(), ctx)
    optimizer.zero_grad()
    out.loss.backward()
    assert all(params[n].grad is None for n in teacher)
    method.before_optimizer_step(ctx)
    optimizer.step()
    m = cosine_momentum(2, 10, 0.9)
    assert method.on_step_end(out, ctx)["ema_momentum"] == pytest.approx(m)
    for n in teacher:
        expected = m * teacher0[n] + (1 - m) * params[n.removeprefix("teacher_")].detach()
        torch.testing.assert_close(params[n].detach(), expected, rtol=1e-6, atol=1e-7, msg=n)


def test_gradients_are_clipped_per_parameter():
    method = small_dino(clip_grad=1e-3, freeze_last_layer=0)
    ctx = StepContext()
    method(multicrop_views(), ctx).loss.mul(1e3).backward()
    method.before_optimizer_step(ctx)
    norms = [p.grad.norm().item() for p in method.parameters() if p.grad is not None]
    assert norms and max(norms) <= 1e-3 * (1 + 1e-5)


@pytest.mark.parametrize("backbone", ["vit-tiny-small", "resnet18-small"])
def test_vit_and_resnet_take_a_multicrop_step(backbone):
    method = small_dino(backbone, use_bn_in_head=backbone.startswith("resnet"))
    optimizer = build_optimizer(method.param_groups(), OptimConfig(name="adamw"), 1e-3)
    teacher0 = copy.deepcopy(method.teacher_encoder.state_dict())
    out = _step(method, optimizer, step=1)  # epoch 1: the last layer trains too
    # teacher == student at start, so the teacher moves only if the student encoder trained
    assert torch.isfinite(out.loss)
    assert any(not torch.equal(v, method.teacher_encoder.state_dict()[k]) for k, v in teacher0.items())


def test_multicrop_checkpoint_resumes_exactly():
    """The registry smoke test with local views: state after step 0, reloaded, gives step 1 again."""
    def setup():
        method = small_dino(use_bn_in_head=True)
        return method, build_optimizer(method.param_groups(), OptimConfig(name="adamw"), 1e-3)

    method, optimizer = setup()
    _step(method, optimizer, step=0)
    state, opt_state = copy.deepcopy(method.state_dict()), copy.deepcopy(optimizer.state_dict())
    loss = _step(method, optimizer, step=1).loss
    resumed, opt_r = setup()
    resumed.load_state_dict(state)
    opt_r.load_state_dict(opt_state)
    torch.testing.assert_close(_step(resumed, opt_r, step=1).loss, loss, rtol=0, atol=0)
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, method.state_dict()[key], rtol=1e-6, atol=1e-7, msg=key)


def test_config_rejects_bad_values():
    for bad in ({"student_temp": 0.0}, {"center_momentum": 1.5}, {"out_dim": 0}, {"clip_grad": -1.0},
                {"freeze_last_layer": -1}):
        with pytest.raises(ValueError):
            DINOConfig(**bad)
