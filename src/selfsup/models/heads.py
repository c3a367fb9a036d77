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

    The last layer is weight norm as in the reference: each row's direction times a gain that
    starts at 1. With ``norm_last_layer`` (the default) the gain stays fixed at 1 (rows used at unit
    length, which DINO found to stabilise training); without, it is learnt. The layer is named
    ``last_layer`` so that it (gain included) can be frozen for the first epoch.
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
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_gain=not norm_last_layer)
        self.norm_last_layer = norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class WeightNormLinear(nn.Module):
    """y = x (g * v / ||v||)^T per output row (Salimans & Kingma 2016), no bias: ``weight`` is v and,
    with ``learn_gain``, ``gain`` is g (one per row, starting at 1); otherwise g is 1."""

    def __init__(self, in_dim: int, out_dim: int, learn_gain: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's initialisation
        self.gain = nn.Parameter(torch.ones(out_dim)) if learn_gain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.weight, dim=1)
        return F.linear(x, weight if self.gain is None else weight * self.gain[:, None])


class AttentionPooling(nn.Module):
    """Selfie's attention pooling network A (Trinh et al. 2019, Sec. 2.2): a learned vector u0 and
    the input vectors h_1..h_n go through BERT-style Transformer blocks; u0's output is the pooled
    vector u. Max and average pooling are its limits; here the network learns how to pool.

    BERT's block (Devlin et al. 2019), as the paper: self-attention, then two fully connected
    layers (``dim`` -> ``ffn_ratio * dim`` -> ``dim``, GeLU between), dropout 0.1 on the
    attention weights and before each residual connection, layer norm after it (post-norm).
    Paper defaults: 3 blocks; 1024 dims, 32 heads and an intermediate size of 640 (ratio 0.625),
    i.e. 32 dimensions per head, which ``head_dim`` keeps on smaller networks. No positional
    embeddings on the inputs: the set of h_i is pooled as a set.
    """

    def __init__(self, dim: int, blocks: int = 3, head_dim: int = 32, ffn_ratio: float = 0.625,
                 dropout: float = 0.1) -> None:
        super().__init__()
        heads = max(1, dim // head_dim)
        if dim % heads:
            raise ValueError(f"{dim} features do not split into {heads} heads of {head_dim}")
        self.u0 = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.u0, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, max(1, round(ffn_ratio * dim)), dropout, activation="gelu",
                                           batch_first=True, norm_first=False)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, dim) -> u (B, dim); ``offset`` (B, dim) is added to u0 first (a query's location)."""
        first = self.u0.expand(len(tokens), -1, -1)
        if offset is not None:
            first = first + offset[:, None]
        return self.blocks(torch.cat([first, tokens], dim=1))[:, 0]


class AttentionPoolTrunk(nn.Module):
    """The stages of a ResNet-style backbone up to ``until`` on the whole image, each position of
    the last feature map a token for :class:`AttentionPooling` instead of global average pooling:
    Selfie's "ResNet-36 + attention pooling" fine-tuning network (Trinh et al. 2019, Sec. 4.2).
    The later stages stay in ``backbone`` (so its weights load by name) but are not used."""

    def __init__(self, backbone: nn.Module, pooling: AttentionPooling, until: str) -> None:
        super().__init__()
        self.backbone, self.pooling, self.until = backbone, pooling, until
        self.num_features = pooling.u0.shape[-1]
        freeze_after(backbone, until)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_stages(x, until=self.until)[self.until]
        return self.pooling(features.flatten(2).transpose(1, 2))


def freeze_after(backbone: nn.Module, until: str) -> None:
    """No gradient for the stages of ``backbone`` after stage ``until`` (a network that stops there)."""
    stages = backbone.stage_prefixes()
    names = list(stages)
    unused = tuple(prefix for stage in names[names.index(until) + 1:] for prefix in stages[stage])
    for name, param in backbone.named_parameters():
        if name.startswith(unused):
            param.requires_grad_(False)
