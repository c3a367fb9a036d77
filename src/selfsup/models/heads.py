"""Heads shared by methods: one MLP builder instead of a class per paper."""
from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
        last_batch_norm: bool = False) -> nn.Sequential:
    """``num_layers`` linear layers, BN + ReLU between them (a projection or prediction head).

    SimCLR's head is ``mlp(D, 2048, 128)`` (v1: 2 layers; v2: 3); BYOL's projector and
    predictor are ``mlp(D, 4096, 256)``; Barlow Twins ends with a BN (``last_batch_norm``)
    without affine parameters.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == num_layers - 1
        followed_by_norm = last_batch_norm if last else batch_norm
        layers.append(nn.Linear(d_in, d_out, bias=not followed_by_norm))  # a BN's shift makes a bias redundant
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)
