"""Frozen features of a backbone for whole datasets, batched, under the training precision."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from ..views import EvalView


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    view: EvalView,
    *,
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    desc: str | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor | dict[str, torch.Tensor]] | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """(N, C, H, W) uint8 images -> (N, D) float32 features on the CPU (backbone in eval mode).

    Runs on the device the backbone is on; the train/eval mode is restored afterwards.
    ``encode`` replaces ``backbone(x)`` (e.g. pooled stages for the layer-wise probe); when it
    returns a dict of tensors, so does this function.
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    view = view.to(device)
    encode = encode or backbone
    chunks: list = []
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    try:
        for batch in tqdm(images.split(batch_size), desc=desc, disable=desc is None, leave=False, unit="batch"):
            x = view(batch.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = encode(x)
            chunks.append({k: v.float().cpu() for k, v in out.items()} if isinstance(out, dict) else out.float().cpu())
    finally:
        backbone.train(was_training)
    if isinstance(chunks[0], dict):
        return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
    return torch.cat(chunks)


def pixel_features(images: torch.Tensor, view: EvalView) -> torch.Tensor:
    """The raw-pixel baseline: normalised pixels, flattened (N, C*H*W)."""
    return torch.cat([view(batch).flatten(1) for batch in images.split(4096)])
