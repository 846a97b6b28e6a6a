"""Projector and predictor builders shared by all methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from sslbench.methods.losses import fp32, no_autocast


def mlp(in_dim: int, hidden_dim: int, out_dim: int, *, num_layers: int = 2, hidden_bn: bool = True,
        last_bn: bool = False) -> nn.Sequential:
    """A projection / prediction MLP.

    ``num_layers - 1`` blocks of Linear -> (BN) -> ReLU, then Linear -> (BN without affine).
    SimCLR and BYOL use BN in the hidden layers; MoCo v2 uses none; SimCLR v2 and MoCo v3 put a
    BN on the output too.

    Args:
        in_dim: input features.
        hidden_dim: width of the hidden layers.
        out_dim: output features.
        num_layers: number of linear layers (>= 1).
        hidden_bn: batch norm after each hidden linear layer.
        last_bn: a non-affine batch norm on the output.

    Shape:
        input: (B, in_dim); output: (B, out_dim).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not hidden_bn))
        if hidden_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021, official ``DINOHead``): MLP (GELU, optional BN) ->
    bottleneck -> L2-normalise -> weight-normalised linear layer to K outputs.

    The MLP's linear layers start from a truncated normal (std 0.02); the last layer is
    ``g * v / ||v||`` per output row with g = 1 at the start, and g frozen when
    ``norm_last_layer`` (the official default). The last layer runs in float32 with autocast off
    (:meth:`logits`): DINO divides its outputs by tau_t = 0.04.

    Args:
        in_dim: input features.
        hidden_dim: width of the hidden layers (2048).
        bottleneck_dim: output of the MLP (256).
        out_dim: K (65,536).
        num_layers: linear layers of the MLP (3).
        use_bn: batch norm after each hidden linear layer.
        norm_last_layer: freeze g at 1.

    Shape:
        input: (B, in_dim); output: (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, *,
                 num_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(F.normalize(self.mlp(x), dim=-1))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The weight-normalised last layer on the L2-normalised bottleneck ``h``, in float32
        with autocast off (the outputs are divided by a temperature).

        Shape:
            h: (B, bottleneck_dim); return: (B, out_dim).
        """
        (h,) = fp32(h)
        with no_autocast(h):
            return self.last_layer(h)
