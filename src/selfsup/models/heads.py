"""Heads shared by methods: one MLP builder instead of a class per paper, and DINO's head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
        last_batch_norm: bool = False, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``num_layers`` linear layers, BN + ReLU between them (a projection or prediction head).

    SimCLR's head is ``mlp(D, 2048, 128)`` (v1: 2 layers; v2: 3); BYOL's projector and
    predictor are ``mlp(D, 4096, 256)``; Barlow Twins ends with a BN (``last_batch_norm``)
    without affine parameters; DINO's head uses GELU (``activation``) and no BN.
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
            layers.append(activation())
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


class HeadTrunk(nn.Module):
    """A backbone followed by the first hidden layers of its projection :func:`mlp`: the network
    SimCLR v2 fine-tunes (Chen et al. 2020b, Sec. 2: from the middle layer of the 3-layer head,
    which beat fine-tuning from the backbone's output with few labels)."""

    def __init__(self, backbone: nn.Module, projector: nn.Sequential, layers: int) -> None:
        super().__init__()
        ends = [i + 1 for i, module in enumerate(projector) if not isinstance(module, (nn.Linear, nn.BatchNorm1d))]
        if not 1 <= layers <= len(ends):
            raise ValueError(f"the projection head has {len(ends)} hidden layer(s); cannot keep {layers}")
        self.backbone, self.head = backbone, projector[:ends[layers - 1]]
        self.num_features = [m for m in self.head if isinstance(m, nn.Linear)][-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, App. and official code): an MLP of
    ``num_layers`` (GELU, no BN) to a ``bottleneck_dim`` bottleneck, L2 normalisation, then a
    weight-normalised linear layer to ``out_dim`` prototypes without bias.

    With ``norm_last_layer`` (the default) every row of the last layer is used at unit length
    (weight norm with its gain fixed at 1), which DINO found to stabilise training; the layer is
    named ``last_layer`` so that it can be frozen for the first epoch.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, num_layers, batch_norm=False, activation=nn.GELU)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.norm_last_layer = norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        weight = F.normalize(self.last_layer.weight, dim=1) if self.norm_last_layer else self.last_layer.weight
        return F.linear(x, weight)
