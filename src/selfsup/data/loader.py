"""Batches of ``(uint8 images, targets, indices)`` straight from the in-memory (or memory-mapped) tensor.

No worker processes and no per-image Python: a batch is one index operation on a tensor
that lives on the training device when it fits (views are made there too, see
``selfsup.views``); a memory-mapped cache is read a batch's rows at a time. The order comes from :class:`~torch.utils.data.DistributedSampler`,
so each rank sees a disjoint shard, the shuffle depends only on (seed, epoch), and a run
resumed mid-epoch continues with exactly the batches it had not seen.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from .dataset import ImageDataset

RawBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""What the loader yields: uint8 images, targets (-1: no label), dataset indices."""


class BatchLoader:
    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device, on_device: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.batch_size, self.device = batch_size, device
        if not dataset.in_memory:
            raise TypeError(f"BatchLoader reads tensors; {dataset.name} is files to decode: use StreamLoader")
        if dataset.rows is not None and on_device and device.type != "cpu":
            dataset = dataset.in_ram()  # the rows asked for go to the device, not the whole store
        self.store = dataset.store.to(device) if on_device else dataset.store
        if not on_device and device.type == "cuda" and not dataset.mapped:
            self.store = self.store.pin_memory()  # asynchronous host-to-device copies
        self.rows = dataset.rows.to(self.store.device) if dataset.rows is not None else None
        self.targets = dataset.targets.to(self.store.device)
        # The sampler only needs len(); drop_last keeps every rank at the same number of batches.
        self.sampler = DistributedSampler(range(len(dataset)), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=True)

    def __len__(self) -> int:
        """Full batches per epoch on this rank (the last partial batch is dropped)."""
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def iterate(self, start: int = 0) -> Iterator[RawBatch]:
        """The epoch's batches from batch number ``start`` on."""
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        for batch in range(start, len(self)):
            index = order[batch * self.batch_size:(batch + 1) * self.batch_size].to(self.store.device)
            images = self.store[index if self.rows is None else self.rows[index]]
            targets = self.targets[index]
            yield (images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator[RawBatch]:
        return self.iterate()
