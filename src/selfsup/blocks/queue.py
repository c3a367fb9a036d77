"""A FIFO queue of keys held as buffers: MoCo's dictionary of negatives.

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722), Sec. 3.2: the keys of the current batch are enqueued
and the oldest dequeued, so the dictionary (65,536 keys in the paper) is decoupled from the
batch size. Under DDP the keys of every rank are gathered before they are enqueued, so every
rank holds the same queue (rank order, then batch order) without any broadcast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import dist


class FeatureQueue(nn.Module):
    """``size`` x ``dim`` keys, oldest overwritten first; ``keys`` and ``pointer`` are buffers, so
    checkpoints carry the queue and a resumed run continues with it.

    The queue starts as random unit vectors (MoCo's initialisation); ``filled`` counts the real
    keys written so far (at most ``size``).
    """

    def __init__(self, size: int, dim: int, *, seed: int = 0) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"a queue needs at least 1 entry, got {size}")
        self.size, self.dim = size, dim
        initial = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("keys", F.normalize(initial, dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (B, dim) of every rank at the pointer, wrapping around the end."""
        keys = dist.gather(keys.detach().to(self.keys.dtype))
        if len(keys) > self.size:  # only the newest fit
            keys = keys[-self.size:]
        positions = (self.pointer + torch.arange(len(keys), device=self.keys.device)) % self.size
        self.keys[positions] = keys
        self.pointer.copy_((self.pointer + len(keys)) % self.size)
        self.filled.copy_(torch.clamp(self.filled + len(keys), max=self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
