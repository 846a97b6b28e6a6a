"""Backbones: images (B, C, H, W) -> features (B, D).

Three families:
    * ``small-cnn``: 4 x (3x3 conv, BN, ReLU), channels 32-64-128-256, strides 2-2-2-1, global
      average pool (388k parameters). Sized for CPU runs on 28-32 px data (MEASURED.md).
    * ``resnet18-small`` / ``resnet34-small`` / ``resnet50-small``: timm ResNets with the
      small-image stem (3x3 conv, stride 1, no max-pool) used on CIFAR by SimCLR (App. B.9),
      solo-learn and lightly.
    * ``vit-tiny-small`` / ``vit-small-small``: timm ViT-Ti / ViT-S with 4 px patches for
      28-64 px images (64 tokens at 32 px, as 16 px patches give at 128 px), accepting any input
      size (``dynamic_img_size``: multi-crop's smaller local views), CLS-token features.
    * any timm model name (``resnet50``, ``vit_small_patch16_224``, ...), built without
      pretrained weights and without a classifier.

Grayscale input is handled by building the first layer with ``in_chans`` channels. The feature
dimension is discovered with a dummy forward pass, never configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from sslbench.benchmark.errors import ConfigError, unknown_name

_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[[int, int], nn.Module]], Callable[[int, int], nn.Module]]:
    """Registers ``builder(in_chans, image_size) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[[int, int], nn.Module]) -> Callable[[int, int], nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"backbone '{name}' is already registered")
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    """sslbench's own backbone names (any timm model name is accepted too)."""
    return sorted(_BUILDERS)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


@register_backbone("small-cnn")
def small_cnn(in_chans: int, image_size: int) -> nn.Module:
    """The CPU-sized encoder measured in MEASURED.md (388k parameters)."""
    chans, strides = (32, 64, 128, 256), (2, 2, 2, 1)
    layers, c = [], in_chans
    for c_out, s in zip(chans, strides):
        layers.append(_conv_bn_relu(c, c_out, s))
        c = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _small_stem_resnet(name: str) -> Callable[[int, int], nn.Module]:
    def build(in_chans: int, image_size: int) -> nn.Module:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        width = cast(nn.Conv2d, model.conv1).out_channels
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model

    build.__doc__ = f"timm {name} with the CIFAR stem (3x3 conv, stride 1, no max-pool)."
    return build


for _depth in (18, 34, 50):
    register_backbone(f"resnet{_depth}-small")(_small_stem_resnet(f"resnet{_depth}"))


def _small_vit(name: str) -> Callable[[int, int], nn.Module]:
    def build(in_chans: int, image_size: int) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans,
                                 img_size=image_size, patch_size=4, dynamic_img_size=True)

    build.__doc__ = f"timm {name} with 4 px patches and any input size (small images)."
    return build


register_backbone("vit-tiny-small")(_small_vit("vit_tiny_patch16_224"))
register_backbone("vit-small-small")(_small_vit("vit_small_patch16_224"))


def _timm_model(name: str, in_chans: int, image_size: int) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise unknown_name("backbone", name, list_backbones(),
                           "Any timm model name also works (`python -c \"import timm; "
                           "print(timm.list_models())\"` lists them).")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    # ViT-style models take the input size, and any input size with dynamic_img_size (multi-crop's
    # smaller local views); CNNs reject both arguments.
    attempts: list[dict[str, Any]] = [{"img_size": image_size, "dynamic_img_size": True},
                                      {"img_size": image_size}, {}]
    for extra in attempts:
        try:
            return timm.create_model(name, **kwargs, **extra)
        except TypeError:
            continue
    raise AssertionError("unreachable: the last attempt passes no extra argument")


def build_backbone(name: str, in_chans: int, image_size: int) -> tuple[nn.Module, int]:
    """Builds a backbone and discovers its feature dimension.

    Args:
        name: an sslbench backbone name or a timm model name.
        in_chans: input channels (1 for grayscale data).
        image_size: input side in pixels.

    Returns:
        The module (``(B, C, H, W) -> (B, D)``) and ``D``.

    Raises:
        UnknownNameError: no such backbone.
        ConfigError: the backbone cannot process images of this size.
    """
    model = _BUILDERS[name](in_chans, image_size) if name in _BUILDERS else _timm_model(
        name, in_chans, image_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_chans, image_size, image_size))
    except (RuntimeError, AssertionError) as exc:  # timm ViTs assert the patch grid
        raise ConfigError(
            f"Backbone '{name}' cannot process {in_chans}x{image_size}x{image_size} images "
            f"({str(exc).splitlines()[0][:160]}).",
            "Pick a backbone suited to the image size (e.g. small-cnn or resnet18-small for "
            "28-64 px) or set data.image_size.",
        ) from None
    model.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"Backbone '{name}' returns features of shape {tuple(out.shape)}, "
                          "not (batch, dim).", "Use a backbone with global pooling.")
    return model, int(out.shape[1])


def feature_map(encoder: nn.Module, images: torch.Tensor, *, what: str = "this method",
                fix: str = "Use small-cnn, a ResNet (resnet18-small, resnet50, ...), a ViT or another timm "
                           "model with forward_features.") -> torch.Tensor:
    """The backbone's last spatial feature map, before global pooling (dense methods, ContrastiveCrop).

    ``small-cnn`` (a Sequential ending in AdaptiveAvgPool2d, Flatten): all but those two layers.
    timm models: ``forward_features`` (NHWC outputs are permuted; ViT tokens without the
    class/register tokens are laid out on their square patch grid).

    Args:
        encoder: a backbone built by :func:`build_backbone`.
        images: its input.
        what: who needs the map (for the error message).
        fix: the advice of the error.

    Shape:
        images: (B, C, H, W); return: (B, D, h, w).

    Raises:
        ConfigError: the backbone has no spatial feature map that sslbench can find.
    """
    out: object
    if (isinstance(encoder, nn.Sequential) and len(encoder) > 2
            and isinstance(encoder[-2], nn.AdaptiveAvgPool2d) and isinstance(encoder[-1], nn.Flatten)):
        out = encoder[:-2](images)
    elif callable(getattr(encoder, "forward_features", None)):
        out = encoder.forward_features(images)  # type: ignore[operator]
        nhwc = getattr(encoder, "output_fmt", "NCHW") == "NHWC"
        if isinstance(out, torch.Tensor) and out.ndim == 4 and nhwc:
            out = out.permute(0, 3, 1, 2)
        elif isinstance(out, torch.Tensor) and out.ndim == 3:  # ViT tokens (B, N, D)
            grid = out[:, int(getattr(encoder, "num_prefix_tokens", 0)):]
            side = math.isqrt(grid.shape[1])
            if side * side == grid.shape[1]:
                out = grid.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
    else:
        out = None
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        got = (f"an output of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else "no forward_features")
        raise ConfigError(f"{what} needs the last spatial feature map of the backbone, which has {got}.", fix)
    return out
