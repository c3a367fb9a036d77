"""Shuffling BatchNorm across processes (MoCo, He et al. 2020, Sec. 3.3).

With per-process BatchNorm, the queries and keys of one process would be normalised with
statistics of the same images, and the model could cheat through them ("intra-batch
communication"). MoCo runs the key encoder on a batch shuffled across processes and shuffles
the keys back: the statistics of every process then mix images of all. In one process it is
a plain forward, or with ``within_batch`` a shuffle within the batch (MoCo's CIFAR-10 demo,
which pairs it with split BatchNorm, :mod:`.split_bn`: the key's group then holds other images
than its query's).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..engine import dist


@torch.no_grad()
def shuffled_forward(encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     within_batch: bool = False) -> torch.Tensor:
    """``encoder(images)`` (B, ...) -> (B, D), each process encoding a random slice of the global
    batch; rows come back in the order of ``images``. For encoders without gradient (key encoders).
    In one process: a plain forward, or with ``within_batch`` the batch in a random order."""
    world = dist.world_size()
    if world == 1:
        if not within_batch:
            return encoder(images)
        order = torch.randperm(len(images), device=images.device)
        return encoder(images[order])[torch.argsort(order)]
    everything = dist.gather(images)
    order = dist.broadcast_tensor(torch.randperm(len(everything), device=images.device))
    mine = everything[order].chunk(world)[dist.rank()]
    encoded = dist.gather(encoder(mine))
    return encoded[torch.argsort(order)].chunk(world)[dist.rank()]
