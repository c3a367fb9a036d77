"""Running a network over several views: one pass per resolution, or one pass per view.

Caron et al. "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
(SwAV, NeurIPS 2020) and DINO (ICCV 2021): multi-crop views are 2 global crops and N small
local crops. Consecutive crops of equal size are concatenated and go through the network
together (fewer, larger batches; BatchNorm sees each resolution as one batch).

Whether two views of one resolution share a pass is a choice with consequences: BatchNorm's
statistics are then those of both views together. The official code of BYOL, SimSiam and Barlow
Twins runs one pass per view (:func:`forward_views`); SimCLR's concatenates them.
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


def forward_views(network: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor],
                  one_pass: bool) -> list[torch.Tensor]:
    """[(B, ...)] -> [network output of each view]: one ``network`` call per view (BatchNorm normalises
    each view by its own statistics), or with ``one_pass`` a single call over all of them (statistics
    over all the views together; fewer, larger batches)."""
    if one_pass:
        return list(network(torch.cat(views)).split([len(view) for view in views]))
    return [network(view) for view in views]
