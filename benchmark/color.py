"""Colour spaces for the methods that learn across colour channels (CMC, colorization) and for the
generated colour dataset: sRGB <-> CIE Lab (D65), sRGB -> YCbCr, and undoing a view's normalisation.

All functions are pure tensor code on any device, batched over (B, 3, H, W), float32 or wider.
The formulas are the standard ones (IEC 61966-2-1 sRGB transfer curve, CIE 1976 L*a*b* with the D65
white point, ITU-R BT.601 YCbCr), the same as ``skimage.color.rgb2lab`` and CMC's and
colorization's code, which use scikit-image.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["device_constant", "lab_to_rgb", "rgb_to_lab", "rgb_to_ycbcr", "unnormalize"]

# sRGB (linear) -> XYZ, D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_EPS = 216 / 24389  # (6/29)^3
_KAPPA = 24389 / 27


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple[float, ...] | tuple[tuple[float, ...], ...], dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """``torch.tensor(values, dtype, device)``, made once per (values, dtype, device) and shared
    (never modify it in place): ``torch.tensor(..., device=cuda)`` is a blocking host-to-device
    copy that makes the host wait for the device's queue, at every call (the methods convert
    colours and undo normalisations inside their steps)."""
    with torch.inference_mode(False), torch.no_grad():  # usable by autograd whoever made it first
        return torch.tensor(values, dtype=dtype, device=device)


def _vector(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(1, C, 1, 1) constant per channel, in ``like``'s dtype and device."""
    return device_constant(tuple(float(v) for v in values), like.dtype, like.device).view(1, -1, 1, 1)


def _matrix(rows: Sequence[Sequence[float]], like: torch.Tensor) -> torch.Tensor:
    return device_constant(tuple(tuple(float(v) for v in r) for r in rows), like.dtype, like.device)


def _check_rgb(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``m @ x`` over the channel dimension: (3, 3) x (B, 3, H, W)."""
    return torch.einsum("ij,bjhw->bihw", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65).

    Shape:
        rgb: (B, 3, H, W) in [0, 1]; return: (B, 3, H, W) with L in [0, 100] and a, b about
        [-86, 98] and [-108, 95] over the sRGB gamut.
    """
    _check_rgb(rgb)
    x = rgb.clamp(0, 1)
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _apply(_matrix(_RGB_TO_XYZ, x), linear) / _vector(_WHITE_D65, x)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) -> sRGB, clipped to [0, 1] (colours outside the gamut are clipped).

    Shape:
        lab: (B, 3, H, W); return: (B, 3, H, W) in [0, 1].
    """
    _check_rgb(lab)
    fy = (lab[:, 0] + 16) / 116
    fx = fy + lab[:, 1] / 500
    fz = fy - lab[:, 2] / 200
    f = torch.stack((fx, fy, fz), dim=1)
    xyz = torch.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA)
    xyz = xyz * _vector(_WHITE_D65, lab)
    linear = _apply(torch.linalg.inv(_matrix(_RGB_TO_XYZ, lab)), xyz).clamp(0, 1)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055,
                      12.92 * linear)
    return rgb.clamp(0, 1)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> YCbCr (ITU-R BT.601, full range, all three in [0, 1]; Cb, Cr centred at 0.5).

    Shape:
        rgb: (B, 3, H, W); return: (B, 3, H, W).
    """
    _check_rgb(rgb)
    m = _matrix(((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312)), rgb)
    out = _apply(m, rgb)
    return out + _vector((0.0, 0.5, 0.5), rgb)


def unnormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undoes a view's ``(x - mean) / std`` normalisation: back to the [0, 1] pixel scale.

    Shape:
        x: (B, C, H, W) with C = len(mean) = len(std); return: the same shape.
    """
    if x.ndim != 4 or x.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(f"images of shape {tuple(x.shape)} do not match mean {tuple(mean)} / std {tuple(std)}")
    return x * _vector(std, x) + _vector(mean, x)
