"""Tiles of an image: the 3x3 grid of Jigsaw, context prediction and PIRL, and the permutation sets.

Everything runs batched on the training device with random parameters drawn per image and per
tile from torch's global generator.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import SelfsupError
from .coins import grayscale, toss

MIN_TILE = 6
"""Smallest tile side (px) a tile method accepts: below it a ResNet sees hardly any structure."""


# ---------------------------------------------------------------- jigsaw permutations

def permutation_set(count: int, seed: int = 0, tiles: int = 9, distance: str = "maximal") -> torch.Tensor:
    """``count`` permutations of ``tiles`` chosen greedily for maximal minimal Hamming distance.

    Noroozi & Favaro 2016 (arXiv:1603.09246), Sec. 3.2 / Alg. 1, with the minimum instead of
    the average distance as the criterion: start from a random permutation, then repeatedly
    add the permutation whose smallest Hamming distance to those already chosen is largest
    (ties broken at random by ``seed``). The same (count, seed) always gives the same set.
    ``distance="minimal"`` adds the closest permutation not yet chosen instead: the set of their
    Table 3's "minimal" row, whose classes differ by as few tiles as possible (2), for the study of
    how the distance between permutations changes what the network learns.
    """
    total = math.factorial(tiles)
    if not 2 <= count <= total:
        raise SelfsupError(f"jigsaw needs between 2 and {total} permutations, got {count}")
    if distance not in ("maximal", "minimal"):
        raise SelfsupError(f"the permutation distance is maximal or minimal, got {distance!r}")
    return _permutation_set(count, seed, tiles, distance == "maximal").clone()


@functools.lru_cache(maxsize=8)
def _all_permutations(tiles: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)


@functools.lru_cache(maxsize=8)
def _permutation_set(count: int, seed: int, tiles: int, farthest: bool = True) -> torch.Tensor:
    every = _all_permutations(tiles)
    columns = np.ascontiguousarray(every.T)  # one row per tile position: distances add up in contiguous passes
    total = len(every)
    rng = np.random.default_rng(seed)

    def distance_to(index: int) -> np.ndarray:
        distance = np.zeros(total, dtype=np.int8)
        for position in columns:
            distance += position != position[index]
        return distance

    chosen = [int(rng.integers(total))]
    distance = distance_to(chosen[0])
    for _ in range(count - 1):
        # chosen permutations are at distance 0: the closest new one is the smallest positive distance
        target = distance.max() if farthest else distance[distance > 0].min()
        candidates = np.flatnonzero(distance == target)
        pick = int(candidates[rng.integers(len(candidates))])
        chosen.append(pick)
        np.minimum(distance, distance_to(pick), out=distance)
    return torch.from_numpy(every[chosen].astype(np.int64))


def min_hamming_distance(permutations: torch.Tensor) -> int:
    """Smallest Hamming distance between two different rows."""
    distance = (permutations[:, None, :] != permutations[None, :, :]).sum(2)
    distance.fill_diagonal_(permutations.shape[1] + 1)
    return int(distance.min())


# ---------------------------------------------------------------- cutting tiles

def cut_tiles(x: torch.Tensor, grid: int = 3, tile: int | None = None, min_gap: int = 0,
              jitter: bool = True) -> torch.Tensor:
    """(B, C, S, S) -> (B, grid^2, C, tile, tile), tiles in row-major order of the grid cells.

    Each tile lies inside its cell. Of the cell's spare room (cell - tile), ``min_gap`` pixels
    always separate neighbouring tiles; the rest is random jitter, drawn per image and per tile
    (Doersch et al. 2015: a gap plus jitter, so that edges and positions cannot give the task
    away). Without ``jitter`` every tile sits in the middle of its room.
    """
    batch, channels, size, _ = x.shape
    cell = size // grid
    tile = tile or cell
    jitter_room = cell - tile - min_gap
    if jitter_room < 0:
        raise ValueError(f"tiles of {tile} px with a {min_gap} px gap do not fit {cell} px cells")
    cells = grid * grid
    if jitter and jitter_room > 0:
        offsets = torch.randint(0, jitter_room + 1, (batch, cells, 2), device=x.device)
    else:
        offsets = torch.full((batch, cells, 2), jitter_room // 2, device=x.device)
    # Tile origins sit at least min_gap // 2 inside their cell's near edge and at most
    # min_gap - min_gap // 2 from its far edge: two neighbours are >= min_gap apart.
    offsets = offsets + min_gap // 2
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


def grid_patches(x: torch.Tensor, size: int, stride: int | None = None) -> torch.Tensor:
    """(B, C, S, S) -> (B, G * G, C, size, size), the patches of a grid with ``stride`` pixels
    between origins, in row-major order: side by side (Selfie; ``stride=None``) or overlapping
    (CPC: 64 px patches every 32 px); G = (S - size) // stride + 1, pixels past the last whole
    patch left out."""
    stride = stride or size
    batch, channels = x.shape[:2]
    grid = x.unfold(2, size, stride).unfold(3, size, stride)                  # (B, C, G, G, size, size)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(batch, -1, channels, size, size)


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
    return toss(x, p, grayscale)[0]


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Tiles (B, T, ...) rearranged so that position j holds tile ``permutations[b, j]``."""
    index = permutations.view(*permutations.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, index)


@dataclass(frozen=True)
class TileSpec:
    """How a grid of tiles is cut (Noroozi & Favaro 2016 Sec. 3.3; Doersch et al. 2015 Sec. 3).

    Of every cell, ``gap`` (a fraction of the cell, at least ``min_gap_px`` pixels) is a gap that
    always separates neighbouring tiles, and ``jitter`` (a fraction of the cell) is random
    displacement on top: tiles never touch, so matching edges cannot solve the puzzle. At
    225 px (75 px cells) the defaults give Noroozi's 64 px tiles; at 48 px, 13 px tiles
    2-4 px apart. ``grayscale_p``: share of images turned to luma before tiling (Noroozi: 30%).
    """

    grid: int = 3
    gap: float = 0.1
    min_gap_px: int = 2
    jitter: float = 0.05
    grayscale_p: float = 0.3
    normalize: bool = True
    """Per-tile mean and std normalisation."""


class Tiler(nn.Module):
    """Cuts normalised (B, C, S, S) images into (B, grid^2, C, t, t) tiles as a :class:`TileSpec` says.

    Refuses sizes that cannot keep the gap with tiles of at least ``MIN_TILE`` pixels, naming
    the image size that would.
    """

    def __init__(self, image_size: int, spec: TileSpec = TileSpec()) -> None:
        super().__init__()
        self.spec, self.grid = spec, spec.grid
        self.gap, self.jitter, self.tile = tile_geometry(image_size, spec)
        if self.tile < MIN_TILE:
            needed = next(size for size in range(image_size, 100 * spec.grid * MIN_TILE)
                          if tile_geometry(size, spec)[2] >= MIN_TILE)
            raise SelfsupError(
                f"{image_size} px images are too small for {spec.grid}x{spec.grid} tiles of at least {MIN_TILE} px "
                f"kept {self.gap} px apart with {self.jitter} px of jitter (they would be {self.tile} px); upscale "
                f"them with data.image_size={needed} (the presets do), or lower views.tiles.gap / jitter / grid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles = cut_tiles(random_grayscale(x, self.spec.grayscale_p), self.grid, self.tile, self.gap)
        return normalize_tiles(tiles) if self.spec.normalize else tiles


def tile_geometry(image_size: int, spec: TileSpec) -> tuple[int, int, int]:
    """(guaranteed gap, jitter, tile side) in pixels for images of ``image_size``."""
    cell = image_size // spec.grid
    gap = max(spec.min_gap_px, round(spec.gap * cell))
    jitter = max(0, round(spec.jitter * cell))
    return gap, jitter, cell - gap - jitter
