"""Background augmentation: the spectral residual against a naive numpy version of Hou & Zhang's
MATLAB code and on a blob image, the foreground mask, every mode's guarantee that foreground
pixels are unchanged, seeding, and that an unused section changes nothing (views, config hash)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sslbench.benchmark.background import (
    GREY,
    activation_saliency,
    composite,
    foreground_mask,
    spectral_residual_saliency,
)

# ------------------------------------------------------------------------------------------------
# Naive reference: Hou & Zhang's MATLAB code, step by step in numpy float64 (no resize: <= 64 px)


def naive_spectral_residual(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    spectrum = np.fft.fft2(gray)
    log_amp = np.log(np.abs(spectrum) + 1e-12)
    padded = np.pad(log_amp, 1, mode="edge")  # imfilter(..., fspecial('average', 3), 'replicate')
    local = np.zeros_like(log_amp)
    for i in range(h):
        for j in range(w):
            local[i, j] = padded[i:i + 3, j:j + 3].mean()
    residual = log_amp - local
    sal = np.abs(np.fft.ifft2(np.exp(residual) * np.exp(1j * np.angle(spectrum)))) ** 2
    sigma = 2.5 * w / 64  # 2.5 px at the 64 px working width
    r = min(max(1, math.ceil(2 * sigma)), h - 1, w - 1)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    k /= k.sum()
    p = np.pad(sal, r, mode="reflect")
    rows = np.stack([np.convolve(row, k, mode="valid") for row in p])  # symmetric kernel
    blurred = np.stack([np.convolve(col, k, mode="valid") for col in rows.T]).T
    return (blurred - blurred.min()) / (blurred.max() - blurred.min())


def blob_images(n: int = 3, side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Faint noise with one bright disc (radius 6 px) at a different place in each image."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centres = [(20, 40), (44, 16), (32, 32)][:n]
    blobs = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < 36) for cy, cx in centres])
    images = (0.1 * torch.rand(n, 1, side, side, generator=g) + 0.8 * blobs[:, None]).clamp(0, 1)
    return images, blobs


# ------------------------------------------------------------------------------------------------
# Saliency and masks


def test_spectral_residual_matches_the_naive_matlab_steps():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 20, 24, generator=g)
    got = spectral_residual_saliency(images)
    for i in range(2):
        ref = naive_spectral_residual(images[i, 0].double().numpy())
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_spectral_residual_highlights_the_blob():
    images, blobs = blob_images()
    for side in (64, 128):  # native working width, and the downsampling path
        x = torch.nn.functional.interpolate(images, size=(side, side), mode="nearest")
        b = torch.nn.functional.interpolate(blobs[:, None].float(), size=(side, side))[:, 0].bool()
        s = spectral_residual_saliency(x)
        assert s.shape == (3, side, side) and s.min() >= 0 and s.max() <= 1
        for i in range(3):
            assert s[i][b[i]].mean() > 5 * s[i][~b[i]].mean()
            peak = divmod(int(s[i].argmax()), side)
            near = torch.nonzero(b[i]).float().mean(0)
            assert math.dist(peak, near.tolist()) < side / 8  # the most salient point is at the blob
        mask = foreground_mask(s, 3.0)
        assert (mask & b).sum() > 0.5 * b.sum()  # the blob is mostly foreground ...
        assert mask.float().mean() < 0.15  # ... and the noise mostly background


def test_foreground_mask_is_relative_to_the_mean_and_constant_maps_are_background():
    s = torch.tensor([[[0.0, 0.1], [0.2, 0.9]]])  # mean 0.3
    assert foreground_mask(s, 1.0).tolist() == [[[False, False], [False, True]]]
    assert foreground_mask(s, 0.5).tolist() == [[[False, False], [True, True]]]
    assert not foreground_mask(spectral_residual_saliency(torch.full((1, 1, 16, 16), 0.5)), 3.0).any()


def test_activation_saliency_is_the_encoders_heat_map_in_eval_mode():
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    encoder.train()
    x = torch.rand(3, 1, 12, 12)
    s = activation_saliency(encoder, x)
    assert encoder.training and s.shape == (3, 12, 12) and s.min() >= 0 and s.max() <= 1
    encoder.eval()
    heat = encoder[:-2](x).sum(dim=1)
    lo, hi = heat.amin(dim=(1, 2), keepdim=True), heat.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(s, (heat - lo) / (hi - lo))  # same size: no resampling


# ------------------------------------------------------------------------------------------------
# Modes


def _batch(b: int = 6, c: int = 3, side: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (b, c, side, side), dtype=torch.uint8, generator=g)
    mask = torch.rand(b, side, side, generator=g) < 0.4
    return images, mask


@pytest.mark.parametrize("mode, fill", [("bg_rm", "grey"), ("bg_rm", "random"), ("bg_rm", "grayscale"),
                                        ("bg_random", "grey")])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_keeps_the_foreground_and_only_touches_applied_images(mode, fill, channels):
    images, mask = _batch(c=channels)
    apply = torch.tensor([True, False, True, True, False, True])
    u = torch.rand(6, 2, generator=torch.Generator().manual_seed(3))
    out = composite(images, mask, apply, mode, fill, u)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    fg = mask[:, None].expand_as(images)
    assert torch.equal(out[fg], images[fg])  # foreground pixels unchanged, in every mode
    assert torch.equal(out[~apply], images[~apply])  # images not drawn are untouched
    bg = (~mask[:, None] & apply.view(-1, 1, 1, 1)).expand_as(images)
    if mode == "bg_random":
        partner = (torch.arange(6) + 1 + (u[:, 1] * 5).long()) % 6
        assert (partner != torch.arange(6)).all()
        assert torch.equal(out[bg], images[partner][bg])
    elif fill == "grey":
        assert (out[bg] == GREY).all()
    elif fill == "random":
        levels = (u[:, 0] * 256).long().view(-1, 1, 1, 1).expand_as(images)
        assert torch.equal(out[bg], levels[bg].to(torch.uint8))
    elif channels == 3:  # grayscale: equal channels on the background
        assert torch.equal(out[:, 0][bg[:, 0]], out[:, 2][bg[:, 2]])
    else:
        assert torch.equal(out, images)  # 1 channel: already gray


# ------------------------------------------------------------------------------------------------
# The section: per-view composites, the BatchAugment hook, the config


def _section(**kw):
    from sslbench.benchmark.config import BackgroundConfig

    return BackgroundConfig(**{"mode": "bg_rm", "p": 1.0, "threshold": 1.0, **kw})


def test_views_get_their_own_seeded_composites_and_keep_the_foreground():
    from sslbench.benchmark.background import BackgroundAugment

    images, _ = blob_images(3, 64)
    images = (images * 255).round().to(torch.uint8)
    bg = BackgroundAugment(_section(p=0.5, fill="random"), (0.5,), (0.25,))
    mask = bg.masks(images)
    out = bg(images, 3, torch.Generator().manual_seed(0))
    again = bg(images, 3, torch.Generator().manual_seed(0))
    assert len(out) == 3 and all(torch.equal(a, b) for a, b in zip(out, again))  # seeded
    assert not all(torch.equal(out[0], o) for o in out[1:])  # each view draws its own
    fg = mask[:, None]
    for o in out:
        assert torch.equal(o[fg], images[fg])


def test_batch_augment_view_images_hook():
    """Without composites (or with the images themselves) the views are bit-identical to the plain
    call; with composites, each view is made from its own with the same crop and colour draws."""
    from sslbench.benchmark.augment import BatchAugment, get_augment_recipe

    aug = BatchAugment(get_augment_recipe("fmnist-quick"), (0.5,), (0.25,), 28)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=g)
    plain = aug(images, torch.Generator().manual_seed(1))
    same = aug(images, torch.Generator().manual_seed(1), view_images=[images, images])
    assert all(torch.equal(a, b) for a, b in zip(plain, same))
    grey = torch.full_like(images, 128)
    mixed = aug(images, torch.Generator().manual_seed(1), view_images=[images, grey])
    assert torch.equal(mixed[0], plain[0]) and not torch.equal(mixed[1], plain[1])
    assert torch.equal(mixed[1], aug(grey, torch.Generator().manual_seed(1))[1])  # same draws
    with pytest.raises(ValueError, match="view_images"):
        aug(images, torch.Generator(), view_images=[images])


def test_config_section_is_validated_and_off_keeps_the_hash():
    from sslbench.benchmark.config import BackgroundConfig, config_from_dict
    from sslbench.benchmark.errors import ConfigError
    from sslbench.benchmark.recipes import resolve

    base = resolve("simclr-quick")
    assert "background" not in base.to_dict()
    for off in (["background.mode=off"], ["background.mode=bg_rm", "background.p=0"],
                ["background.p=0.5", "background.fill=random"]):  # mode off, or p = 0: same run
        cfg = resolve("simclr-quick", off)
        assert not cfg.background.enabled and cfg.hash() == base.hash()
        assert config_from_dict(cfg.to_dict()) == cfg
    on = resolve("simclr-quick", ["background.mode=bg_random", "background.saliency=activation"])
    assert on.background.enabled and on.hash() != base.hash() and config_from_dict(on.to_dict()) == on
    for key, value in (("mode", "bg_swaps"), ("p", 1.5), ("saliency", "u2net"), ("threshold", -1.0),
                       ("fill", "black"), ("start_epoch", -1)):
        with pytest.raises(ConfigError, match=f"background.{key}"):
            BackgroundConfig(**{key: value})
    with pytest.raises(ConfigError, match="background.nope"):
        resolve("simclr-quick", ["background.nope=1"])


def test_activation_saliency_needs_a_feature_map():
    from sslbench.benchmark.background import BackgroundAugment
    from sslbench.benchmark.errors import ConfigError

    bg = BackgroundAugment(_section(saliency="activation"), (0.5,), (0.25,), "mlp")
    with pytest.raises(ConfigError, match="background.saliency=activation"):
        bg.check(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), 1, 8)


def test_engine_p0_is_bit_identical_and_a_background_run_resumes_exactly(tmp_path):
    from sslbench.benchmark.checkpoint import load_checkpoint
    from sslbench.benchmark.engine import pretrain
    from sslbench.benchmark.recipes import resolve

    tiny = ["data.dataset=synthetic", "data.batch_size=64", "augment=simclr-small", "train.device=cpu",
            "method.proj_hidden_dim=32", "method.proj_dim=16"]

    def run(name, extra, epochs, **kw):
        cfg = resolve("simclr-quick", [*tiny, f"train.epochs={epochs}", *extra])
        result = pretrain(cfg, tmp_path / name, tracking=None, progress=False, **kw)
        return load_checkpoint(result.checkpoint)["model"]

    plain = run("plain", [], 1)
    p0 = run("p0", ["background.mode=bg_rm", "background.p=0"], 1)
    assert all(torch.equal(plain[k], p0[k]) for k in plain)  # p = 0: the same run, bit for bit
    on = ["background.mode=bg_random", "background.saliency=activation", "background.p=0.5",
          "background.threshold=1"]
    full = run("full", on, 2)
    part = run("part", on, 2, stop_after_epochs=1)
    assert any(not torch.equal(part[k], plain[k]) for k in plain)  # the background changed the views
    resumed = run("part", on, 2, resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # its draws resume exactly
