"""CPC v2: the InfoNCE over patches against a naive float64 loop, the row-causal context network,
the patch grid (patches, grid mean, layer norm, rebuild from its spec), the per-patch augmentation
(reproducible from the step context, independent per patch), and a checkpoint round trip."""

import math

import pytest
import torch

from sslbench.benchmark.augment import crop_resize
from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.errors import ConfigError
from sslbench.methods import StepContext, get_method
from sslbench.methods.base import InputSpec
from sslbench.methods.cpc import (
    CPCConfig,
    PatchGridEncoder,
    PixelCNNContext,
    augment_patches,
    cpc_infonce,
    orient,
)
from sslbench.methods.encoders import EncoderSpec, build_encoder

GRAY = InputSpec(1, 16, (0.5,), (0.25,))

# ------------------------------------------------------------------------------------------------
# Naive reference (Python loops in float64, from CPC v2 eq. 1-2 / App. A)


def naive_infonce(preds: torch.Tensor, targets: torch.Tensor, k: int, scale: float) -> float:
    """-mean over (b, i < H - k, j) of log softmax over every (b', i', j') of s <p_bij, t_b'i'j'>,
    at the target (b, i + k, j)."""
    p, t = preds.double().tolist(), targets.double().tolist()
    b, d, h, w = targets.shape
    keys = [(bb, ii, jj) for bb in range(b) for ii in range(h) for jj in range(w)]

    def score(q, key):
        return scale * sum(p[q[0]][c][q[1]][q[2]] * t[key[0]][c][key[1]][key[2]] for c in range(d))

    total, n = 0.0, 0
    for bb in range(b):
        for i in range(h - k):
            for j in range(w):
                s = [score((bb, i, j), key) for key in keys]
                top = max(s)
                log_z = top + math.log(sum(math.exp(v - top) for v in s))
                total -= score((bb, i, j), (bb, i + k, j)) - log_z
                n += 1
    return total / n


@pytest.mark.parametrize("k, scale", [(1, 1.0), (2, 0.1), (3, 2.0)])
def test_infonce_matches_the_naive_loop(k, scale):
    g = torch.Generator().manual_seed(k)
    preds, targets = torch.randn(3, 4, 4, 3, generator=g), torch.randn(3, 4, 4, 3, generator=g)
    loss = cpc_infonce(preds, targets, k, scale)
    assert loss.item() == pytest.approx(naive_infonce(preds, targets, k, scale), rel=1e-5)


def test_infonce_positive_is_k_rows_below_and_every_patch_is_a_negative():
    """Targets that are one-hot codes of their position: a prediction equal to the code of
    (b, i + k, j) gets the loss log(1 + (N - 1) e^{-s}) with N - 1 = B H W - 1 negatives."""
    b, h, w, k, s = 2, 4, 3, 2, 5.0
    n = b * h * w
    targets = torch.eye(n, dtype=torch.float64).T.reshape(n, b, h, w).permute(1, 0, 2, 3)  # (B, N, H, W)
    preds = torch.zeros_like(targets)
    preds[:, :, : h - k] = targets[:, :, k:]
    expected = math.log(1 + (n - 1) * math.exp(-s))
    assert cpc_infonce(preds, targets, k, s).item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="rows_ahead"):
        cpc_infonce(preds, targets, h, s)


def test_infonce_gradient_closed_form():
    """dL/dp_q = s (sum_key softmax_q(key) t_key - t_pos(q)) / N for every query q."""
    g = torch.Generator().manual_seed(7)
    preds = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
    k, s = 1, 0.5
    cpc_infonce(preds, targets, k, s).backward()
    t = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    grad = preds.grad.permute(0, 2, 3, 1)  # (B, H, W, D)
    n = 2 * 2 * 2
    for bb in range(2):
        for i in range(2):
            for j in range(2):
                p = preds[bb, :, i, j].detach()
                soft = torch.softmax(s * t @ p, dim=0)
                expected = s * (soft @ t - targets[bb, :, i + k, j]) / n
                torch.testing.assert_close(grad[bb, i, j], expected)
        assert torch.equal(grad[bb, 2], torch.zeros_like(grad[bb, 2]))  # the last row predicts nothing


# ------------------------------------------------------------------------------------------------
# Context network and directions


def test_context_is_row_causal():
    """c[:, :, i, j] depends on the latents of rows i - blocks .. i exactly: never on a row below
    (the rows it predicts), its own row included, one more row above per block (2x1 kernels)."""
    torch.manual_seed(0)
    net = PixelCNNContext(6, hidden=8, blocks=3).double()
    z = torch.randn(2, 6, 6, 4, dtype=torch.float64, requires_grad=True)
    c = net(z)
    for i in range(6):
        (grad,) = torch.autograd.grad(c[:, :, i].sum(), z, retain_graph=True)
        seen = grad.abs().sum(dim=(0, 1, 3)) > 0
        assert seen.tolist() == [max(0, i - 3) <= r <= i for r in range(6)], f"row {i} sees rows {seen.tolist()}"
    # The 1x3 convolutions spread a row's information along the row (3 blocks: 3 columns each way).
    (grad,) = torch.autograd.grad(c[:, :, 4, 0].sum(), z)
    assert grad[:, :, 4, 3].abs().sum() > 0


def test_orient_turns_each_direction_into_top_to_bottom():
    z = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    assert torch.equal(orient(z, 0), z)
    assert torch.equal(orient(z, 1)[:, :, 0], z[:, :, 2])  # bottom row first
    assert torch.equal(orient(z, 2)[:, :, 0], z[:, :, :, 0])  # left column first
    assert torch.equal(orient(z, 3)[:, :, 0], z[:, :, :, 3])  # right column first
    assert orient(z, 2).shape == (1, 2, 4, 3)


# ------------------------------------------------------------------------------------------------
# The patch grid


def test_patches_are_the_grid_slices_and_features_their_mean():
    enc = PatchGridEncoder("small-cnn", GRAY, patch=8, stride=4, norm="layer").eval()
    x = torch.randn(2, 1, 16, 17)
    assert enc.grid_size(16, 17) == (3, 3)  # the last column of pixels is not covered
    patches = enc.patches(x).view(2, 3, 3, 1, 8, 8)
    for i in range(3):
        for j in range(3):
            assert torch.equal(patches[:, i, j], x[:, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8])
    z = enc.grid(x)
    assert z.shape == (2, 256, 3, 3)
    torch.testing.assert_close(z[:, :, 1, 2], enc.backbone(x[:, :, 4:12, 8:16]))
    torch.testing.assert_close(enc(x), z.mean(dim=(2, 3)))


def test_layer_norm_patches_are_encoded_independently_of_the_batch():
    """CPC v2's reason for layer norm: in training mode a patch's latent must not depend on the
    other patches of the batch (batch norm's statistics would let them leak)."""
    torch.manual_seed(0)
    ln = PatchGridEncoder("small-cnn", GRAY, patch=8, stride=4, norm="layer").train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ln.modules())
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(ln.grid(x)[:1], ln.grid(x[:1]))
    bn = PatchGridEncoder("small-cnn", GRAY, patch=8, stride=4, norm="batch").train()
    assert not torch.allclose(bn.grid(x)[:1], bn.grid(x[:1]))


def test_patch_grid_rebuilds_from_the_method_spec():
    cfg = CPCConfig(patch_size=8, patch_stride=4)
    spec = get_method("cpc").cls.encoder_spec(cfg, GRAY)
    assert spec == EncoderSpec("patch-grid", {"patch": 8, "stride": 4, "norm": "layer"})
    torch.manual_seed(1)
    a, dim = build_encoder("small-cnn", GRAY, spec)
    b, _ = build_encoder("small-cnn", GRAY, EncoderSpec(spec.name, dict(spec.to_dict()["args"])))
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 1, 16, 16)
    assert isinstance(a, PatchGridEncoder) and dim == 256
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="patch"):
        build_encoder("small-cnn", GRAY, EncoderSpec("patch-grid", {"patch": 20, "stride": 4}))


# ------------------------------------------------------------------------------------------------
# Patch-level augmentation


def _gen(step: int) -> torch.Generator:
    return StepContext(step=step, total_steps=10, seed=3).generator()


def test_patch_augmentation_is_reproducible_from_the_step_context():
    x = torch.randn(12, 3, 8, 8)
    kw = dict(crop_scale=0.6, flip_p=0.5, color_drop_p=0.5, jitter=0.3)
    a, b = augment_patches(x, _gen(4), **kw), augment_patches(x, _gen(4), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, augment_patches(x, _gen(5), **kw))


def test_patch_augmentation_off_is_the_identity_and_flip_mirrors():
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(augment_patches(x, _gen(0)), x)
    torch.testing.assert_close(augment_patches(x, _gen(0), flip_p=1.0), x.flip(-1))


def test_patch_augmentation_draws_per_patch():
    """Identical patches get different crops, jitter and channel drops; colour dropping keeps
    exactly one channel (the others are 0, the normalised mean); the crop is a crop_resize of a
    square box of side >= crop_scale x the patch."""
    x = torch.randn(1, 3, 8, 8).expand(64, 3, 8, 8).contiguous()
    out = augment_patches(x, _gen(1), crop_scale=0.5, color_drop_p=1.0)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 32
    kept = (out.abs().sum(dim=(2, 3)) > 0).sum(dim=1)
    assert torch.equal(kept, torch.ones(64, dtype=torch.long))
    u = torch.rand((64, 8), generator=_gen(1))
    side = 8 * (0.5 + 0.5 * u[:, 0])
    boxes = torch.stack((u[:, 1] * (8 - side), u[:, 2] * (8 - side), side, side), dim=1)
    cropped = crop_resize(x, boxes, 8, u[:, 3] < 0.0)
    keep = torch.nn.functional.one_hot((u[:, 7] * 3).long(), 3).float()[:, :, None, None]
    torch.testing.assert_close(out, cropped * keep)
    gray = augment_patches(x[:, :1], _gen(1), color_drop_p=1.0)  # no colour to drop
    torch.testing.assert_close(gray, x[:, :1])


def test_jitter_is_contrast_around_the_patch_mean_plus_brightness():
    x = torch.randn(5, 1, 6, 6)
    out = augment_patches(x, _gen(2), jitter=0.4)
    u = torch.rand((5, 8), generator=_gen(2))
    a, b = 1 + 0.4 * (2 * u[:, 4] - 1), 0.4 * (2 * u[:, 5] - 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (x - m) * a.view(-1, 1, 1, 1) + m + b.view(-1, 1, 1, 1))


# ------------------------------------------------------------------------------------------------
# The method


def _method(**overrides):
    args = dict(patch_size=8, patch_stride=2, context_hidden=8, context_blocks=2, target_dim=8,
                min_rows_ahead=1, max_rows_ahead=2, directions=2, **overrides)
    torch.manual_seed(0)
    enc, dim = build_encoder("small-cnn", GRAY, get_method("cpc").cls.encoder_spec(CPCConfig(**args), GRAY))
    return get_method("cpc").build(enc, dim, args)


def test_config_validation():
    for bad in ({"norm": "group"}, {"directions": 3}, {"min_rows_ahead": 0}, {"min_rows_ahead": 3, "max_rows_ahead": 2},
                {"emb_scale": 0.0}, {"patch_crop_scale": 0.0}, {"color_drop_p": 1.5}, {"patch_size": 0}):
        with pytest.raises(ValueError):
            CPCConfig(**bad)
    with pytest.raises(ConfigError, match="patch-grid encoder"):
        get_method("cpc").build(*build_backbone("small-cnn", 1, 16), {})


def test_loss_is_the_mean_over_directions_of_the_summed_offsets():
    method = _method()
    x = torch.randn(3, 1, 16, 16)
    ctx = StepContext(step=2, total_steps=10, seed=1)
    out = method.training_step([x], ctx)
    with torch.no_grad():
        enc = method.encoder
        z = enc.encode(method.augmented_patches(x, ctx), (5, 5))
        per_direction = []
        for d, head in enumerate(method.heads):
            zd = orient(z, d)
            c, t = head.context(zd), head.target(zd)
            per_direction.append(sum(naive_infonce(w(c), t, k, 0.1) for k, w in zip((1, 2), head.predictors)))
    assert out.loss.item() == pytest.approx(sum(per_direction) / 2, rel=1e-4)
    assert out.logs["loss_direction1"].item() == pytest.approx(per_direction[1], rel=1e-4)
    out.loss.backward()
    assert method.encoder.backbone[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="rows"):  # a 2x2 grid has no row 2 below another
        method.training_step([torch.randn(2, 1, 10, 10)], ctx)


def test_checkpoint_of_a_pretraining_loads_back_through_load_encoder(tmp_path):
    from sslbench.benchmark.engine import load_encoder, pretrain
    from sslbench.benchmark.recipes import resolve

    cfg = resolve("cpc-quick", ["data.dataset=synthetic", "data.batch_size=64", "train.epochs=1",
                                "train.device=cpu", "method.patch_stride=2", "method.context_hidden=8",
                                "method.context_blocks=1"])
    result = pretrain(cfg, tmp_path / "run", tracking=None, progress=False)
    encoder, meta = load_encoder(result.checkpoint)
    assert isinstance(encoder, PatchGridEncoder) and encoder.norm == "layer"
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), result.encoder.eval()(x), rtol=0, atol=0)
