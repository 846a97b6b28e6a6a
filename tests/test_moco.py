"""MoCo v1 (shuffling BN, queue, InfoNCE at tau 0.07) and MoCo v3 (symmetric 2-tau contrastive
loss, cosine momentum, frozen random patch projection): formulas against naive loops, and the
properties each method relies on."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.config import OptimConfig
from sslbench.benchmark.optim import build_optimizer
from sslbench.methods import shuffle_bn as sbn
from sslbench.methods.base import StepContext
from sslbench.methods.losses import info_nce
from sslbench.methods.mocov1 import MoCoV1, MoCoV1Config
from sslbench.methods.mocov3 import MoCoV3, MoCoV3Config, mocov3_loss
from sslbench.methods.shuffle_bn import (
    SplitBatchNorm,
    batch_shuffle,
    batch_unshuffle,
    convert_split_batchnorm,
)

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def views(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, size, size, generator=g) for _ in range(2)]


def build_v1(**kw):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    return MoCoV1(backbone, dim, MoCoV1Config(**{"queue_size": 24, "proj_dim": 16, "bn_splits": 2, **kw}))


def tiny_vit():
    """A one-block timm ViT with 4 px patches (the vit-tiny-small layout, smaller and faster)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=0, embed_dim=32, depth=1,
                             num_heads=2), 32


def build_v3(backbone="small-cnn", **kw):
    torch.manual_seed(0)
    encoder, dim = tiny_vit() if backbone == "vit" else build_backbone(backbone, 1, 16)
    args = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "temperature": 0.2, **kw}
    return MoCoV3(encoder, dim, MoCoV3Config(**args))


# ------------------------------------------------------------------------------------------------
# Shuffling BN


def test_split_batchnorm_normalises_each_sub_batch_separately():
    """Training mode: sub-batch s (rows s, s+S, ...) is normalised with its own statistics; the
    running statistics are the mean over sub-batches of BN's update; eval mode is plain BN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 4, 5, generator=g, dtype=torch.float64) * 2 + 1
    bn = SplitBatchNorm(3, num_splits=4, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.4]))
        bn.running_var.copy_(torch.tensor([1.5, 0.7, 2.0]))
    rm0, rv0 = bn.running_mean.clone(), bn.running_var.clone()
    out = bn(x)
    expected = torch.empty_like(x)
    means, vars_unbiased = [], []
    for s in range(4):
        part = x[s::4]
        for c in range(3):
            v = part[:, c]
            mu, var = v.mean(), ((v - v.mean()) ** 2).mean()  # biased variance normalises
            expected[s::4, c] = (v - mu) / torch.sqrt(var + bn.eps) * bn.weight[c] + bn.bias[c]
        means.append(part.mean(dim=(0, 2, 3)))
        vars_unbiased.append(part.var(dim=(0, 2, 3), unbiased=True))
    torch.testing.assert_close(out, expected, **TIGHT)
    torch.testing.assert_close(bn.running_mean, torch.stack([0.7 * rm0 + 0.3 * m for m in means]).mean(0), **TIGHT)
    torch.testing.assert_close(bn.running_var, torch.stack([0.7 * rv0 + 0.3 * v for v in vars_unbiased]).mean(0),
                               **TIGHT)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    plain = torch.nn.BatchNorm2d(3).double().eval()
    plain.load_state_dict(bn.state_dict())
    torch.testing.assert_close(bn(x), plain(x), **TIGHT)
    with pytest.raises(ValueError, match="divisible"):
        bn.train()(x[:10])


def test_split_batchnorm_network_equals_the_network_on_each_sub_batch():
    """A converted encoder on the batch gives, row for row, the plain encoder run on each
    sub-batch alone (S simulated GPUs); the state-dict keys do not change."""
    torch.manual_seed(0)
    plain, _ = build_backbone("small-cnn", 1, 16)
    plain = plain.double()
    split = convert_split_batchnorm(copy.deepcopy(plain), 4)
    assert sum(isinstance(m, SplitBatchNorm) for m in split.modules()) == 4
    assert split.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    out = split(x)
    for s in range(4):
        torch.testing.assert_close(out[s::4], copy.deepcopy(plain)(x[s::4]), **TIGHT)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        convert_split_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), 2)


def test_shuffle_then_unshuffle_restores_the_order_exactly():
    x = torch.arange(16.0).reshape(8, 2)
    g = StepContext(step=3, seed=1).generator()
    shuffled, idx = batch_shuffle(x, g, across_ranks=False)
    assert not torch.equal(shuffled, x) and torch.equal(shuffled.sort(dim=0).values, x)
    assert torch.equal(batch_unshuffle(shuffled * 10, idx, across_ranks=False), x * 10)
    # one process, across_ranks: the gathers are the identity, the same permutation
    again, idx2 = batch_shuffle(x, StepContext(step=3, seed=1).generator())
    assert torch.equal(again, shuffled) and torch.equal(idx2, idx)


def test_ddp_shuffle_gives_each_rank_a_slice_of_the_global_permutation(monkeypatch):
    """The cross-rank path on two simulated ranks: every image of the global batch is encoded by
    exactly one rank, and unshuffling returns each rank its own rows in order."""
    world, n = 2, 5
    xs = [torch.arange(r * n, (r + 1) * n, dtype=torch.float64)[:, None].repeat(1, 3) for r in range(world)]
    gathered = {"value": torch.cat(xs)}
    monkeypatch.setattr(sbn, "gather_no_grad", lambda t: gathered["value"])
    monkeypatch.setattr(sbn, "world_size", lambda: world)
    monkeypatch.setattr(sbn, "is_initialized", lambda: False)  # no broadcast: same seed on both
    slices, undo = [], []
    for r in range(world):
        monkeypatch.setattr(sbn, "rank", lambda r=r: r)
        s, idx = batch_shuffle(xs[r], StepContext(step=2, seed=7).generator())
        slices.append(s)
        undo.append(idx)
    assert torch.equal(torch.cat(slices)[:, 0].sort().values, torch.arange(world * n, dtype=torch.float64))
    assert not torch.equal(torch.cat(slices), torch.cat(xs))
    gathered["value"] = torch.cat([s * 10 for s in slices])  # each rank's encoder outputs
    for r in range(world):
        monkeypatch.setattr(sbn, "rank", lambda r=r: r)
        assert torch.equal(batch_unshuffle(slices[r] * 10, undo[r]), xs[r] * 10)


# ------------------------------------------------------------------------------------------------
# MoCo v1


def naive_info_nce(q, k, queue, tau):
    """-log(exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t))), unit vectors, Python loops."""
    total = 0.0
    for i in range(q.shape[0]):
        qi = [float(v) for v in q[i] / q[i].norm()]
        dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
        ki = [float(v) for v in k[i] / k[i].norm()]
        pos = math.exp(dot(qi, ki) / tau)
        neg = sum(math.exp(dot(qi, [float(v) for v in n / n.norm()]) / tau) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_at_tau_007_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    q, k, queue = (torch.randn(s, 6, generator=g, dtype=torch.float64) for s in (5, 5, 9))
    assert float(info_nce(q, k, queue, 0.07)) == pytest.approx(naive_info_nce(q, k, queue, 0.07), rel=1e-10)


def test_mocov1_queue_excludes_current_keys_during_the_loss_and_is_fifo_after():
    method = build_v1(symmetric=True, temperature=0.07)
    assert isinstance(method.projector, torch.nn.Linear), "v1's head is one linear layer"
    assert method.shuffle_bn == "split"
    assert all(any(isinstance(m, SplitBatchNorm) for m in net.modules())
               for net in (method.encoder, method.key_encoder))
    queue0 = method.queue.features.clone()
    filled = []
    for step in range(4):  # 8 keys per step into 24 slots: wraps at step 3
        vs = views(seed=step)
        before = method.queue.features.clone()
        ctx = StepContext(step=step, total_steps=4)
        out = method.training_step(vs, ctx)
        assert torch.equal(method.queue.features, before), "the forward must not touch the queue"
        keys = out.state["keys"]
        assert torch.cdist(keys, before).min() > 1e-3, "a current key is already in the queue"
        # the loss is InfoNCE against the queue as it was before this step
        q1, q2 = (method.projector(method.encoder(v)) for v in vs)
        k1, k2 = keys.chunk(2)
        expected = naive_info_nce(q1.detach(), k2, before, 0.07) + naive_info_nce(q2.detach(), k1, before, 0.07)
        assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
        method.on_step_end(out, ctx)
        filled.append(keys)
    recent = torch.cat(filled)[-24:]  # FIFO: the last 24 keys, oldest overwritten first
    order = (torch.arange(24) + int(method.queue.ptr)) % 24
    torch.testing.assert_close(method.queue.features[order], recent)
    assert int(method.queue.ptr) == (4 * 8) % 24 and not torch.equal(queue0, method.queue.features)


def test_mocov1_keys_are_computed_per_image_whatever_the_shuffle():
    """BN in eval mode makes every row independent: shuffled keys then equal unshuffled ones,
    so the shuffle is exactly undone; in training mode split BN makes them differ."""
    vs = views(n=8)
    a, b = build_v1(), build_v1(shuffle_bn="off")
    b.load_state_dict(a.state_dict())
    ctx = StepContext(step=1)
    a.eval(), b.eval()
    torch.testing.assert_close(a._keys(vs[1], ctx, 1), b._keys(vs[1], ctx, 1), rtol=1e-5, atol=1e-6)
    a.train(), b.train()
    assert not torch.allclose(a._keys(vs[1], ctx, 1), b._keys(vs[1], ctx, 1), atol=1e-4)


def test_mocov1_config_and_mode_errors():
    with pytest.raises(ValueError, match="shuffle_bn"):
        MoCoV1Config(shuffle_bn="sync")
    with pytest.raises(ValueError, match="bn_splits"):
        MoCoV1Config(bn_splits=0)
    method = build_v1(shuffle_bn="ddp")
    assert not any(isinstance(m, SplitBatchNorm) for m in method.modules())
    with pytest.raises(RuntimeError, match="process group"):
        method.training_step(views(), StepContext())


# ------------------------------------------------------------------------------------------------
# MoCo v3


def naive_ctr(q, k, tau):
    """2 tau * mean_i -log(exp(s_ii) / sum_j exp(s_ij)), s_ij = cos(q_i, k_j) / tau, in loops."""
    total = 0.0
    for i in range(q.shape[0]):
        s = [float(F.cosine_similarity(q[i], k[j], dim=0)) / tau for j in range(k.shape[0])]
        total += -s[i] + math.log(sum(math.exp(v) for v in s))
    return 2 * tau * total / q.shape[0]


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_mocov3_loss_matches_a_naive_loop_with_2tau_scaling(tau):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2))
    assert float(mocov3_loss(q, k, tau)) == pytest.approx(naive_ctr(q, k, tau), rel=1e-10)


def test_mocov3_gathered_keys_average_to_the_joint_loss_and_gradient():
    """Two ranks with all keys and label offset rank x N: mean loss and the (DDP-averaged)
    gradient equal one process on the joint batch."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(8, 5, generator=g, dtype=torch.float64)
    joint = mocov3_loss(q, k, 0.2)
    (grad_joint,) = torch.autograd.grad(joint, q)
    parts = [mocov3_loss(q[r * 4:(r + 1) * 4], k[r * 4:(r + 1) * 4], 0.2, all_k=k, offset=r * 4) for r in (0, 1)]
    mean = torch.stack(parts).mean()
    (grad_parts,) = torch.autograd.grad(mean, q)
    torch.testing.assert_close(mean, joint, **TIGHT)
    torch.testing.assert_close(grad_parts, grad_joint, **TIGHT)
    with pytest.raises(ValueError, match="offset"):
        mocov3_loss(q[:4], k[:4], 0.2, all_k=k, offset=6)


def test_mocov3_loss_is_the_symmetric_sum():
    method = build_v3()
    vs = views()
    out = method.training_step(vs, StepContext())
    q1, q2 = (method.predictor(method.projector(method.encoder(v))) for v in vs)
    with torch.no_grad():
        k1, k2 = (method.momentum_projector(method.momentum_encoder(v)) for v in vs)
    torch.testing.assert_close(out.loss, mocov3_loss(q1, k2, 0.2) + mocov3_loss(q2, k1, 0.2))
    torch.testing.assert_close(method.training_step(vs[::-1], StepContext()).loss, out.loss)
    # heads as moco-v3's builder: ResNet-style 2-layer projector with output BN, predictor without
    assert sum(isinstance(m, torch.nn.Linear) for m in method.projector) == 2
    assert isinstance(method.projector[-1], torch.nn.BatchNorm1d) and not method.projector[-1].affine
    assert isinstance(method.predictor[-1], torch.nn.Linear)
    vit_heads = build_v3(proj_layers=3, pred_last_bn=True)
    assert sum(isinstance(m, torch.nn.Linear) for m in vit_heads.projector) == 3
    assert isinstance(vit_heads.predictor[-1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("step", [0, 3, 9])
def test_mocov3_momentum_follows_its_closed_form(step):
    method = build_v3(base_momentum=0.99)
    online0 = copy.deepcopy(method.encoder.state_dict())
    target0 = copy.deepcopy(method.momentum_encoder.state_dict())
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    logs = method.on_step_end(None, StepContext(step=step, total_steps=10))
    m = 1 - (1 - 0.99) * (math.cos(math.pi * (step + 1) / 10) + 1) / 2  # m(step + 1), the repo's
    assert logs["ema_momentum"] == pytest.approx(m, abs=1e-12)
    key = "0.0.weight"
    expected = m * target0[key] + (1 - m) * (online0[key] + 1.0)
    torch.testing.assert_close(method.momentum_encoder.state_dict()[key], expected)
    assert build_v3(momentum_cosine=False).momentum_at(step, 10) == 0.99


def test_mocov3_frozen_patch_projection_is_bit_identical_and_not_optimised():
    method = build_v3("vit", freeze_patch_embed=True)
    proj = method.encoder.patch_embed.proj
    bound = math.sqrt(6 / (1 * 4 * 4 + proj.out_channels))
    assert proj.weight.abs().max() <= bound and torch.equal(proj.bias, torch.zeros_like(proj.bias))
    trained = {id(p) for g in method.param_groups() for p in g["params"]}
    assert id(proj.weight) not in trained and id(proj.bias) not in trained
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    w0, b0 = proj.weight.clone(), proj.bias.clone()
    blocks0 = method.encoder.blocks[0].attn.qkv.weight.clone()
    opt = build_optimizer(method.param_groups(), OptimConfig(name="adamw", weight_decay=0.1), 1e-3)
    out = method.training_step(views(), StepContext())
    out.loss.backward()
    opt.step()
    method.on_step_end(out, StepContext(total_steps=5))
    assert proj.weight.grad is None
    assert torch.equal(proj.weight, w0) and torch.equal(proj.bias, b0)
    # the momentum copy follows by EMA of equal tensors (exact up to rounding, as in the repo)
    torch.testing.assert_close(method.momentum_encoder.patch_embed.proj.weight, w0, rtol=1e-6, atol=1e-7)
    assert not torch.equal(method.encoder.blocks[0].attn.qkv.weight, blocks0), "the rest trains"


def test_mocov3_freeze_patch_embed_needs_a_vit():
    with pytest.raises(ValueError, match="patch_embed"):
        build_v3("small-cnn", freeze_patch_embed=True)
    with pytest.raises(ValueError, match="temperature"):
        MoCoV3Config(temperature=0)
