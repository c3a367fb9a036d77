"""RandAugment as FixMatch uses it, batched on the device: every image draws its own operations.

Cubuk et al. 2020 ("RandAugment") apply N random operations at magnitude M; FixMatch (Sohn et
al. 2020, Sec. 2.3 and Table 12) draws the magnitude of each operation uniformly at random and
follows with Cutout. The 14 operations and ranges are FixMatch's: autocontrast, brightness,
color, contrast (factors in [0.05, 0.95]), equalize, identity, posterize (4..8 bits), rotate
(+-30 degrees), sharpness ([0.05, 0.95]), shear x / y (+-0.3), solarize (threshold in [0, 1]),
translate x / y (+-30% of the side); Cutout a square of up to half the side. Geometric
operations and Cutout fill with gray (0.5), as the reference implementation fills with 128.

No per-image Python: for each operation, the images that drew it are transformed together
(one indexing, one tensor op or one ``grid_sample``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augment, AugmentSpec, ImageInfo
from .coins import Normalize
from .color import adjust_brightness, adjust_contrast, adjust_saturation

GRAY = 0.5


def _enhance_factor(magnitude: torch.Tensor) -> torch.Tensor:
    return 0.05 + 0.9 * magnitude


def _signed(magnitude: torch.Tensor, limit: float) -> torch.Tensor:
    return (2 * magnitude - 1) * limit


def autocontrast(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1.0 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return torch.where(high > low, (x - low) * scale, x)


def equalize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of every image and channel (256 levels), batched with a scatter."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().clamp(0, 255).view(n * c, h * w)
    histogram = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = histogram.cumsum(1)
    lowest = torch.where(histogram > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    span = (cdf[:, -1:] - lowest).clamp_min(1)
    mapping = ((cdf - lowest) / span).clamp(0, 1)
    flat = (h * w) == histogram.amax(1, keepdim=True)  # a constant image stays as it is
    out = torch.where(flat, x.reshape(n * c, h * w), mapping.gather(1, levels))
    return out.view(n, c, h, w)


def posterize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    bits = (4 + torch.floor(magnitude * 4.999)).view(-1, 1, 1, 1)
    step = 2 ** (8 - bits)
    return torch.floor((x * 255).round() / step) * step / 255


def solarize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    return torch.where(x < magnitude.view(-1, 1, 1, 1), x, 1 - x)


def sharpness(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
    channels = x.shape[1]
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(channels, 1, 3, 3), groups=channels)
    factor = _enhance_factor(magnitude).view(-1, 1, 1, 1)
    return (smooth + factor * (x - smooth)).clamp(0, 1)


def _affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample by (n, 2, 3) affine matrices in normalised coordinates, gray outside the image."""
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x - GRAY, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + GRAY


def _eye(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).repeat(n, 1, 1)


def rotate(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    angle = _signed(magnitude, math.radians(30))
    matrix = _eye(len(x), x.device)
    matrix[:, 0, 0], matrix[:, 0, 1] = angle.cos(), -angle.sin()
    matrix[:, 1, 0], matrix[:, 1, 1] = angle.sin(), angle.cos()
    return _affine(x, matrix)


def _geometric(row: int, column: int, limit: float, scale: float = 1.0) -> Callable:
    def op(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        matrix = _eye(len(x), x.device)
        matrix[:, row, column] = _signed(magnitude, limit) * scale
        return _affine(x, matrix)
    return op


OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "autocontrast": autocontrast,
    "brightness": lambda x, m: adjust_brightness(x, _enhance_factor(m)),
    "color": lambda x, m: adjust_saturation(x, _enhance_factor(m)) if x.shape[1] == 3 else x,
    "contrast": lambda x, m: adjust_contrast(x, _enhance_factor(m)),
    "equalize": equalize,
    "identity": lambda x, m: x,
    "posterize": posterize,
    "rotate": rotate,
    "sharpness": sharpness,
    "shear_x": _geometric(0, 1, 0.3),
    "shear_y": _geometric(1, 0, 0.3),
    "solarize": solarize,
    "translate_x": _geometric(0, 2, 0.3, scale=2.0),  # normalised coordinates span 2 per side
    "translate_y": _geometric(1, 2, 0.3, scale=2.0),
}


def cutout(x: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """A gray square of side ``fraction`` * side (per image) at a random centre of each image."""
    n, _, h, w = x.shape
    half = (fraction * min(h, w) / 2).view(-1, 1, 1)
    cy = torch.rand(n, 1, 1, device=x.device) * h
    cx = torch.rand(n, 1, 1, device=x.device) * w
    ys = torch.arange(h, device=x.device).view(1, -1, 1) + 0.5
    xs = torch.arange(w, device=x.device).view(1, 1, -1) + 0.5
    inside = ((ys - cy).abs() < half) & ((xs - cx).abs() < half)
    return x.masked_fill(inside.unsqueeze(1), GRAY)


def rand_augment(x: torch.Tensor, ops: int = 2, cutout_fraction: float = 0.5,
                 operations: dict[str, Callable] = OPERATIONS) -> torch.Tensor:
    """``ops`` operations per image, each drawn uniformly with a uniform random magnitude, then
    Cutout of up to ``cutout_fraction`` of the side: float images in [0, 1] -> the same."""
    names = list(operations)
    x = x.clone()
    for _ in range(ops):
        chosen = torch.randint(len(names), (len(x),), device=x.device)
        magnitude = torch.rand(len(x), device=x.device)
        for k, name in enumerate(names):
            index = (chosen == k).nonzero().squeeze(1)
            if len(index):
                x[index] = operations[name](x[index], magnitude[index]).clamp(0, 1).to(x.dtype)
    if cutout_fraction > 0:
        x = cutout(x, torch.rand(len(x), device=x.device) * cutout_fraction)
    return x


class StrongAugment(nn.Module):
    """FixMatch's strong view: the weak view's crop and flip, then :func:`rand_augment`, normalised."""

    def __init__(self, image: ImageInfo, weak: AugmentSpec, ops: int = 2, cutout_fraction: float = 0.5) -> None:
        super().__init__()
        self.weak = Augment(image, weak, normalize=False)
        self.ops, self.cutout_fraction = ops, cutout_fraction
        self.normalize = Normalize(image.mean, image.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(rand_augment(self.weak(images), self.ops, self.cutout_fraction))


__all__ = ["OPERATIONS", "StrongAugment", "cutout", "equalize", "rand_augment"]
