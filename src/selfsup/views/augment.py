"""Augmentations made on the training device, batched, with independent random parameters per image.

The loader hands over uint8 tensors; everything else (crop, flip, colour, blur, solarize,
normalise) runs here as batched ops on the whole batch. On a small CPU this removes the
per-image PIL pipeline that would otherwise starve the model; on a GPU it removes the
data-loader bottleneck. Randomness comes from torch's global generator, which the engine
seeds per rank and checkpoints, so a resumed run draws the same views.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import kornia.augmentation as K
import torch
from torch import nn

from ..arguments import Ascending, Fraction, NonNegative, Positive, Range
from ..data import CropSpec, DataFacts
from .coins import Normalize, RandomGrayscale, RandomHorizontalFlip, RandomSolarize
from .color import ColorJitter
from .crop import RandomResizedCrop


@dataclass(frozen=True)
class ImageInfo:
    """What a view generator must know of the dataset: side, channels, normalisation."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, data: DataFacts) -> ImageInfo:
        """From the data facts a run records."""
        return cls(data.image_size, data.channels, tuple(data.mean), tuple(data.std))


@dataclass(frozen=True)
class AugmentSpec:
    """One random view per image: the SimCLR family of augmentations (Chen et al. 2020, App. A).

    Defaults are SimCLR's: random resized crop with scale (0.08, 1) and ratio (3/4, 4/3), flip,
    colour jitter of strength 0.5 applied with p = 0.8 (0.4, 0.4, 0.4, 0.1), grayscale with
    p = 0.2. Blur, solarize and rotation are off unless asked for (SimCLR drops blur on
    CIFAR-sized images; BYOL adds solarize; Exemplar-CNN rotates). On 1-channel images
    saturation, hue and grayscale do not exist and are left out.
    """

    crop_scale: Annotated[tuple[Fraction, Fraction], Ascending()] = (0.08, 1.0)
    crop_ratio: Annotated[tuple[Positive, Positive], Ascending()] = (3 / 4, 4 / 3)
    flip_p: Fraction = 0.5
    jitter: tuple[NonNegative, NonNegative, NonNegative, Annotated[float, Range(0, 0.5)]] = (0.4, 0.4, 0.4, 0.1)
    """Brightness, contrast, saturation, hue."""
    jitter_p: Fraction = 0.8
    grayscale_p: Fraction = 0.2
    blur_p: Fraction = 0.0
    blur_sigma: Annotated[tuple[Positive, Positive], Ascending()] = (0.1, 2.0)
    solarize_p: Fraction = 0.0
    rotation_degrees: Annotated[float, Range(0, 180)] = 0.0
    """Random rotation in +-degrees (Exemplar-CNN: 20)."""


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255)


class Augment(nn.Module):
    """uint8 (B, C, H, W) -> float (B, C, size, size), one random view of each image, normalised.

    ``size`` defaults to the dataset's side (multi-crop asks for smaller local crops).
    """

    def __init__(self, image: ImageInfo, spec: AugmentSpec = AugmentSpec(), size: int | None = None,
                 normalize: bool = True) -> None:
        super().__init__()
        self.spec, self.size = spec, size or image.size
        self.crop = RandomResizedCrop(self.crop_spec)
        self.flip = RandomHorizontalFlip(spec.flip_p) if spec.flip_p > 0 else None
        ops: list[nn.Module] = [self.crop]
        if spec.rotation_degrees > 0:
            ops.append(K.RandomRotation(spec.rotation_degrees, p=1.0))
        if self.flip is not None:
            ops.append(self.flip)
        if spec.jitter_p > 0 and any(spec.jitter[:2] if image.channels == 1 else spec.jitter):
            ops.append(ColorJitter(*spec.jitter, p=spec.jitter_p, channels=image.channels))
        if spec.grayscale_p > 0 and image.channels == 3:
            ops.append(RandomGrayscale(spec.grayscale_p))
        if spec.blur_p > 0:
            # SimCLR: kernel 10% of the image side, odd.
            kernel = max(3, int(0.1 * self.size) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((kernel, kernel), spec.blur_sigma, p=spec.blur_p))
        if spec.solarize_p > 0:
            ops.append(RandomSolarize(spec.solarize_p))  # BYOL's: threshold 0.5
        if normalize:
            ops.append(Normalize(image.mean, image.std))
        self.ops = nn.Sequential(*ops)

    @property
    def crop_spec(self) -> CropSpec:
        """This view's random resized crop, for a streaming loader's workers to take."""
        return CropSpec(self.size, tuple(self.spec.crop_scale), tuple(self.spec.crop_ratio))

    def forward(self, images: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """``box`` (B, 4): ``images`` are crops a streaming worker already took (at this view's size,
        from the full image; the box as fractions of it): the rest of the view is made here."""
        self._worker_box = box
        if box is None:
            return self.ops(to_unit_float(images))
        return self.ops[1:](to_unit_float(images))

    def geometry(self) -> torch.Tensor:
        """(B, 5) of the last call: the crop box [x0, y0, x1, y1] as fractions of the image side
        and 1.0 where the view was mirrored (the transform an inverse-predictive task predicts)."""
        if getattr(self, "_worker_box", None) is not None:
            box = self._worker_box.float()
        elif self.crop.last_box is None:
            raise RuntimeError("geometry() describes the last view made: call the augmentation first")
        else:
            box = self.crop.last_box
        flipped = self.flip.last_drawn.float() if self.flip is not None else torch.zeros(len(box))
        return torch.cat([box, flipped.to(box.device).view(-1, 1)], dim=1)


class EvalView(nn.Module):
    """The deterministic view used for features: resize to the training size, normalise."""

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.image_size = image_size
        self.normalize = Normalize(mean, std)

    @classmethod
    def of(cls, data: DataFacts) -> EvalView:
        """The view of the images a run was trained on, from the facts it records."""
        return cls(data.image_size, tuple(data.mean), tuple(data.std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return self.normalize(x)
