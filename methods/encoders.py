"""Evaluated encoders that wrap one or more backbones: one encoder per colour view (CMC), an L-only
encoder (colorization), a patch grid (CPC v2).

A method whose encoder is not the plain backbone returns an :class:`EncoderSpec` from
:meth:`~sslbench.methods.base.Method.encoder_spec`. The engine builds ``method.encoder`` with
:func:`build_encoder` and records the spec in the checkpoint, so ``sslbench eval`` rebuilds the same
module and every protocol evaluates exactly what the method trained: a module mapping normalised
(B, C, H, W) images to (B, D) features.

Wrappers are registered by name with :func:`register_encoder`, as builders
``fn(backbone, input_spec, **args) -> nn.Module``; ``args`` must be JSON-able (they are stored).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.color import rgb_to_lab, rgb_to_ycbcr, unnormalize
from sslbench.benchmark.errors import ConfigError, unknown_name
from sslbench.methods.base import InputSpec

__all__ = ["ColorSplitEncoder", "EncoderSpec", "build_encoder", "list_encoders", "parse_groups",
           "register_encoder"]


@dataclass(frozen=True)
class EncoderSpec:
    """A registered wrapper and its (JSON-able) arguments."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}


EncoderBuilder = Callable[..., nn.Module]
_ENCODERS: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Registers ``builder(backbone: str, input_spec: InputSpec, **args) -> nn.Module``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def wrap(fn: EncoderBuilder) -> EncoderBuilder:
        if name in _ENCODERS:
            raise ValueError(f"encoder wrapper '{name}' is already registered")
        _ENCODERS[name] = fn
        return fn

    return wrap


def list_encoders() -> list[str]:
    """Registered wrapper names."""
    return sorted(_ENCODERS)


def build_encoder(backbone: str, input_spec: InputSpec, spec: EncoderSpec | None = None) -> tuple[nn.Module, int]:
    """Builds the evaluated encoder and discovers its feature dimension with a dummy forward.

    Args:
        backbone: an sslbench or timm backbone name.
        input_spec: the training input (channels, size, normalisation).
        spec: a wrapper; None gives the plain backbone.

    Returns:
        The module (``(B, C, H, W) -> (B, D)``) and ``D``.

    Raises:
        UnknownNameError: no such wrapper.
        ConfigError: the wrapper cannot process this input (its own message).
    """
    if spec is None:
        return build_backbone(backbone, input_spec.channels, input_spec.image_size)
    if spec.name not in _ENCODERS:
        raise unknown_name("encoder wrapper", spec.name, _ENCODERS, "Methods register their wrappers.")
    module = _ENCODERS[spec.name](backbone, input_spec, **dict(spec.args))
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, input_spec.channels, input_spec.image_size, input_spec.image_size))
    module.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"Encoder wrapper '{spec.name}' returns features of shape {tuple(out.shape)}, "
                          "not (batch, dim).", "This is a bug in the wrapper.")
    return module, int(out.shape[1])


def parse_groups(groups: str | list[list[int]] | tuple[tuple[int, ...], ...], channels: int = 3) -> list[list[int]]:
    """Channel groups from ``"0|1,2"`` (groups split by ``|``, channels by ``,``) or a nested list.

    Raises:
        ConfigError: an empty group, a channel outside ``[0, channels)``, or a channel used twice.
    """
    if isinstance(groups, str):
        try:
            parsed = [[int(c) for c in g.split(",")] for g in groups.split("|")]
        except ValueError:
            raise ConfigError(f"Channel groups {groups!r} are not of the form '0|1,2'.",
                              "Separate views by '|' and the channels of a view by ','.") from None
    else:
        parsed = [[int(c) for c in g] for g in groups]
    flat = [c for g in parsed for c in g]
    if not parsed or any(not g for g in parsed) or any(not 0 <= c < channels for c in flat) \
            or len(set(flat)) != len(flat):
        raise ConfigError(f"Channel groups {groups!r} need non-empty groups of distinct channels in 0..{channels - 1}.",
                          "E.g. '0|1,2' (L | ab of Lab) or '0|1|2'.")
    return parsed


#: Colour spaces of :class:`ColorSplitEncoder`: converter from [0, 1] sRGB, and per-channel
#: ``(offset, scale)`` bringing each channel to about [-1, 1].
_SPACES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[tuple[float, float], ...]]] = {
    "lab": (rgb_to_lab, ((50.0, 50.0), (0.0, 110.0), (0.0, 110.0))),
    "ycbcr": (rgb_to_ycbcr, ((0.5, 0.5),) * 3),
    "rgb": (lambda x: x, ((0.5, 0.5),) * 3),
}


class ColorSplitEncoder(nn.Module):
    """One backbone per group of colour channels (CMC's views; colorization's L-only network).

    The normalised RGB input is brought back to [0, 1] with the training data's mean and std,
    converted to ``space`` (each channel scaled to about [-1, 1]: L / 50 - 1, a / 110, b / 110 for
    Lab), split into the channel groups, and each group goes through its own backbone. The
    features are the concatenation of the groups' features (CMC evaluates concat(L, ab)).

    Args:
        backbone: backbone name; each group gets one with ``len(group)`` input channels.
        input_spec: the training input (must be RGB).
        space: ``"lab"``, ``"ycbcr"`` or ``"rgb"``.
        groups: channel groups of ``space``, e.g. ``"0|1,2"`` (L | ab).

    Shape:
        input: (B, 3, H, W) normalised RGB; output: (B, sum of the groups' feature dims).
    """

    offset: torch.Tensor  # (1, 3, 1, 1) buffers: the colour space's per-channel offset and scale
    scale: torch.Tensor

    def __init__(self, backbone: str, input_spec: InputSpec, space: str = "lab", groups: str = "0|1,2") -> None:
        super().__init__()
        if input_spec.channels != 3:
            raise ConfigError(f"The '{space}' colour split needs RGB images; the data has "
                              f"{input_spec.channels} channel(s).", "Use a colour dataset.")
        if space not in _SPACES:
            raise unknown_name("colour space", space, _SPACES, "")
        self.space, self.mean, self.std = space, tuple(input_spec.mean), tuple(input_spec.std)
        self.groups = parse_groups(groups)
        offsets, scales = zip(*_SPACES[space][1])
        self.register_buffer("offset", torch.tensor(offsets).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scales).view(1, 3, 1, 1), persistent=False)
        built = [build_backbone(backbone, len(g), input_spec.image_size) for g in self.groups]
        self.backbones = nn.ModuleList(m for m, _ in built)
        self.dims = [d for _, d in built]

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB -> the colour space, each channel scaled to about [-1, 1].

        Shape:
            x: (B, 3, H, W); return: (B, 3, H, W).
        """
        rgb = unnormalize(x.float(), self.mean, self.std).clamp(0, 1)
        return ((_SPACES[self.space][0](rgb) - self.offset) / self.scale).to(x.dtype)

    def group_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each group's input channels, shape (B, len(group), H, W)."""
        c = self.convert(x)
        return [c[:, g] for g in self.groups]

    def group_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each group's backbone features, shape (B, D_g)."""
        return [net(inp) for net, inp in zip(self.backbones, self.group_inputs(x))]

    def group_input(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """The input channels of group ``group`` alone (``group_inputs(x)[group]``).

        Shape:
            x: (B, 3, H, W); return: (B, len(groups[group]), H, W).
        """
        return self.convert(x)[:, self.groups[group]]

    def input_channels(self) -> int:
        """Channels of the images the encoder takes (RGB), for protocols that build on its backbones."""
        return 3

    def dense_branches(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]]:
        """The dense-feature hook of the detection protocol: per group, (normalised RGB -> the
        group's converted channels, the group's backbone). Detection concatenates the groups' maps
        level by level, as the encoder concatenates their features."""
        return [(functools.partial(self.group_input, group=g), net) for g, net in enumerate(self.backbones)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.group_features(x), dim=1)


@register_encoder("color-split")
def _color_split(backbone: str, input_spec: InputSpec, space: str = "lab", groups: str = "0|1,2") -> nn.Module:
    return ColorSplitEncoder(backbone, input_spec, space=space, groups=groups)
