"""Pretext transforms and their view generators: rotations, jigsaw tiles, patch pairs, counting.

Like :mod:`selfsup.views`, everything runs batched on the training device with random
parameters drawn per image from torch's global generator (seeded per rank and checkpointed
by the trainer). A view generator returns a list of tensors; besides images it may return
the labels its transform implies (a rotation, a permutation, a patch position), because
only the generator knows what it drew.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SelfsupError
from .views import Augment


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


# ---------------------------------------------------------------- jigsaw permutations

def permutation_set(count: int, seed: int = 0, tiles: int = 9) -> torch.Tensor:
    """``count`` permutations of ``tiles`` chosen greedily for maximal minimal Hamming distance.

    Noroozi & Favaro 2016 (arXiv:1603.09246), Sec. 3.2 / Alg. 1, with the minimum instead of
    the average distance as the criterion: start from a random permutation, then repeatedly
    add the permutation whose smallest Hamming distance to those already chosen is largest
    (ties broken at random by ``seed``). The same (count, seed) always gives the same set.
    """
    total = math.factorial(tiles)
    if not 2 <= count <= total:
        raise SelfsupError(f"jigsaw needs between 2 and {total} permutations, got {count}")
    return _permutation_set(count, seed, tiles).clone()


@functools.lru_cache(maxsize=8)
def _all_permutations(tiles: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)


@functools.lru_cache(maxsize=8)
def _permutation_set(count: int, seed: int, tiles: int) -> torch.Tensor:
    every = _all_permutations(tiles)
    total = len(every)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(total))]
    distance = (every != every[chosen[0]]).sum(1).astype(np.int8)
    for _ in range(count - 1):
        candidates = np.flatnonzero(distance == distance.max())
        pick = int(candidates[rng.integers(len(candidates))])
        chosen.append(pick)
        np.minimum(distance, (every != every[pick]).sum(1).astype(np.int8), out=distance)
    return torch.from_numpy(every[chosen].astype(np.int64))


def min_hamming_distance(permutations: torch.Tensor) -> int:
    """Smallest Hamming distance between two different rows."""
    distance = (permutations[:, None, :] != permutations[None, :, :]).sum(2)
    distance.fill_diagonal_(permutations.shape[1] + 1)
    return int(distance.min())


# ---------------------------------------------------------------- tiles

def tile_size_for(image_size: int, grid: int, gap: float) -> int:
    """Side of each tile: the grid cell minus the gap (a fraction of the cell)."""
    cell = image_size // grid
    return cell - max(1, round(gap * cell)) if gap > 0 else cell


def cut_tiles(x: torch.Tensor, grid: int = 3, tile: int | None = None, jitter: bool = True) -> torch.Tensor:
    """(B, C, S, S) -> (B, grid^2, C, tile, tile), tiles in row-major order of the grid cells.

    Each tile lies inside its cell; with ``jitter`` its position within the cell is random per
    image and per tile (random gaps between tiles and random jitter, Noroozi & Favaro Sec. 3.3:
    edges and positions must not give the puzzle away). Without it the tile is centred.
    """
    batch, channels, size, _ = x.shape
    cell = size // grid
    tile = tile or cell
    slack = cell - tile
    cells = grid * grid
    if jitter and slack > 0:
        offsets = torch.randint(0, slack + 1, (batch, cells, 2), device=x.device)
    else:
        offsets = torch.full((batch, cells, 2), slack // 2, device=x.device)
    origin = torch.arange(cells, device=x.device)
    top = (origin // grid) * cell + offsets[..., 0]                         # (B, cells)
    left = (origin % grid) * cell + offsets[..., 1]
    steps = torch.arange(tile, device=x.device)
    rows = (top[..., None] + steps)[..., :, None]                           # (B, cells, tile, 1)
    cols = (left[..., None] + steps)[..., None, :]                          # (B, cells, 1, tile)
    flat = rows * size + cols                                               # (B, cells, tile, tile)
    pixels = x.flatten(2)                                                   # (B, C, S*S)
    gathered = torch.gather(pixels[:, None].expand(-1, cells, -1, -1), 3,
                            flat.flatten(2)[:, :, None, :].expand(-1, -1, channels, -1))
    return gathered.view(batch, cells, channels, tile, tile)


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each tile to zero mean and unit variance per channel (Noroozi & Favaro: no shortcut
    through the tiles' low-level statistics)."""
    mean = tiles.mean((-2, -1), keepdim=True)
    std = tiles.std((-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


def random_grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    """Replace RGB images by their luma with probability ``p`` each (against chromatic
    aberration shortcuts); 1-channel images are returned unchanged."""
    if p <= 0 or x.shape[1] != 3:
        return x
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].expand_as(x)
    chosen = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(chosen, luma, x)


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Tiles (B, T, ...) rearranged so that position j holds tile ``permutations[b, j]``."""
    index = permutations.view(*permutations.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, index)


# ---------------------------------------------------------------- view generators

class RotationViews(Augment):
    """One augmented view per image, then all 4 rotations of it: [(4B, C, S, S), labels (4B,)].

    Gidaris et al. 2018 train on all four rotations of every image in the same batch.
    Augment defaults here are mild (crop scale 0.5-1, flip, no colour): the task is the
    augmentation.
    """

    num_outputs = 2

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                 crop_scale: tuple[float, float] = (0.5, 1.0), flip_p: float = 0.5,
                 jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0), jitter_p: float = 0.0,
                 grayscale_p: float = 0.0) -> None:
        super().__init__(image_size, channels, mean, std, crop_scale=crop_scale, flip_p=flip_p, jitter=jitter,
                         jitter_p=jitter_p, grayscale_p=grayscale_p)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        rotated, labels = rotate_all(super().forward(images))
        return [rotated, labels]


class TileViews(Augment):
    """Shared base of the tile-based generators: augment, random grayscale, cut a grid of
    jittered tiles, normalise each tile. Refuses images too small for the grid."""

    MIN_TILE = 6

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                 grid: int = 3, gap: float = 0.15, tile_grayscale_p: float = 0.3,
                 crop_scale: tuple[float, float] = (0.6, 1.0), grayscale_p: float = 0.0,
                 **augment_args: object) -> None:
        super().__init__(image_size, channels, mean, std, crop_scale=crop_scale, grayscale_p=grayscale_p,
                         **augment_args)  # type: ignore[arg-type]
        self.grid, self.tile_grayscale_p = grid, tile_grayscale_p
        self.tile = tile_size_for(image_size, grid, gap)
        if self.tile < self.MIN_TILE:
            needed = grid * math.ceil(self.MIN_TILE / (1 - gap))
            raise SelfsupError(f"{image_size} px images are too small for {grid}x{grid} tiles of at least "
                               f"{self.MIN_TILE} px after the gaps (they would be {self.tile} px); upscale them "
                               f"with data.image_size={max(needed, 2 * image_size)} (the presets do), or lower "
                               "views.gap / views.grid")

    def tiles(self, images: torch.Tensor) -> torch.Tensor:
        x = random_grayscale(super().forward(images), self.tile_grayscale_p)
        return normalize_tiles(cut_tiles(x, self.grid, self.tile))


class JigsawViews(TileViews):
    """Shuffled 3x3 tiles and the index of the permutation used: [(B, 9, C, t, t), labels (B,)].

    The permutation set (``num_permutations``, maximal minimal Hamming distance, fixed by
    ``permutation_seed``) is a buffer, saved with the model: the classes never change.
    Noroozi & Favaro 2016 defaults: 1000 permutations (100 here: small images and budgets).
    """

    num_outputs = 2

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                 num_permutations: int = 100, permutation_seed: int = 0, **tile_args: object) -> None:
        super().__init__(image_size, channels, mean, std, **tile_args)  # type: ignore[arg-type]
        self.register_buffer("permutations", permutation_set(num_permutations, permutation_seed, self.grid ** 2))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        tiles = self.tiles(images)
        labels = torch.randint(len(self.permutations), (tiles.shape[0],), device=tiles.device)
        return [shuffle_tiles(tiles, self.permutations.to(tiles.device)[labels]), labels]


class PatchPairViews(TileViews):
    """Context prediction: the centre tile and one of its 8 neighbours, [(B, 2, C, t, t), labels (B,)].

    Doersch, Gupta, Efros 2015 (arXiv:1505.05192): gaps between patches and per-patch jitter
    so that the network cannot match edges; label = which neighbour (0-7, row-major).
    """

    num_outputs = 2

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                 gap: float = 0.2, **tile_args: object) -> None:
        super().__init__(image_size, channels, mean, std, gap=gap, **tile_args)  # type: ignore[arg-type]
        if self.grid != 3:
            raise SelfsupError(f"context prediction uses a 3x3 grid (a centre and 8 neighbours), got grid={self.grid}")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        tiles = self.tiles(images)
        labels = torch.randint(8, (tiles.shape[0],), device=tiles.device)
        rows = torch.arange(tiles.shape[0], device=tiles.device)
        return [torch.stack([tiles[:, 4], tiles[rows, neighbour_position(labels)]], dim=1), labels]


def neighbour_position(labels: torch.Tensor) -> torch.Tensor:
    """Grid position (row-major, 0-8) of neighbour ``labels`` (0-7): every cell but the centre, 4."""
    return labels + (labels >= 4).long()


class CountingViews(Augment):
    """Counting (Noroozi, Pirsiavash, Favaro 2017, arXiv:1708.06734): for each augmented image x
    of side S, its 2x downsampled version D(x) and its 2x2 tiles T_j(x), all S/2 px:
    [(B, C, S/2, S/2), (B, 4, C, S/2, S/2)]."""

    num_outputs = 2

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = super().forward(images)
        half = x.shape[-1] // 2
        down = F.interpolate(x, size=(half, half), mode="bilinear", antialias=True, align_corners=False)
        return [down, cut_tiles(x, grid=2, tile=half, jitter=False)]


class PirlViews(Augment):
    """PIRL (Misra & van der Maaten 2020): an augmented image I and a pretext-transformed I^t.

    ``transform``: ``jigsaw`` gives I^t as 9 tiles in a random permutation drawn from all 9!
    (permutations are inputs here, not classes); ``rotation`` gives I^t rotated by a random
    multiple of 90 degrees; ``jigsaw+rotation`` rotates the image, then tiles it.
    Returns [I (B, C, S, S), I^t (B, 9, C, t, t) or (B, C, S, S)].
    """

    num_outputs = 2

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                 transform: str = "jigsaw", grid: int = 3, gap: float = 0.15, tile_grayscale_p: float = 0.3,
                 **augment_args: object) -> None:
        super().__init__(image_size, channels, mean, std, **augment_args)  # type: ignore[arg-type]
        if transform not in ("jigsaw", "rotation", "jigsaw+rotation"):
            raise SelfsupError(f"views.transform must be jigsaw, rotation or jigsaw+rotation, got '{transform}'")
        self.transform = transform
        self.tiler = TileViews(image_size, channels, mean, std, grid=grid, gap=gap,
                               tile_grayscale_p=tile_grayscale_p, **augment_args) if "jigsaw" in transform else None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        image = super().forward(images)
        if self.transform == "rotation":
            turns = torch.randint(4, (images.shape[0],), device=images.device)
            return [image, rotate_each(super().forward(images), turns)]
        source = images
        if self.transform == "jigsaw+rotation":
            source = rotate_each(images, torch.randint(4, (images.shape[0],), device=images.device))
        tiles = self.tiler.tiles(source)
        order = torch.argsort(torch.rand(tiles.shape[0], tiles.shape[1], device=tiles.device), dim=1)
        return [image, shuffle_tiles(tiles, order)]


class ExemplarViews(Augment):
    """Exemplar-CNN (Dosovitskiy et al. 2014, arXiv:1406.6909): one heavily augmented view per
    image -- crop and scale, rotation up to +-20 degrees, strong colour changes."""

    num_outputs = 1

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                 rotation_degrees: float = 20.0, crop_scale: tuple[float, float] = (0.3, 1.0),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                 **augment_args: object) -> None:
        super().__init__(image_size, channels, mean, std, crop_scale=crop_scale, jitter=jitter, jitter_p=jitter_p,
                         **augment_args)  # type: ignore[arg-type]
        if rotation_degrees > 0:
            import kornia.augmentation as K

            self.ops.insert(1, K.RandomRotation(rotation_degrees, p=1.0))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [super().forward(images)]


def tile_features(backbone: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
    """(B, T, C, t, t) tiles through one shared trunk -> (B, T, D)."""
    batch, count = tiles.shape[:2]
    return backbone(tiles.flatten(0, 1)).view(batch, count, -1)
