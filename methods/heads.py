"""Projector and predictor builders shared by all methods."""

from __future__ import annotations

from torch import nn


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
