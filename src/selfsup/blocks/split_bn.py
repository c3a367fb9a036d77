"""Split BatchNorm: one process emulating the per-GPU BatchNorm of several (MoCo's CIFAR-10 demo).

MoCo (He et al. 2020, Sec. 3.3) shuffles the key encoder's batch across GPUs so that a query
and its key are never normalised with statistics of the same images: otherwise "the model
appears to cheat the pretext task". In one process there is nothing to shuffle across. The
official CIFAR-10 demo (facebookresearch/moco, colab notebook) emulates 8 GPUs instead: every
BatchNorm of both encoders normalises each of 8 groups of the batch with that group's own
statistics, and the key encoder's batch is shuffled within the batch first, so a key's group
holds other images than its query's. Its README credits ShuffleBN with about 4 kNN points.
The running statistics are the average over the groups, so the trained weights load into a
plain BatchNorm network (evaluation, export) unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import dist


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed per group of ``splits`` samples'
    interleaved slices (sample n in group n mod splits), in one process only; under several
    processes (shuffle-BN across them does the job) and in eval mode it is a plain BatchNorm2d.
    A batch that ``splits`` does not divide uses the largest divisor below it that leaves each
    group at least two samples."""

    def __init__(self, num_features: int, splits: int = 8, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def groups_for(self, batch: int) -> int:
        return max((d for d in range(1, min(self.splits, batch // 2) + 1) if batch % d == 0), default=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.groups_for(x.shape[0])
        if not self.training or not self.track_running_stats or groups == 1 or dist.world_size() > 1:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum  # as BatchNorm
        batch, channels, height, width = x.shape
        mean, var = self.running_mean.repeat(groups), self.running_var.repeat(groups)
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        # (B, C, H, W) -> (B / g, g C, H, W): group s holds samples s, s + g, s + 2g, ...
        out = F.batch_norm(x.reshape(batch // groups, groups * channels, height, width), mean, var, weight, bias,
                           True, factor, self.eps)
        with torch.no_grad():  # the groups' running statistics, averaged back to one set
            self.running_mean.copy_(mean.view(groups, channels).mean(0))
            self.running_var.copy_(var.view(groups, channels).mean(0))
        out = out.reshape(batch, channels, height, width)
        return out.contiguous(memory_format=torch.channels_last) \
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else out


def split_batch_norm(module: nn.Module, splits: int) -> nn.Module:
    """``module`` with every BatchNorm2d replaced, in place, by a :class:`SplitBatchNorm2d` of
    ``splits`` groups holding the same parameters and statistics (names and state dict unchanged)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm2d(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            split.to(device=child.running_mean.device if child.running_mean is not None else None)
            setattr(module, name, split)
        else:
            split_batch_norm(child, splits)
    return module
