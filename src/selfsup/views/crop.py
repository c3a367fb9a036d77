"""Random resized crops of a whole batch, drawn and resampled on the batch's own device.

The crop of Szegedy et al. 2015 that SimCLR, MoCo, BYOL and DINO take, with torchvision's sampling
(``RandomResizedCrop.get_params``): ten tries at an area fraction uniform in ``scale`` and an aspect
log-uniform in ``ratio``, the first that fits, else the largest centred box of an aspect within
``ratio``; a box of whole pixels at a uniform position. Here the ten tries of every image are drawn
at once and the first that fits is picked on the device, with no round trip to the host.

Every box is then resized by one ``grid_sample`` for the whole batch, bilinear, its sample points
where ``F.interpolate(crop, align_corners=False)`` puts them (``torchvision.ops.roi_align`` with
``aligned=True`` and one sample per bin gives the same values; tested). Two differences from
cutting the crop out and resizing it, by design: when a box is enlarged (nearly always at 28-32 px),
an outermost sample that falls within half an input pixel of the box's edge is interpolated with
the image's pixel beyond the edge instead of being clamped to the edge; and a crop that is shrunk
(DINO's local crops) is not antialiased, as kornia's crop was not.

Why not kornia's ``RandomResizedCrop``, used before: it resized image by image (and with
``align_corners=True``, where torchvision's convention, kept here, is ``False``). On an H200 it took
11-28 ms per view of a 32 px batch of 256-512 images, against 1.3-1.6 ms for this module, sampling
included; with it (and the chunked colour jitter) the views cost 1.6-8x the network, BYOL to DINO,
and 0.4-0.9x after (``benchmarks/gpu_views.py``; RESULTS 31).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.stream import CropSpec, centred_box

TRIES = 10
"""torchvision's number of tries before the centred fallback."""


def sample_boxes(batch: int, width: int, height: int, spec: CropSpec, device: torch.device) -> torch.Tensor:
    """(batch, 4) float: left, top, width and height of one random resized crop per image, in whole
    pixels of a ``width`` x ``height`` image."""
    area = torch.empty(batch, TRIES, device=device).uniform_(*spec.scale).mul_(height * width)
    aspect = torch.empty(batch, TRIES, device=device).uniform_(math.log(spec.ratio[0]), math.log(spec.ratio[1])).exp_()
    w, h = (area * aspect).sqrt_().round_(), (area / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first of equal maxima
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    left = torch.rand(batch, device=device).mul_(width - w + 1).floor_()
    top = torch.rand(batch, device=device).mul_(height - h + 1).floor_()
    drawn = fits.any(1)
    fallback = centred_box(width, height, spec.ratio)
    return torch.stack([torch.where(drawn, value, float(default))
                        for value, default in zip((left, top, w, h), fallback)], dim=1)


def resize_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """float (B, C, H, W) and (B, 4) boxes (left, top, width, height in pixels) -> (B, C, size, size):
    each box resized bilinearly, in one ``grid_sample``."""
    batch, channels, height, width = images.shape
    left, top, w, h = boxes.to(images.dtype).unbind(1)
    theta = images.new_zeros(batch, 2, 3)
    # The box's half-extent and centre in grid_sample's [-1, 1] coordinates (pixel edges at -1 and 1).
    theta[:, 0, 0], theta[:, 0, 2] = w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomResizedCrop(nn.Module):
    """float (B, C, H, W) -> (B, C, size, size): one random resized crop per image (:class:`CropSpec`:
    ``scale`` (0.08, 1) and ``ratio`` (3/4, 4/3) by default, torchvision's and SimCLR's).

    ``last_box`` holds the boxes of the last call as fractions of the image, [x0, y0, x1, y1] (B, 4),
    for :meth:`~selfsup.views.augment.Augment.geometry`.
    """

    def __init__(self, spec: CropSpec) -> None:
        super().__init__()
        self.spec = spec
        self.last_box: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        boxes = sample_boxes(len(images), width, height, self.spec, images.device)
        corners = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
        corners[:, 0::2] /= width  # by Python numbers: a tensor made on the host would cost a sync
        corners[:, 1::2] /= height
        self.last_box = corners
        return resize_boxes(images, boxes, self.spec.size)

    def extra_repr(self) -> str:
        return f"size={self.spec.size}, scale={self.spec.scale}, ratio={self.spec.ratio}"
