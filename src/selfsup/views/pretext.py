"""View generators of the pretext tasks: rotations, jigsaw tiles, patch pairs, counting, PIRL, Exemplar.

A generator returns a list of tensors; besides images it may return the labels its transform
implies (a rotation, a permutation, a patch position), because only the generator knows what
it drew. Each is composed of an :class:`Augment` (its ``augment`` settings) and, for tile
tasks, a :class:`Tiler` (its ``tiles`` settings).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Count, PositiveInt
from ..errors import SelfsupError
from .augment import Augment, AugmentSpec, ImageInfo
from .tiles import Tiler, TileSpec, cut_tiles, permutation_set, shuffle_tiles

MILD = AugmentSpec(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)
"""Rotation's augmentation: crop and flip only (the task is the augmentation)."""
TILE_SOURCE = AugmentSpec(crop_scale=(0.6, 1.0), grayscale_p=0.0)
"""The crop tiles are cut from (VISSL's PIRL jigsaw: 0.6-1); grayscale is the tiler's."""


# ---------------------------------------------------------------- rotations

def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> the 4 rotations (0, 90, 180, 270 degrees) of each image, (4B, ...), and
    their labels 0..3 (rotation-major: rows [k B, (k + 1) B) are rotated k x 90 degrees)."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotate_each(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (B, C, H, W) by ``quarter_turns[i]`` x 90 degrees (square images)."""
    out = x.clone()
    for k in range(1, 4):
        chosen = quarter_turns == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    return out


class RotationViews(nn.Module):
    """One augmented view per image, then all 4 rotations of it: [(4B, C, S, S), labels (4B,)].

    Gidaris et al. 2018 train on all four rotations of every image in the same batch.
    """

    num_outputs = 2

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = MILD) -> None:
        super().__init__()
        self.augment = Augment(image, augment)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        rotated, labels = rotate_all(self.augment(images))
        return [rotated, labels]


# ---------------------------------------------------------------- tiles

class JigsawViews(nn.Module):
    """Shuffled 3x3 tiles and the index of the permutation used: [(B, 9, C, t, t), labels (B,)].

    The permutation set (``num_permutations``, maximal minimal Hamming distance, fixed by
    ``permutation_seed``) is a buffer, saved with the model: the classes never change.
    Noroozi & Favaro 2016 defaults: 1000 permutations (100 here: small images and budgets), as far
    apart as possible (``permutation_distance="minimal"``: as close as possible, their Table 3's
    ablation).
    """

    num_outputs = 2

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = TILE_SOURCE, tiles: TileSpec = TileSpec(),
                 num_permutations: PositiveInt = 100, permutation_seed: Count = 0,
                 permutation_distance: Literal["maximal", "minimal"] = "maximal") -> None:
        super().__init__()
        self.augment, self.tiler = Augment(image, augment), Tiler(image.size, tiles)
        self.register_buffer("permutations", permutation_set(num_permutations, permutation_seed, tiles.grid ** 2,
                                                             permutation_distance))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        tiles = self.tiler(self.augment(images))
        labels = torch.randint(len(self.permutations), (tiles.shape[0],), device=tiles.device)
        return [shuffle_tiles(tiles, self.permutations[labels]), labels]


class PatchPairViews(nn.Module):
    """Context prediction: the centre tile and one of its 8 neighbours, [(B, 2, C, t, t), labels (B,)].

    Doersch, Gupta, Efros 2015 (arXiv:1505.05192): a gap between patches plus per-patch jitter
    so that the network cannot match edges (their gap is half a patch: ``tiles.gap`` 0.2 here);
    label = which neighbour (0-7, row-major).
    """

    num_outputs = 2

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = TILE_SOURCE,
                 tiles: TileSpec = TileSpec(gap=0.2, jitter=0.05)) -> None:
        super().__init__()
        if tiles.grid != 3:
            raise SelfsupError(f"context prediction uses a 3x3 grid (a centre and 8 neighbours), got grid={tiles.grid}")
        self.augment, self.tiler = Augment(image, augment), Tiler(image.size, tiles)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        tiles = self.tiler(self.augment(images))
        labels = torch.randint(8, (tiles.shape[0],), device=tiles.device)
        rows = torch.arange(tiles.shape[0], device=tiles.device)
        return [torch.stack([tiles[:, 4], tiles[rows, neighbour_position(labels)]], dim=1), labels]


def neighbour_position(labels: torch.Tensor) -> torch.Tensor:
    """Grid position (row-major, 0-8) of neighbour ``labels`` (0-7): every cell but the centre, 4."""
    return labels + (labels >= 4).long()


class CountingViews(nn.Module):
    """Counting (Noroozi, Pirsiavash, Favaro 2017, arXiv:1708.06734): for each augmented image x
    of side S, its 2x downsampled version D(x) and its 2x2 tiles T_j(x), all S/2 px:
    [(B, C, S/2, S/2), (B, 4, C, S/2, S/2)]."""

    num_outputs = 2

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = AugmentSpec()) -> None:
        super().__init__()
        self.augment = Augment(image, augment)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.augment(images)
        half = x.shape[-1] // 2
        down = F.interpolate(x, size=(half, half), mode="bilinear", antialias=True, align_corners=False)
        return [down, cut_tiles(x, grid=2, tile=half, jitter=False)]


class PirlViews(nn.Module):
    """PIRL (Misra & van der Maaten 2020): an augmented image I and a pretext-transformed I^t.

    ``transform``: ``jigsaw`` gives I^t as 9 tiles in a random permutation drawn from all 9!
    (permutations are inputs here, not classes) cut from their own crop (``tile_augment``,
    VISSL: scale 0.6-1) with ``tiles`` (VISSL: 64 px patches in 85 px cells, 25% spare room);
    ``rotation`` gives I^t as another view of ``augment`` rotated by a random multiple of 90
    degrees; ``jigsaw+rotation`` rotates the image, then tiles it.
    Returns [I (B, C, S, S), I^t (B, 9, C, t, t) or (B, C, S, S)].
    """

    num_outputs = 2

    def __init__(self, image: ImageInfo, *, transform: Literal["jigsaw", "rotation", "jigsaw+rotation"] = "jigsaw", augment: AugmentSpec = AugmentSpec(),
                 tile_augment: AugmentSpec = TILE_SOURCE,
                 tiles: TileSpec = TileSpec(gap=0.15, jitter=0.1)) -> None:
        super().__init__()
        if transform not in ("jigsaw", "rotation", "jigsaw+rotation"):
            raise SelfsupError(f"views.transform must be jigsaw, rotation or jigsaw+rotation, got '{transform}'")
        self.transform = transform
        self.augment = Augment(image, augment)
        self.tile_augment = Augment(image, tile_augment) if "jigsaw" in transform else None
        self.tiler = Tiler(image.size, tiles) if "jigsaw" in transform else None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        image = self.augment(images)
        if self.transform == "rotation":
            turns = torch.randint(4, (images.shape[0],), device=images.device)
            return [image, rotate_each(self.augment(images), turns)]
        source = images
        if self.transform == "jigsaw+rotation":
            source = rotate_each(images, torch.randint(4, (images.shape[0],), device=images.device))
        tiles = self.tiler(self.tile_augment(source))
        order = torch.argsort(torch.rand(tiles.shape[0], tiles.shape[1], device=tiles.device), dim=1)
        return [image, shuffle_tiles(tiles, order)]


class ExemplarViews(nn.Module):
    """Exemplar-CNN (Dosovitskiy et al. 2014, arXiv:1406.6909): one heavily augmented view per
    image -- crop and scale, rotation up to +-20 degrees, strong colour changes (no grayscale:
    it is not among the paper's transformations)."""

    num_outputs = 1

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = AugmentSpec(
            crop_scale=(0.3, 1.0), rotation_degrees=20.0, grayscale_p=0.0)) -> None:
        super().__init__()
        self.augment = Augment(image, augment)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.augment(images)]
