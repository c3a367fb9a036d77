"""Views made on the training device, batched, with independent random parameters per image.

The loader hands over uint8 tensors; everything else (crop, flip, colour, blur, solarize,
normalise) runs here as kornia ops on the whole batch. On a small CPU this removes the
per-image PIL pipeline that would otherwise starve the model; on a GPU it removes the
data-loader bottleneck. Randomness comes from torch's global generator, which the trainer
seeds per rank and checkpoints, so a resumed run draws the same views.
"""
from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255)


class Augment(nn.Module):
    """One random view per image: the SimCLR family of augmentations (Chen et al. 2020, App. A).

    Defaults are SimCLR's: random resized crop with scale (0.08, 1), flip, colour jitter of
    strength 0.5 applied with p = 0.8 (0.4, 0.4, 0.4, 0.1), grayscale with p = 0.2. Blur and
    solarize are off unless asked for (SimCLR drops blur on CIFAR-sized images). On 1-channel
    images saturation, hue and grayscale do not exist and are left out.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: float = 0.0,
    ) -> None:
        super().__init__()
        ops: list[nn.Module] = [K.RandomResizedCrop((image_size, image_size), scale=crop_scale, ratio=crop_ratio)]
        if flip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=flip_p))
        brightness, contrast, saturation, hue = jitter
        if channels == 1:
            saturation = hue = 0.0
        if jitter_p > 0 and any(jitter):
            ops.append(K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p))
        if grayscale_p > 0 and channels == 3:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            # SimCLR: kernel 10% of the image side, odd.
            kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((kernel, kernel), blur_sigma, p=blur_p))
        if solarize_p > 0:
            # BYOL's solarize: threshold 0.5, no random shift.
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        ops.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
        self.ops = nn.Sequential(*ops)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float (B, C, image_size, image_size), normalised."""
        return self.ops(to_unit_float(images))


class TwoViews(Augment):
    """Two independently augmented views of every image (SimCLR, MoCo, BYOL, Barlow Twins).

    Keyword arguments are those of :class:`Augment`; each view draws its own parameters.
    """

    num_outputs = 2

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [super().forward(images), super().forward(images)]


class EvalView(nn.Module):
    """The deterministic view used for features: resize to the training size, normalise."""

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return (x - self.mean) / self.std


class ReplayViews(nn.Module):
    """Returns the same pre-made views for every batch: the model-only compute limit in the
    throughput benchmark, and fixed inputs in tests. Not for training."""

    def __init__(self, views: list[torch.Tensor]) -> None:
        super().__init__()
        self.fixed = views

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.fixed


class OneView(Augment):
    """One augmented view per image, as a list (NPID, Exemplar-style methods)."""

    num_outputs = 1

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [super().forward(images)]
