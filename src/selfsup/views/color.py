"""Colour jitter for a whole batch, with its own random factors per image.

Brightness, contrast, saturation and hue give torchvision's results for the same factors
(``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``; tested).
What makes it fast on a CPU: the hue shift goes from RGB to hue and straight back (max, min
and the hue of each pixel, no full HSV tensors), and the batch is processed in slices of
``CHUNK`` images so that the dozen elementwise passes stay in the cache. On a GPU the whole
batch goes in one pass, with no host sync (:func:`jitter_whole_batch`). kornia's ColorJitter
took 177 ms for 256 images of 96 px on the CPU of benchmarks/RESULTS.md, half of a whole
SimCLR view; this takes a fraction of that.
"""
from __future__ import annotations

import torch
from torch import nn

CHUNK = 32
"""Images per slice: 32 x 3 x 96 x 96 floats are 3.5 MB, within a CPU's cache."""
LUMA = (0.299, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W): ITU-R 601 luma for RGB (torchvision's
    ``rgb_to_grayscale``), the channel itself for grayscale images."""
    if x.shape[1] == 1:
        return x
    return (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3])


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x * factor, factor (B,) per image."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma."""
    mean = luma(x).mean((-3, -2, -1), keepdim=True)
    return torch.lerp(mean, x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's luma (RGB only)."""
    return torch.lerp(luma(x), x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Shift the HSV hue of RGB images by ``turns`` (B,) of the colour circle (torchvision's
    ``hue_factor``, in [-0.5, 0.5]); saturation and value are kept."""
    maxc = x.amax(1)
    chroma = maxc - x.amin(1)
    safe = torch.where(chroma > 0, chroma, 1.0)
    red, green, blue = x.unbind(1)
    # Hue in sixths of the circle, as torchvision's rgb -> hsv (red wins ties, then green).
    hue = torch.where(red == maxc, (green - blue) / safe,
                      torch.where(green == maxc, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe))
    hue.add_(6 * turns.view(-1, 1, 1))
    out = torch.empty_like(x)
    # hsv -> rgb: channel n is max - chroma * clamp(2 - |((n + hue) mod 6) - 2|, 0, 1), n = 5, 3, 1.
    for channel, offset in enumerate((5.0, 3.0, 1.0)):
        ramp = (hue + offset).remainder_(6).sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
        torch.addcmul(maxc, chroma, ramp, value=-1, out=out[:, channel])
    return out


ADJUST = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
          "hue": adjust_hue}
IDENTITY = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
"""The factor of each adjustment that leaves an image as it is."""


Steps = list[tuple[str, torch.Tensor]]
"""A jitter's adjustments in the order applied: (name in ``ADJUST``, factor per image (B,))."""


def jitter_in_chunks(x: torch.Tensor, drawn: torch.Tensor, steps: Steps) -> torch.Tensor:
    """The CPU's way: the ``drawn`` images only, ``CHUNK`` at a time, so that each slice's dozen
    elementwise passes stay in the cache."""
    chosen = drawn.nonzero().squeeze(1)
    out = x.clone()
    for start in range(0, len(chosen), CHUNK):
        rows = chosen[start:start + CHUNK]
        y = x[rows]
        for name, factor in steps:
            y = ADJUST[name](y, factor[rows])
        out[rows] = y
    return out


def jitter_whole_batch(x: torch.Tensor, drawn: torch.Tensor, steps: Steps) -> torch.Tensor:
    """A GPU's way: the whole batch in one pass, identity factors for the images not ``drawn``.
    Picking those out (a host sync) and slicing into chunks cost a GPU ten times the arithmetic
    (benchmarks/gpu_views.py). The same result as :func:`jitter_in_chunks` up to float rounding
    (a zero hue shift goes to hue and back)."""
    for name, factor in steps:
        x = ADJUST[name](x, torch.where(drawn, factor, IDENTITY[name]))
    return x


class ColorJitter(nn.Module):
    """With probability ``p`` per image, brightness, contrast, saturation and hue changes in a random
    order (one order per batch, as kornia; SimCLR draws it per image), each with its own factor
    per image: brightness, contrast, saturation factors uniform in [max(0, 1 - s), 1 + s], hue in
    [-hue, hue] turns (torchvision's ``ColorJitter`` ranges). Saturation and hue are skipped for
    1-channel images. On a CPU in cache-sized chunks, elsewhere the whole batch at once.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 p: float = 1.0, channels: int = 3) -> None:
        super().__init__()
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (turns of the colour circle), got {hue}")
        if channels == 1:
            saturation = hue = 0.0
        self.strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        self.p = p

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor, Steps]:
        """For the batch ``x``: which images are jittered (B,) and the adjustments, in their order."""
        drawn = torch.rand(len(x), device=x.device) < self.p
        steps = []
        for index in torch.randperm(4).tolist():
            name = ("brightness", "contrast", "saturation", "hue")[index]
            strength = self.strengths[name]
            if strength > 0:
                low, high = (-strength, strength) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)
                steps.append((name, torch.empty(len(x), device=x.device).uniform_(low, high)))
        return drawn, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> the same, jittered."""
        if x.device.type == "cpu":
            return jitter_in_chunks(x, *self.draw(x))
        return jitter_whole_batch(x, *self.draw(x))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.strengths.items()) + f", p={self.p}"
