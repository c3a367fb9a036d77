"""A dataset held in memory as one uint8 tensor: the unit every loader, view and evaluation uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SelfsupError

CHUNK = 4096  # images per chunk for whole-dataset arithmetic, to bound the float copies


@dataclass
class ImageDataset:
    """``images`` (N, C, H, W) uint8, ``targets`` (N,) int64 with -1 for unlabelled images."""

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    name: str = "tensors"
    split: str = "train"
    skipped: list[str] = field(default_factory=list)
    """Files that could not be decoded and were skipped (``data.skip_bad``)."""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8:
            raise SelfsupError(f"{self.name} ({self.split}): images must be uint8, got {self.images.dtype}")
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise SelfsupError(f"{self.name} ({self.split}): images must be (N, C, H, W) with C in (1, 3), "
                               f"got {tuple(self.images.shape)}")
        if len(self.images) == 0:
            raise SelfsupError(f"{self.name} ({self.split}) holds no images")
        self.targets = torch.as_tensor(self.targets, dtype=torch.long)
        if self.targets.shape != (len(self.images),):
            raise SelfsupError(f"{self.name} ({self.split}): {self.targets.numel()} targets for "
                               f"{len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def labeled(self) -> bool:
        return bool((self.targets >= 0).any())

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of the pixels in [0, 1] (float64 sums)."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        for start in range(0, len(self), CHUNK):
            chunk = self.images[start:start + CHUNK].to(torch.float64).div_(255)
            total += chunk.sum((0, 2, 3))
            squares += chunk.square().sum((0, 2, 3))
        count = self.images[:, 0].numel()
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        return tuple(mean.tolist()), tuple(std.tolist())

    def select(self, index: torch.Tensor) -> ImageDataset:
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        return ImageDataset(self.images[index], self.targets[index], self.classes, self.name, self.split,
                            self.skipped)

    def balanced_index(self, count: int, seed: int = 0) -> torch.Tensor:
        """Sorted indices of ``count`` images spread as evenly as possible over the classes
        (unlabelled images form a class of their own); the same for a seed."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        groups = self.targets[order] + 1
        # Rank of each shuffled image within its class: taking images by rank deals them out
        # round-robin over the classes.
        rank = torch.zeros(len(order), dtype=torch.long)
        for group in groups.unique():
            members = (groups == group).nonzero().squeeze(1)
            rank[members] = torch.arange(len(members))
        return order[torch.sort(rank, stable=True).indices[:count]].sort().values

    def balanced_subset(self, count: int, seed: int = 0) -> ImageDataset:
        """``count`` images, spread as evenly as possible over the classes; the same for a seed."""
        return self if count >= len(self) else self.select(self.balanced_index(count, seed))

    def split_off(self, count: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """(the rest, ``count`` labelled images chosen class-balanced by ``seed``)."""
        labeled = (self.targets >= 0).nonzero().squeeze(1)
        if count >= len(labeled):
            raise SelfsupError(f"{self.name} ({self.split}): cannot hold out {count} of its {len(labeled)} "
                               "labelled images as the monitors' queries; lower train.knn_test_size, use "
                               "train.monitor_split=test, or turn the kNN monitor and the online probe off "
                               "(train.knn_every=0 train.online_probe=false)")
        held = labeled[self.select(labeled).balanced_index(count, seed)]
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[held] = False
        return self.select(keep.nonzero().squeeze(1)), self.select(held)

    def resized(self, size: int) -> ImageDataset:
        """The same images at ``size`` x ``size`` (antialiased bilinear, rounded back to uint8)."""
        if self.images.shape[-2:] == (size, size):
            return self
        chunks = []
        for start in range(0, len(self), CHUNK):
            chunk = self.images[start:start + CHUNK].float()
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            chunks.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
        return ImageDataset(torch.cat(chunks), self.targets, self.classes, self.name, self.split, self.skipped)


def describe(dataset: ImageDataset) -> dict[str, Any]:
    """What ``selfsup data inspect`` prints: size, shape, class balance, pixel statistics."""
    mean, std = dataset.stats()
    labeled = dataset.targets[dataset.targets >= 0]
    counts = torch.bincount(labeled, minlength=len(dataset.classes)).tolist() if len(labeled) else []
    return {
        "name": dataset.name, "split": dataset.split, "images": len(dataset),
        "shape": list(dataset.images.shape[1:]), "memory_mb": round(dataset.images.numel() / 2**20, 1),
        "classes": len(dataset.classes), "labeled": int(len(labeled)),
        "per_class": dict(zip(dataset.classes, counts)) if counts else {},
        "mean": [round(m, 4) for m in mean], "std": [round(s, 4) for s in std],
        "skipped": len(dataset.skipped),
    }
