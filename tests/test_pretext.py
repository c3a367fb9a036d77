"""Pretext transforms: rotations, permutation sets, tiles, and the view generators built on them."""
import math

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.views import (AugmentSpec, CountingViews, ImageInfo, JigsawViews, PatchPairViews, PirlViews,
                           RotationViews, TileSpec, cut_tiles, min_hamming_distance, neighbour_position, normalize_tiles, permutation_set,
                           random_grayscale, rotate_all, rotate_each, shuffle_tiles)


def gray(size):
    return ImageInfo(size, 1, (0.5,), (0.25,))


def test_rotation_labels_match_the_rotated_tensors():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)
    rotated, labels = rotate_all(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # A quarter turn counter-clockwise moves the top-right pixel to the top-left.
    assert rotated[2, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]
    for k in range(4):
        assert torch.equal(rotated[2 * k:2 * k + 2], torch.rot90(x, k, dims=(2, 3)))
    turned = rotate_each(x, torch.tensor([3, 0]))
    assert torch.equal(turned[0], torch.rot90(x[0], 3, dims=(1, 2))) and torch.equal(turned[1], x[1])


def test_rotation_views_hold_all_four_rotations_of_one_view():
    views = RotationViews(gray(16))
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    rotated, labels = views(images)
    assert rotated.shape == (12, 1, 16, 16) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.equal(rotated[3:6], torch.rot90(rotated[:3], 1, dims=(2, 3)))


def test_permutation_set_is_deterministic_distinct_and_far_apart():
    first, again, other = permutation_set(100, seed=0), permutation_set(100, seed=0), permutation_set(100, seed=1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (100, 9) and len({tuple(p) for p in first.tolist()}) == 100
    assert all(sorted(p) == list(range(9)) for p in first.tolist())
    # The greedy choice guarantees the Gilbert-Varshamov distance: the largest d with
    # (N - 1) * |ball of radius d - 1| < 9!, a ball holding sum_k C(9, k) * derangements(k).
    derangements = [1, 0, 1, 2, 9, 44, 265, 1854, 14833, 133496]
    ball = lambda r: sum(math.comb(9, k) * derangements[k] for k in range(r + 1))  # noqa: E731
    bound = max(d for d in range(1, 10) if 99 * ball(d - 1) < math.factorial(9))
    assert bound == 5 and min_hamming_distance(first) >= bound
    assert min_hamming_distance(first) == 6  # what the greedy reaches (pinned: a regression check)
    assert min_hamming_distance(permutation_set(9, seed=3)) == 9  # 9 mutually "deranged" rows exist
    with pytest.raises(SelfsupError, match="between 2 and 362880"):
        permutation_set(1)


def test_the_minimal_distance_set_differs_by_two_tiles_and_the_views_use_it():
    close = permutation_set(100, seed=0, distance="minimal")
    assert close.shape == (100, 9) and len({tuple(p) for p in close.tolist()}) == 100
    assert min_hamming_distance(close) == 2 < min_hamming_distance(permutation_set(100, seed=0))
    views = JigsawViews(gray(30), num_permutations=100, permutation_distance="minimal")
    assert torch.equal(views.permutations, close)
    with pytest.raises(SelfsupError, match="maximal or minimal"):
        permutation_set(10, distance="average")


def test_tiles_reassemble_to_the_image_for_the_identity_permutation():
    x = torch.randn(2, 3, 12, 12)
    tiles = cut_tiles(x, grid=3, tile=4, jitter=False)
    assert tiles.shape == (2, 9, 3, 4, 4)
    same = shuffle_tiles(tiles, torch.arange(9).expand(2, 9))
    rows = [torch.cat(list(same[:, r * 3:(r + 1) * 3].unbind(1)), dim=-1) for r in range(3)]
    assert torch.equal(torch.cat(rows, dim=-2), x)


def test_shuffled_position_j_holds_tile_p_j():
    tiles = torch.randn(2, 9, 1, 3, 3)
    order = torch.stack([torch.randperm(9), torch.randperm(9)])
    shuffled = shuffle_tiles(tiles, order)
    for b in range(2):
        for j in range(9):
            assert torch.equal(shuffled[b, j], tiles[b, order[b, j]])


def test_jittered_tiles_stay_inside_their_cells():
    size, tile = 15, 3
    x = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).repeat(4, 1, 1, 1)
    tiles = cut_tiles(x, grid=3, tile=tile, jitter=True)
    for cell in range(9):
        top_left = tiles[:, cell, 0, 0, 0].long()
        row, col = top_left // size, top_left % size
        assert ((row >= (cell // 3) * 5) & (row + tile <= (cell // 3 + 1) * 5)).all()
        assert ((col >= (cell % 3) * 5) & (col + tile <= (cell % 3 + 1) * 5)).all()
        expected = torch.stack([x[i, :, r:r + tile, c:c + tile] for i, (r, c) in enumerate(zip(row, col))])
        assert torch.equal(tiles[:, cell], expected)


def test_tile_normalisation_and_grayscale():
    tiles = normalize_tiles(torch.rand(2, 9, 3, 5, 5) * 7 + 3)
    assert tiles.mean((-2, -1)).abs().max() < 1e-5
    assert (tiles.std((-2, -1)) - 1).abs().max() < 1e-3
    rgb = torch.rand(64, 3, 4, 4)
    gray = random_grayscale(rgb, p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1]
                                                                      + 0.114 * rgb[:, 2])
    assert torch.equal(random_grayscale(rgb, p=0.0), rgb)


def test_jigsaw_views_labels_index_the_permutation_set():
    views = JigsawViews(gray(30), num_permutations=10)
    tiles, labels = views(torch.randint(0, 256, (6, 1, 30, 30), dtype=torch.uint8))
    assert tiles.shape == (6, 9, 1, 8, 8) and labels.min() >= 0 and labels.max() < 10  # 10 px cells - 2 px gap
    assert views.permutations.shape == (10, 9)


def test_images_too_small_for_tiles_are_refused_with_the_fix():
    with pytest.raises(SelfsupError, match="16 px images are too small for 3x3 tiles of at least 6 px kept 2 px apart "
                                           "with 0 px of jitter.*data.image_size=24"):
        JigsawViews(gray(16))
    with pytest.raises(SelfsupError, match="too small"):
        PirlViews(gray(16))
    PirlViews(gray(16), transform="rotation")  # whole images: no tiles, no limit


def test_patch_pair_labels_name_the_neighbour():
    assert neighbour_position(torch.arange(8)).tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    pairs, labels = PatchPairViews(ImageInfo(30, 3, (0.5,) * 3, (0.25,) * 3))(
        torch.randint(0, 256, (5, 3, 30, 30), dtype=torch.uint8))
    assert pairs.shape == (5, 2, 3, 8, 8) and 0 <= labels.min() and labels.max() < 8


def test_counting_views_downsample_and_quarter():
    down, tiles = CountingViews(gray(16))(torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8))
    assert down.shape == (3, 1, 8, 8) and tiles.shape == (3, 4, 1, 8, 8)


@pytest.mark.parametrize("transform, shape", [("jigsaw", (4, 9, 1, 7, 7)), ("rotation", (4, 1, 30, 30)),
                                              ("jigsaw+rotation", (4, 9, 1, 7, 7))])
def test_pirl_views_return_image_and_transformed(transform, shape):
    image, transformed = PirlViews(gray(30), transform=transform)(
        torch.randint(0, 256, (4, 1, 30, 30), dtype=torch.uint8))
    assert image.shape == (4, 1, 30, 30) and transformed.shape == shape
    assert math.isfinite(transformed.sum().item())


def _coordinates(size, batch=1):
    """Images whose pixel value is its flat position: a tile's top-left value gives its place."""
    return torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).repeat(batch, 1, 1, 1)


IDENTITY = AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


@pytest.mark.parametrize("size, spec", [(28, TileSpec()), (48, TileSpec()), (48, TileSpec(gap=0.2)),
                                        (30, TileSpec(gap=0.15, jitter=0.1))])
def test_neighbouring_tiles_never_touch_and_jitter_spans_its_room(size, spec):
    """Edge continuity is a shortcut: a guaranteed gap (at least min_gap_px) separates every pair of
    neighbours, with jitter on top (before, 1-3 px of slack let neighbours touch 6-25% of the time)."""
    from selfsup.views import Tiler, tile_geometry

    tiler = Tiler(size, TileSpec(**{**spec.__dict__, "normalize": False, "grayscale_p": 0.0}))
    gap, jitter, tile = tile_geometry(size, spec)
    assert gap >= spec.min_gap_px and tiler.tile == tile >= 6
    torch.manual_seed(0)
    tiles = tiler(_coordinates(size, batch=400))
    corner = tiles[:, :, 0, 0, 0].long()
    rows, cols = (corner // size).view(-1, 3, 3), (corner % size).view(-1, 3, 3)
    horizontal = cols[:, :, 1:] - (cols[:, :, :-1] + tile)
    vertical = rows[:, 1:, :] - (rows[:, :-1, :] + tile)
    gaps = torch.cat([horizontal.flatten(), vertical.flatten()])
    assert gaps.min() >= gap  # never closer than the guaranteed gap
    assert gaps.max() == gap + 2 * jitter  # and the jitter really moves them
    cell = size // 3
    assert (cols % cell + tile <= cell).all() and (rows % cell + tile <= cell).all()  # each inside its cell


def test_settings_that_cannot_keep_the_gap_are_refused():
    with pytest.raises(SelfsupError, match="kept 5 px apart with 0 px of jitter \\(they would be 5 px\\).*"
                                           "data.image_size=33"):
        JigsawViews(gray(30), tiles=TileSpec(min_gap_px=5, jitter=0.0))  # 10 px cells leave 5 px tiles
    JigsawViews(gray(33), tiles=TileSpec(min_gap_px=5, jitter=0.0))      # 11 px cells: 6 px tiles


def test_jigsaw_views_put_tile_p_j_at_position_j():
    """Not shapes: the tiles really are shuffled by the labelled permutation."""
    views = JigsawViews(gray(30), augment=IDENTITY, tiles=TileSpec(jitter=0.0, normalize=False, grayscale_p=0.0),
                        num_permutations=20)
    images = _coordinates(30, batch=12).to(torch.uint8)  # values wrap, but stay distinct per cell corner
    in_order = views.tiler(views.augment(images))
    torch.manual_seed(3)
    shuffled, labels = views(images)
    for b in range(12):
        permutation = views.permutations[labels[b]]
        for j in range(9):
            assert torch.equal(shuffled[b, j], in_order[b, permutation[j]])
    assert (labels != labels[0]).any() and not torch.equal(shuffled, in_order)


def test_patch_pairs_are_the_centre_and_the_labelled_neighbour():
    views = PatchPairViews(gray(30), augment=IDENTITY, tiles=TileSpec(jitter=0.0, normalize=False, grayscale_p=0.0))
    images = torch.randint(0, 256, (16, 1, 30, 30), dtype=torch.uint8)
    in_order = views.tiler(views.augment(images))
    pairs, labels = views(images)
    for b in range(16):
        assert torch.equal(pairs[b, 0], in_order[b, 4])
        assert torch.equal(pairs[b, 1], in_order[b, neighbour_position(labels[b : b + 1])[0]])
    assert len(set(labels.tolist())) > 3


def test_pirl_tiles_take_their_own_crop_and_grayscale_settings():
    """The image's augmentation (a preset's crop 0.2-1, grayscale) no longer reaches the jigsaw source."""
    views = PirlViews(ImageInfo(48, 3, (0.5,) * 3, (0.25,) * 3), augment=AugmentSpec(crop_scale=(0.2, 1.0)))
    assert views.augment.spec.crop_scale == (0.2, 1.0) and views.augment.spec.grayscale_p == 0.2
    assert views.tile_augment.spec.crop_scale == (0.6, 1.0) and views.tile_augment.spec.grayscale_p == 0.0
    assert views.tiler.spec.grayscale_p == 0.3  # Noroozi's grey images, once
