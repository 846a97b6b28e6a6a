"""SimCLR v2: the 3-layer projector with BN on every layer, the momentum memory (FIFO of EMA-encoder
keys that never holds the current batch's keys during the loss), the fine-tune module."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.recipes import resolve
from sslbench.methods import StepContext, get_method
from sslbench.methods.losses import info_nce_from_similarities, nt_xent, simclr_similarities
from sslbench.methods.simclrv2 import ChannelScale


def build(**args):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    base = dict(proj_hidden_dim=32, proj_dim=16, temperature=0.2)
    return get_method("simclrv2").build(backbone, dim, {**base, **args})


def views(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 16, 16, generator=g) for _ in range(2)]


def test_projector_has_three_layers_with_bn_on_every_one():
    method = build()
    kinds = [type(m) for m in method.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU,
                     nn.Linear, nn.BatchNorm1d, ChannelScale]
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (method.feature_dim, 32), (32, 32), (32, 16)]
    assert all(m.bias is None for m in linears)  # BN follows every linear layer
    bns = [m for m in method.projector if isinstance(m, nn.BatchNorm1d)]
    assert bns[0].affine and bns[1].affine  # hidden: scale and shift (tf2 center=True)
    assert not bns[2].affine and method.projector[-1].weight.shape == (16,)  # output: scale only
    z = method.projector(torch.randn(6, method.feature_dim))
    assert z.shape == (6, 16)
    # hidden width 0 = the backbone's width (the tf2 code's default)
    assert build(proj_hidden_dim=0).projector[0].out_features == build().feature_dim


def test_defaults_are_the_papers():
    cfg = get_method("simclrv2").config()
    assert (cfg.proj_layers, cfg.proj_dim, cfg.temperature, cfg.finetune_from_layer) == (3, 128, 0.1, 1)
    imagenet = resolve("simclrv2-imagenet").method_args
    assert (imagenet["memory_size"], imagenet["memory_momentum"]) == (65536, 0.999)


def test_without_memory_it_is_simclr_with_the_deeper_head():
    method = build(memory_size=0)
    assert not hasattr(method, "memory") and not any(not p.requires_grad for p in method.parameters())
    v = views(0)
    out = method.training_step(v, StepContext())
    z1, z2 = method.projector(method.encoder(torch.cat(v))).chunk(2)
    assert torch.allclose(out.loss, nt_xent(z1, z2, 0.2), atol=1e-6)
    assert method.on_step_end(out, StepContext()) == {}


def test_memory_is_a_fifo_of_ema_keys_outside_the_current_loss():
    method = build(memory_size=12, memory_momentum=0.9)
    assert all(not p.requires_grad for p in method.key_encoder.parameters())
    trained = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not any(id(p) in trained for p in method.key_encoder.parameters())
    with torch.no_grad():  # move the online networks away from the key networks
        for p in list(method.encoder.parameters()) + list(method.projector.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    memory0 = method.memory.features.clone()
    key_nets = copy.deepcopy((method.key_encoder, method.key_projector))

    v = views(1)
    out = method.training_step(v, StepContext())
    assert torch.equal(method.memory.features, memory0), "forward must not touch the memory"
    # the loss contrasts against the memory as it was before this batch (no own keys in it)
    z1, z2 = method.projector(method.encoder(torch.cat(v))).chunk(2)
    pos, neg = simclr_similarities(z1, z2, extra_negatives=memory0)
    assert neg.shape == (8, 6 + 12)
    assert torch.allclose(out.loss, info_nce_from_similarities(pos, neg, 0.2), atol=1e-6)
    # the keys are the momentum networks' normalised projections of both views
    with torch.no_grad():
        expected = F.normalize(key_nets[1](key_nets[0](torch.cat(v))), dim=1)
        online = F.normalize(torch.cat([z1, z2]), dim=1)
    keys = out.state["keys"]
    assert torch.allclose(keys, expected, atol=1e-6) and not torch.allclose(keys, online, atol=1e-3)

    online_w = method.encoder[0][0].weight.detach().clone()
    key_w = method.key_encoder[0][0].weight.detach().clone()
    method.on_step_end(out, StepContext())
    assert torch.allclose(method.key_encoder[0][0].weight, 0.9 * key_w + 0.1 * online_w, atol=1e-7)
    assert torch.equal(method.memory.features[:8], keys) and int(method.memory.ptr) == 8
    assert torch.equal(method.memory.features[8:], memory0[8:])
    # second step: 8 more keys wrap around (FIFO): slots 8-11, then 0-3
    out2 = method.training_step(views(2), StepContext(step=1, total_steps=2))
    method.on_step_end(out2, StepContext(step=1, total_steps=2))
    keys2 = out2.state["keys"]
    assert torch.equal(method.memory.features[8:12], keys2[:4])
    assert torch.equal(method.memory.features[0:4], keys2[4:])
    assert torch.equal(method.memory.features[4:8], keys[4:]) and int(method.memory.ptr) == 4


@pytest.mark.parametrize("layer, dim", [(0, None), (1, 32), (2, 32), (3, 16)])
def test_finetune_module_is_encoder_plus_first_projector_layers(layer, dim):
    method = build(finetune_from_layer=layer, memory_size=8)
    module = method.finetune_module()
    expected = dim or method.feature_dim
    assert method.finetune_dim == expected
    module.eval()
    x = torch.randn(3, 1, 16, 16)
    feats = module(x)
    assert feats.shape == (3, expected)
    if layer == 1:  # encoder -> Linear -> BN -> ReLU, with the method's weights
        method.eval()
        with torch.no_grad():
            ref = method.projector[:3](method.encoder(x))
        assert torch.allclose(feats, ref, atol=1e-6) and (feats >= 0).all()
    # a copy: fine-tuning it leaves the pretrained method alone
    first = next(module.parameters())
    assert first is not next(method.encoder.parameters())
    assert not any(isinstance(m, ChannelScale) for m in module) or layer == 3


def test_config_validation():
    entry = get_method("simclrv2")
    with pytest.raises(ValueError, match="finetune_from_layer"):
        entry.config(finetune_from_layer=4)
    with pytest.raises(ValueError, match="memory_size"):
        entry.config(memory_size=-1)
    with pytest.raises(ValueError, match="memory_momentum"):
        entry.config(memory_momentum=1.5)
