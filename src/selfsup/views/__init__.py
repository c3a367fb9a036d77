"""Views made on the training device: augmentation pipelines and the view generators built from them."""
from .augment import Augment, AugmentSpec, EvalView, ImageInfo, to_unit_float
from .generators import MultiCropViews, OneView, TwoViews, TwoViewsAndTransform, relative_transform
from .pretext import (CountingViews, ExemplarViews, JigsawViews, PatchPairViews, PirlViews, RotationViews,
                      neighbour_position, rotate_all, rotate_each)
from .tiles import (MIN_TILE, Tiler, TileSpec, cut_tiles, min_hamming_distance, normalize_tiles, permutation_set,
                    grid_patches, random_grayscale, shuffle_tiles,
                    tile_geometry)

__all__ = ["MIN_TILE", "Augment", "AugmentSpec", "CountingViews", "EvalView", "ExemplarViews", "ImageInfo",
           "JigsawViews", "MultiCropViews", "OneView", "PatchPairViews", "PirlViews", "RotationViews",
           "Tiler", "TileSpec", "TwoViews", "TwoViewsAndTransform", "cut_tiles", "min_hamming_distance",
           "neighbour_position", "normalize_tiles", "grid_patches", "permutation_set", "random_grayscale", "relative_transform",
           "rotate_all", "rotate_each", "shuffle_tiles", "tile_geometry", "to_unit_float"]
