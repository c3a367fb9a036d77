"""View generators of the Siamese family: one view, two views, multi-crop.

A view generator turns a uint8 batch into the list of tensors a method's forward receives.
Each is built from :class:`~selfsup.views.augment.Augment` pipelines (composition): its
keyword arguments, nested :class:`AugmentSpec` settings included, form the ``views`` section
of a run config.

Each also lists its random resized crops (``crops()``, in the order it uses them) so that a
streaming loader's workers can take them from the full-resolution image; given such a
:class:`~selfsup.engine.Precropped` batch, it makes the rest of each view from those crops.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import Count, PositiveInt
from ..data import CropSpec
from ..engine import Images, Precropped
from .augment import Augment, AugmentSpec, ImageInfo


def apply(augments: list[Augment], images: Images) -> list[torch.Tensor]:
    """Each augmentation's view of ``images``: of the whole uint8 batch, or of the crop a streaming
    worker took for it (the i-th crop for the i-th augmentation)."""
    if isinstance(images, Precropped):
        if len(images.crops) != len(augments):
            raise ValueError(f"{len(images.crops)} crops were taken for {len(augments)} views")
        return [augment(crop, box) for augment, crop, box in zip(augments, images.crops, images.boxes)]
    return [augment(images) for augment in augments]


class OneView(nn.Module):
    """One augmented view per image, as a list (NPID, instance classification)."""

    num_outputs = 1

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = AugmentSpec()) -> None:
        super().__init__()
        self.augment = Augment(image, augment)

    def crops(self) -> list[CropSpec]:
        return [self.augment.crop_spec]

    def forward(self, images: Images) -> list[torch.Tensor]:
        return apply([self.augment], images)


class TwoViews(nn.Module):
    """Two independently augmented views of every image (SimCLR, MoCo, BYOL, Barlow Twins).

    ``augment_b`` gives the second view its own settings (BYOL's asymmetric blur and solarize);
    None draws both from ``augment``.
    """

    num_outputs = 2

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = AugmentSpec(),
                 augment_b: AugmentSpec | None = None) -> None:
        super().__init__()
        self.first = Augment(image, augment)
        self.second = Augment(image, augment_b) if augment_b is not None else None

    def augments(self) -> list[Augment]:
        return [self.first, self.second or self.first]

    def crops(self) -> list[CropSpec]:
        return [augment.crop_spec for augment in self.augments()]

    def forward(self, images: Images) -> list[torch.Tensor]:
        return apply(self.augments(), images)


def relative_transform(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The transform from one view to the other, from their :meth:`Augment.geometry` (B, 5):
    (B, 5) = [centre shift x, y (in image sides), log width ratio, log height ratio, 1 if exactly
    one of the two is mirrored]."""
    centre_a, centre_b = (first[:, :2] + first[:, 2:4]) / 2, (second[:, :2] + second[:, 2:4]) / 2
    size_a = (first[:, 2:4] - first[:, :2]).clamp_min(1e-6)
    size_b = (second[:, 2:4] - second[:, :2]).clamp_min(1e-6)
    mirrored = (first[:, 4] != second[:, 4]).float().view(-1, 1)
    return torch.cat([centre_b - centre_a, torch.log(size_b / size_a), mirrored], dim=1)


class TwoViewsAndTransform(nn.Module):
    """Two augmented views and the transform relating them: [view a, view b, (B, 5)
    :func:`relative_transform`], for the composite objective (its optional transform-prediction
    term regresses the transform; its forward-predictive decoder rebuilds images of ``image``'s size).
    Boxes are fractions of the image the crops were taken from: the square image in memory, the
    original (of any aspect) in a stream, so a stream's shifts are in the original's width and height."""

    num_outputs = 3

    def __init__(self, image: ImageInfo, *, augment: AugmentSpec = AugmentSpec()) -> None:
        super().__init__()
        self.image = image
        self.augment = Augment(image, augment)

    def crops(self) -> list[CropSpec]:
        return [self.augment.crop_spec] * 2

    def forward(self, images: Images) -> list[torch.Tensor]:
        first, second = (images.crops, images.boxes) if isinstance(images, Precropped) else ((images,) * 2, (None,) * 2)
        view_a = self.augment(first[0], second[0])
        geometry_a = self.augment.geometry()
        view_b = self.augment(first[1], second[1])
        return [view_a, view_b, relative_transform(geometry_a, self.augment.geometry()).to(view_a.device)]


class MultiCropViews(nn.Module):
    """2 global crops and ``num_local`` local crops at their own resolution (SwAV, DINO).

    Caron et al. 2021 (DINO, arXiv:2104.14294): global crops of 224 px with scale (0.4, 1),
    local crops of 96 px with scale (0.05, 0.4). Here sides are relative to the dataset's:
    ``global_size`` defaults to it and ``local_size`` to 3/7 of it (96/224). ``global_augment_b``
    gives the second global crop its own settings (DINO's blur 0.1 and solarize 0.2 there, blur
    1.0 on the first, 0.5 on the locals); None draws both from ``global_augment``. Returns
    [global 1, global 2, local 1, ..., local N]; run a network over them with
    :func:`selfsup.blocks.forward_by_resolution` (one pass per resolution).
    """

    def __init__(self, image: ImageInfo, *, num_local: Count = 6, global_size: PositiveInt | None = None,
                 local_size: PositiveInt | None = None,
                 global_augment: AugmentSpec = AugmentSpec(crop_scale=(0.4, 1.0)),
                 global_augment_b: AugmentSpec | None = None,
                 local_augment: AugmentSpec = AugmentSpec(crop_scale=(0.05, 0.4))) -> None:
        super().__init__()
        if num_local < 0:
            raise ValueError(f"num_local must be >= 0, got {num_local}")
        self.num_local = num_local
        self.num_outputs = 2 + num_local
        self.global_crop = Augment(image, global_augment, size=global_size or image.size)
        self.global_crop_b = Augment(image, global_augment_b, size=global_size or image.size) \
            if global_augment_b is not None else None
        self.local_crop = Augment(image, local_augment, size=local_size or max(4, round(image.size * 3 / 7)))

    def augments(self) -> list[Augment]:
        return [self.global_crop, self.global_crop_b or self.global_crop] + [self.local_crop] * self.num_local

    def crops(self) -> list[CropSpec]:
        return [augment.crop_spec for augment in self.augments()]

    def forward(self, images: Images) -> list[torch.Tensor]:
        return apply(self.augments(), images)

