"""BatchNorm statistics re-estimated on the images a probe will see.

A trunk trained on tiles (Jigsaw, context prediction, PIRL's transform) or on half-size images
(Counting) carries running statistics of those inputs; probing it on full images through them
penalises the deep stages (Goyal et al. 2019 and VISSL evaluate as trained; several later works
re-estimate). Resetting the statistics and averaging them over a pass of unlabelled training
images, in the evaluation view, removes that mismatch without touching any weight.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from ..views import EvalView


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, images: torch.Tensor, view: EvalView, *, count: int = 10000,
                          batch_size: int = 512, seed: int = 0, autocast_dtype: torch.dtype | None = None,
                          channels_last: bool = False, encode: Callable[[torch.Tensor], object] | None = None,
                          desc: str | None = None) -> int:
    """Replace the running statistics of every BatchNorm in ``module`` by their plain average over
    ``count`` images (a seeded random choice) of ``images`` (N, C, H, W) uint8; returns how many
    layers were recalibrated. The module is left in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        module.eval()
        return 0
    device = next(module.parameters()).device
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass, not an exponential one
    module.train()
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    encode = encode or module
    view = view.to(device)
    try:
        # A batch of one image has no batch statistics: it is dropped.
        batches = [b for b in chosen.split(batch_size) if len(b) > 1]
        for batch in tqdm(batches, desc=desc, disable=desc is None, leave=False, unit="batch"):
            x = view(images[batch].to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                encode(x)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        module.eval()
    return len(norms)
