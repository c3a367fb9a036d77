"""A dataset: images addressed by row in a store, with their labels: the unit every loader, view
and evaluation uses.

The store is a uint8 tensor (N, C, S, S) in memory, the same as a memory-mapped cache file
(``data.source=cache``: rows are read from disk when a batch asks for them), or a
:class:`~selfsup.data.stream.FileStore` of image files decoded on demand (``data.source=stream``).
Subsets (the held-out monitor queries, ``data.subset``, a label fraction) are rows of the same
store, so taking one copies no pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import SelfsupError

CHUNK = 4096  # images per chunk for whole-dataset arithmetic, to bound the float copies
STATS_SAMPLE = 2048  # images a file store's pixel statistics are measured on (decoding them all could take hours)


class ImageStore(Protocol):
    """Rows of uint8 images: a tensor, or files decoded when asked (:class:`~selfsup.data.stream.FileStore`)."""

    shape: Any

    def __len__(self) -> int: ...
    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ImageDataset:
    """``store`` rows (all, or ``rows``) of uint8 (C, S, S) images and ``targets`` (one per image,
    int64, -1 for unlabelled images). ``images`` is the dataset as one (N, C, S, S) tensor."""

    store: ImageStore
    targets: torch.Tensor
    classes: list[str]
    name: str = "tensors"
    split: str = "train"
    skipped: list[str] = field(default_factory=list)
    """Files that could not be decoded and were skipped (``data.skip_bad``)."""
    rows: torch.Tensor | None = None
    """The store's rows this dataset is made of, in order; None: all of them."""
    mapped: bool = False
    """The store is a memory-mapped cache file: read a batch's rows at a time, never pinned or copied whole."""

    def __post_init__(self) -> None:
        shape = tuple(self.store.shape)
        if isinstance(self.store, torch.Tensor) and self.store.dtype != torch.uint8:
            raise SelfsupError(f"{self.name} ({self.split}): images must be uint8, got {self.store.dtype}")
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise SelfsupError(f"{self.name} ({self.split}): images must be (N, C, H, W) with C in (1, 3), "
                               f"got {shape}")
        if self.rows is not None:
            self.rows = torch.as_tensor(self.rows, dtype=torch.long)
        if len(self) == 0:
            raise SelfsupError(f"{self.name} ({self.split}) holds no images")
        self.targets = torch.as_tensor(self.targets, dtype=torch.long)
        if self.targets.shape != (len(self),):
            raise SelfsupError(f"{self.name} ({self.split}): {self.targets.numel()} targets for {len(self)} images")

    def __len__(self) -> int:
        return len(self.store) if self.rows is None else len(self.rows)

    @property
    def images(self) -> torch.Tensor:
        """All images as one uint8 tensor (a file store decodes them; a subset is gathered)."""
        if self.rows is None and isinstance(self.store, torch.Tensor):
            return self.store
        return self.pixels(torch.arange(len(self)))

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images at dataset positions ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self.store[index if self.rows is None else self.rows[index]]

    @property
    def in_memory(self) -> bool:
        """Whether the pixels are a tensor (in memory or memory-mapped), not files to decode."""
        return isinstance(self.store, torch.Tensor)

    @property
    def channels(self) -> int:
        return self.store.shape[1]

    @property
    def image_size(self) -> int:
        return self.store.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded pixels."""
        return len(self) * self.channels * self.image_size ** 2

    @property
    def labeled(self) -> bool:
        return bool((self.targets >= 0).any())

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of the pixels in [0, 1] (float64 sums); of files or
        a memory-mapped cache, measured on a seeded sample of ``STATS_SAMPLE`` images (reading them all
        could take hours)."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        positions = torch.arange(len(self))
        if (not self.in_memory or self.mapped) and len(self) > STATS_SAMPLE:
            positions = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort().values
        count = 0
        chunk_size = max(1, min(CHUNK, 2**25 // (self.channels * self.image_size ** 2)))  # float64 copies of <= 256 MB
        for start in range(0, len(positions), chunk_size):
            part = positions[start:start + chunk_size]
            if self.in_memory:
                pixels = self.pixels(part)
            else:  # files that do not decode are left out here; training reports them
                pixels = self.store.decode(part if self.rows is None else self.rows[part], skip=True)[0]
            chunk = pixels.to(torch.float64).div_(255)
            total += chunk.sum((0, 2, 3))
            squares += chunk.square().sum((0, 2, 3))
            count += len(chunk) * self.image_size ** 2
        if not count:
            raise SelfsupError(f"no image of {self.name} ({self.split}) could be decoded")
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        return tuple(mean.tolist()), tuple(std.tolist())

    def select(self, index: torch.Tensor) -> ImageDataset:
        """The images at positions ``index``: rows of the same store, no pixel copied."""
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        rows = index if self.rows is None else self.rows[index]
        return ImageDataset(self.store, self.targets[index], self.classes, self.name, self.split, self.skipped, rows,
                            self.mapped)

    def in_ram(self) -> ImageDataset:
        """The same images as one in-memory tensor (a file store's are decoded: for small sets,
        such as the monitor's bank and queries)."""
        if self.rows is None and isinstance(self.store, torch.Tensor) and not self.mapped:
            return self
        if not self.in_memory:
            return self.store.decoded(self)
        return ImageDataset(self.images.clone() if self.rows is None else self.images, self.targets, self.classes,
                            self.name, self.split, self.skipped)

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
        if tuple(self.store.shape[-2:]) == (size, size):
            return self
        chunks = []
        for start in range(0, len(self), CHUNK):
            chunk = self.pixels(torch.arange(start, min(start + CHUNK, len(self)))).float()
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
        "shape": list(dataset.store.shape[1:]),
        "memory_mb": round(dataset.nbytes / 2**20, 1),
        "classes": len(dataset.classes), "labeled": int(len(labeled)),
        "per_class": dict(zip(dataset.classes, counts)) if counts else {},
        "mean": [round(m, 4) for m in mean], "std": [round(s, 4) for s in std],
        "skipped": len(dataset.skipped),
    }

