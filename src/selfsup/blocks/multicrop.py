"""Running a network over crops of several resolutions, one pass per resolution.

Caron et al. "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
(SwAV, NeurIPS 2020) and DINO (ICCV 2021): multi-crop views are 2 global crops and N small
local crops. Consecutive crops of equal size are concatenated and go through the network
together (fewer, larger batches; BatchNorm sees each resolution as one batch).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def forward_by_resolution(network: Callable[[torch.Tensor], torch.Tensor],
                          crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """[(B, C, s_i, s_i)] -> [network output of each crop], one ``network`` call per run of equal sizes."""
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        group = crops[start:end]
        outputs += list(network(torch.cat(group)).split([len(c) for c in group]))
        start = end
    return outputs
