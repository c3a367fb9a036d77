"""Streaming: image files of any number and any size, decoded by DataLoader workers, each view's
crop taken from the full-resolution image (``data.source=stream``).

A :class:`FileStore` lists the images (files of an image folder or a file list, or members of
WebDataset shards, read by offset) in numpy arrays rather than Python objects, so that the
workers' copy-on-write pages stay shared and memory does not grow with the dataset. A
:class:`StreamLoader` hands the training process what :class:`~selfsup.data.BatchLoader` hands
it, in the same order (a :class:`~torch.utils.data.DistributedSampler` over (seed, epoch): each
rank reads a disjoint part, workers take whole batches in turn, a resumed run skips the batches
it had seen): the image at the training size (``base``, for the online probe and for methods that
cut tiles from a fixed-size image) and, for the views that asked for them (:class:`CropSpec`), a
random resized crop of the original image per view, as the papers take it (torchvision's
``RandomResizedCrop`` sampling, Pillow's antialiased bilinear resize). Each crop's randomness
comes from (seed, epoch, image), so the crops are the same for any number of workers and after
a resume. Flip, colour, blur, solarize and normalisation stay batched on the training device.
"""
from __future__ import annotations

import io
import math
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..engine.contracts import BadData, Precropped
from ..errors import SelfsupError
from .dataset import ImageDataset
from .formats import IMAGE_SUFFIXES, check_fits_in_memory, decode_images, fit_square, open_image, undecodable



@dataclass(frozen=True)
class CropSpec:
    """One view's random resized crop (Szegedy et al. 2015; SimCLR's and the torchvision default):
    an area fraction in ``scale`` and an aspect ratio in ``ratio`` (log-uniform) of the original
    image, resized to ``size`` x ``size``."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def crop_box(width: int, height: int, spec: CropSpec, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random resized crop of a ``width`` x ``height`` image: ten
    tries at an area and aspect drawn from ``spec``, then the largest centred box of an aspect within
    ``spec.ratio`` (torchvision's ``RandomResizedCrop.get_params``)."""
    area = width * height
    log_ratio = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target = area * (spec.scale[0] + draws[0] * (spec.scale[1] - spec.scale[0]))
        aspect = math.exp(log_ratio[0] + draws[1] * (log_ratio[1] - log_ratio[0]))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    return centred_box(width, height, spec.ratio)


def centred_box(width: int, height: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the largest centred box of an aspect within ``ratio``: a random
    resized crop's fallback when none of its tries fits (torchvision's)."""
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """A generator seed for one image's crops in one epoch: a hash of the three (numpy's SeedSequence),
    so that no two (seed, epoch, image) share one, for any seed and any number of images."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] & (2**63 - 1))


class FileStore:
    """Images as files (or as members of tar shards: ``offsets`` and ``lengths`` into ``paths``),
    decoded to ``channels`` x ``size`` x ``size`` (shorter side, centre crop) when rows are asked
    for. Paths are a numpy byte array: forked workers share its pages."""

    def __init__(self, paths: list[str] | np.ndarray, size: int, channels: int = 3, *,
                 offsets: np.ndarray | None = None, lengths: np.ndarray | None = None,
                 keys: list[str] | None = None, skip_bad: bool = False, source: str = "") -> None:
        self.paths = np.asarray([os.fsencode(p) for p in paths]) if not isinstance(paths, np.ndarray) else paths
        self.offsets, self.lengths = offsets, lengths
        self.keys = np.asarray([k.encode() for k in keys]) if keys is not None else None
        self.size, self.channels, self.skip_bad, self.source = size, channels, skip_bad, source
        self.shape = (len(self.paths), channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def name_of(self, row: int) -> str:
        """The file (or ``shard.tar:key``) of a row, for messages and the list of skipped files."""
        path = os.fsdecode(self.paths[row])
        return path if self.keys is None else f"{path}:{self.keys[row].decode()}"

    def open(self, row: int) -> Any:
        """The Pillow image of a row, in RGB or gray (:func:`~selfsup.data.formats.open_image`)."""
        return open_image(self.sources([row])[0], self.channels)

    def sources(self, rows: list[int]) -> list[Any]:
        """What :func:`~selfsup.data.formats.decode_images` reads for ``rows``: paths, or shard members' bytes."""
        if self.offsets is None:
            return [Path(os.fsdecode(self.paths[row])) for row in rows]
        found = []
        for row in rows:
            with open(self.paths[row], "rb") as shard:
                shard.seek(int(self.offsets[row]))
                found.append(io.BytesIO(shard.read(int(self.lengths[row]))))
        return found

    def decode(self, rows: torch.Tensor, skip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(images at ``rows`` that decode, a mask of those rows, the names of those that do not); a
        file that does not decode stops with its name unless ``skip`` (default: the store's ``skip_bad``)."""
        skip = self.skip_bad if skip is None else skip
        rows_list = [int(r) for r in torch.as_tensor(rows).reshape(-1)]
        check_fits_in_memory(len(rows_list), self.size, self.source or "the images", self.channels)
        images, kept, bad = [], [], []
        for row, result in zip(rows_list, decode_images(self.sources(rows_list), self.size, self.channels)):
            if isinstance(result, Exception):
                if not skip:
                    raise bad_file(self.name_of(row), result)
                bad.append(self.name_of(row))
            else:
                images.append(torch.from_numpy(result))
            kept.append(not isinstance(result, Exception))
        empty = torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        return (torch.stack(images) if images else empty), torch.tensor(kept, dtype=torch.bool), bad

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        images, kept, bad = self.decode(rows)
        if bad:
            raise SelfsupError(f"{len(bad)} of the images asked for do not decode ({bad[0]}, ...)")
        return images

    def decoded(self, dataset: ImageDataset) -> ImageDataset:
        """``dataset`` (rows of this store) decoded into memory, without the files that do not decode
        (when the store skips them)."""
        rows = dataset.rows if dataset.rows is not None else torch.arange(len(self))
        images, kept, bad = self.decode(rows)
        if not len(images):
            raise SelfsupError(f"no image of {self.source or dataset.name} could be decoded")
        return ImageDataset(images, dataset.targets[kept], dataset.classes, dataset.name, dataset.split,
                            dataset.skipped + bad)


def bad_file(name: str, err: Exception) -> BadData:
    return BadData(f"cannot decode image {name} ({undecodable(err)}). Fix or remove the file, or set data.skip_bad=true "
                   "to skip undecodable images (they are counted and listed in the run log)")


# ---------------------------------------------------------------- sources


def shard_members(shards: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[int]]:
    """(shard of each image, byte offsets, lengths, keys, labels) of every image in ``shards``, from the
    member headers and the small ``.cls`` members (image bytes are skipped over)."""
    from .shards import parse_class, unreadable

    paths, offsets, lengths, keys, labels = [], [], [], [], []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as archive:
                classes: dict[str, int] = {}
                found: dict[str, tuple[int, int]] = {}
                for member in archive:
                    if not member.isfile():
                        continue
                    stem, _, suffix = member.name.rpartition(".")
                    if f".{suffix.lower()}" in IMAGE_SUFFIXES and stem not in found:
                        found[stem] = (member.offset_data, member.size)
                    elif suffix.lower() == "cls":
                        classes[stem] = parse_class(shard, stem, archive.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError) as err:
            raise unreadable(shard, err) from None
        for stem, (offset, length) in found.items():
            paths.append(str(shard))
            offsets.append(offset)
            lengths.append(length)
            keys.append(stem)
            labels.append(classes.get(stem, -1))
    return paths, np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64), keys, labels


def read_file_list(path: Path) -> tuple[list[Path], list[int], list[str]]:
    """A file list: one image per line, ``path`` or ``path,class`` (a tab works too); relative paths
    are relative to the list's folder; blank lines and lines starting with ``#`` are skipped."""
    if not path.is_file():
        raise SelfsupError(f"file list {path} does not exist")
    files, names = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.replace("\t", ",").split(",")]
        if len(parts) > 2:
            raise SelfsupError(f"{path}:{number}: expected 'path' or 'path,class', got {line!r}")
        file = Path(parts[0]).expanduser()
        files.append(file if file.is_absolute() else path.parent / file)
        names.append(parts[1] if len(parts) == 2 and parts[1] else None)
    if not files:
        raise SelfsupError(f"file list {path} lists no images")
    labelled = [name is not None for name in names]
    if any(labelled) and not all(labelled):
        first = labelled.index(False) if labelled[0] else labelled.index(True)
        raise SelfsupError(f"{path}: some lines have a class and some do not (line of {files[first].name}); "
                           "give every image a class, or none")
    missing = [f for f in files[:10000] if not f.is_file()]  # a first check; every read checks again
    if missing:
        raise SelfsupError(f"{path} lists {missing[0]}, which does not exist"
                           + (f" ({len(missing)} missing in the first 10000 lines)" if len(missing) > 1 else ""))
    named = {n for n in names if n is not None}
    # Class names that are all numbers keep their numeric order ("2" before "10").
    classes = sorted(named, key=int) if all(n.lstrip("-").isdigit() for n in named) else sorted(named)
    number = {name: index for index, name in enumerate(classes)}
    labels = [number[n] if n is not None else -1 for n in names]
    return files, labels, classes


# ---------------------------------------------------------------- the loader


class CroppingReader(Dataset):
    """What a worker does for one image: decode it once, make the base image and every view's
    crop, from a generator seeded by (seed, epoch, position)."""

    def __init__(self, dataset: ImageDataset, crops: list[CropSpec], seed: int, base: bool = True) -> None:
        if not isinstance(dataset.store, FileStore):
            raise TypeError("CroppingReader reads a FileStore")
        if not crops and not base:
            raise ValueError("a reader that makes neither crops nor the base image makes nothing")
        self.store, self.rows, self.targets = dataset.store, dataset.rows, dataset.targets
        self.crops, self.seed, self.epoch, self.base = crops, seed, 0, base

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, position: int) -> tuple[Any, ...]:
        bad = []
        for attempt in range(len(self)):  # a bad file is replaced by the next image that decodes
            index = (position + attempt) % len(self)
            row = int(self.rows[index]) if self.rows is not None else index
            try:
                image = self.store.open(row)
            except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
                if not self.store.skip_bad:
                    return ("bad", self.store.name_of(row), err)
                bad.append(self.store.name_of(row))
                continue
            generator = torch.Generator().manual_seed(crop_seed(self.seed, self.epoch, index))
            base, crops, boxes = self.views_of(image, generator)
            return base, crops, boxes, int(self.targets[index]), index, bad
        raise SelfsupError(f"no image of {self.store.source} could be decoded")

    def views_of(self, image: Any, generator: torch.Generator
                 ) -> tuple[torch.Tensor | None, list[torch.Tensor], torch.Tensor]:
        from PIL import Image

        width, height = image.size
        base = to_tensor(fit_square(image, self.store.size)) if self.base else None  # the image a memory run holds
        crops, boxes = [], []
        for spec in self.crops:
            x, y, w, h = crop_box(width, height, spec, generator)
            crops.append(to_tensor(image.resize((spec.size, spec.size), Image.Resampling.BILINEAR,
                                                box=(x, y, x + w, y + h))))
            boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
        return base, crops, torch.tensor(boxes, dtype=torch.float32).reshape(len(boxes), 4)


def to_tensor(image: Any) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


def collate(samples: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """A batch from a worker: (Precropped, targets, indices, skipped files) or, when a file did not
    decode and bad files are not skipped, ("bad", name, error) of the first one."""
    for sample in samples:
        if isinstance(sample[0], str):
            return sample
    views = len(samples[0][1])
    images = Precropped(torch.stack([s[0] for s in samples]) if samples[0][0] is not None else None,
                        [torch.stack([s[1][v] for s in samples]) for v in range(views)],
                        [torch.stack([s[2][v] for s in samples]) for v in range(views)])
    return (images, torch.tensor([s[3] for s in samples]), torch.tensor([s[4] for s in samples]),
            [name for s in samples for name in s[5]])


def default_workers(world_size: int = 1) -> int:
    """The cores this process's share of the machine does not need for training: all but one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, world_size) - 1)


class StreamLoader:
    """:class:`~selfsup.data.BatchLoader`'s batches from image files: ``(Precropped, targets, indices)``.

    ``crops``: the view generator's :class:`CropSpec` list, in the order its views use them (empty:
    the base image only). ``base``: also hand over each image at the training size (the online probe
    reads it; without crops it is what the views are made from). ``on_skip`` receives the files a
    batch skipped (``data.skip_bad``).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device, crops: list[CropSpec], *,
                 workers: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 base: bool = True, prefetch: int = 4, on_skip: Callable[[list[str]], None] | None = None) -> None:
        self.batch_size, self.device, self.workers, self.prefetch = batch_size, device, workers, prefetch
        self.reader = CroppingReader(dataset, crops, seed, base=base or not crops)
        self.sampler = DistributedSampler(range(len(dataset)), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=True)
        self.on_skip = on_skip
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.reader.epoch = epoch

    def iterate(self, start: int = 0) -> Iterator[tuple[Precropped, torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch number ``start`` on."""
        order = list(self.sampler)
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(start, len(self))]
        if not batches:
            return
        # Its own generator: a DataLoader draws its workers' base seed when it starts, which would
        # otherwise move the global stream the views draw from (and a resumed run's views with it).
        loader = DataLoader(self.reader, batch_sampler=batches, num_workers=self.workers, collate_fn=collate,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0),
                            prefetch_factor=self.prefetch if self.workers else None)
        for batch in loader:
            if isinstance(batch[0], str):
                raise bad_file(batch[1], batch[2])
            images, targets, index, skipped = batch
            if skipped:
                self.skipped += skipped
                if self.on_skip is not None:
                    self.on_skip(skipped)
            yield (images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator[tuple[Precropped, torch.Tensor, torch.Tensor]]:
        return self.iterate()
