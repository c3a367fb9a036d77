import pytest
import torch

from selfsup.views import Augment, AugmentSpec, EvalView, ImageInfo, TwoViews

MEAN, STD = (0.5,), (0.25,)
GRAY16 = ImageInfo(16, 1, MEAN, STD)


def _images(batch=6, channels=1, size=16):
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def test_two_views_shapes_dtype_and_independent_draws():
    views = TwoViews(ImageInfo(12, 1, MEAN, STD), augment=AugmentSpec(crop_scale=(0.2, 1.0)))(_images())
    assert len(views) == 2 and views[0].shape == (6, 1, 12, 12) and views[0].dtype == torch.float32
    assert not torch.allclose(views[0], views[1])


def test_parameters_are_drawn_per_sample():
    same = _images(1).expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    out = Augment(GRAY16, AugmentSpec(crop_scale=(0.1, 0.5)))(same)
    distinct = {tuple(o.flatten()[:20].tolist()) for o in out}
    assert len(distinct) == 8


def test_views_are_reproducible_under_a_seed():
    augment = Augment(ImageInfo(16, 3, (0.5,) * 3, (0.25,) * 3), AugmentSpec(blur_p=0.5, solarize_p=0.5))
    torch.manual_seed(7)
    first = augment(_images(channels=3))
    torch.manual_seed(7)
    assert torch.equal(first, augment(_images(channels=3)))


def test_grayscale_images_skip_colour_only_ops():
    augment = Augment(GRAY16, AugmentSpec(jitter=(0.4, 0.4, 0.4, 0.1), grayscale_p=0.5))
    names = [type(op).__name__ for op in augment.ops]
    assert "RandomGrayscale" not in names
    assert augment(_images()).shape == (6, 1, 16, 16)  # saturation/hue would fail on 1 channel


def test_identity_augmentation_is_exactly_normalisation():
    augment = Augment(GRAY16, AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0))
    images = _images()
    expected = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(augment(images), expected, atol=1e-5)


@pytest.mark.parametrize("size", [16, 24])
def test_eval_view_normalises_and_resizes(size):
    images = _images(size=size)
    out = EvalView(16, MEAN, STD)(images)
    assert out.shape == (6, 1, 16, 16)
    if size == 16:
        assert torch.allclose(out, (images.float() / 255 - 0.5) / 0.25)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_adjustments_equal_torchvision_for_the_same_factors(name):
    from torchvision.transforms.v2 import functional as TF

    from selfsup.views.color import ADJUST

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 9, 9, generator=g)
    x[0] = 0.5  # gray: no hue
    x[1, :, :3] = x[1, 0, :3].clone()  # ties between channels
    factors = torch.tensor([0.0, 0.3, 0.9, 1.4, -0.2, 0.5]) if name == "hue" else torch.tensor([0.0, 0.4, 0.9, 1.0,
                                                                                               1.3, 1.8])
    reference = getattr(TF, f"adjust_{name}")
    expected = torch.stack([reference(img, float(f) if name != "hue" else float(f) % 1 - (float(f) % 1 > 0.5))
                            for img, f in zip(x, factors)])
    assert torch.allclose(ADJUST[name](x.clone(), factors), expected, atol=1e-4)  # float summation order


def test_colour_jitter_draws_per_image_and_does_not_depend_on_slicing(monkeypatch):
    from selfsup.views import color

    jitter = color.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    x = _images(40, channels=3).float() / 255
    torch.manual_seed(1)
    whole = jitter(x)
    monkeypatch.setattr(color, "CHUNK", 3)
    torch.manual_seed(1)
    assert torch.allclose(jitter(x), whole, atol=1e-6)
    changed = (whole - x).abs().flatten(1).amax(1) > 0
    assert 20 <= changed.sum() < 40  # p = 0.8: most images, not all
    same = x[:1].expand(8, -1, -1, -1)
    out = color.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)(same)
    assert len({tuple(o.flatten()[:12].tolist()) for o in out}) == 8  # each its own factors
    assert torch.equal(color.ColorJitter(0.4, 0.4, p=0.0)(x), x)
    gray = color.ColorJitter(0.0, 0.0, 0.9, 0.5, p=1.0, channels=1)
    assert torch.equal(gray(x[:, :1]), x[:, :1])  # saturation and hue do not exist for one channel
    with pytest.raises(ValueError, match="hue must be in"):
        color.ColorJitter(hue=0.7)


def test_random_resized_crop_resamples_each_box_as_roi_align():
    from torchvision.ops import roi_align

    from selfsup.data import CropSpec
    from selfsup.views.crop import RandomResizedCrop, resize_boxes, sample_boxes

    torch.manual_seed(0)
    images = torch.rand(12, 3, 20, 28)
    boxes = sample_boxes(12, 28, 20, CropSpec(9, (0.05, 1.0)), images.device)
    # roi_align (aligned, one sample per bin) puts its bilinear samples where F.interpolate of the crop
    # would (align_corners=False), reading the image itself beyond the box's edge.
    expected = roi_align(images, torch.cat([torch.arange(12.0)[:, None], boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1),
                         output_size=9, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    assert torch.allclose(resize_boxes(images, boxes, 9), expected, atol=1e-5)
    crop = RandomResizedCrop(CropSpec(9, (0.05, 1.0)))
    out = crop(images)
    assert out.shape == (12, 3, 9, 9)
    assert ((crop.last_box >= 0) & (crop.last_box <= 1)).all()
    assert (crop.last_box[:, 2:] > crop.last_box[:, :2]).all()


def test_crop_boxes_follow_torchvision_sampling():
    import math

    from torchvision.transforms import RandomResizedCrop as TorchvisionCrop

    from selfsup.data import CropSpec
    from selfsup.data.stream import centred_box
    from selfsup.views.crop import sample_boxes

    torch.manual_seed(0)
    height, width, draws = 24, 32, 4000
    ours = sample_boxes(draws, width, height, CropSpec(8), torch.device("cpu"))
    assert torch.equal(ours, ours.round()) and (ours[:, 2:] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= width).all() and (ours[:, 1] + ours[:, 3] <= height).all()
    image = torch.zeros(1, height, width)
    theirs = torch.tensor([TorchvisionCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(draws)],
                          dtype=torch.float)[:, [1, 0, 3, 2]]  # (top, left, h, w) -> (left, top, w, h)

    def summary(boxes):
        area = boxes[:, 2] * boxes[:, 3] / (height * width)
        centre = (boxes[:, 0] + boxes[:, 2] / 2) / width
        return torch.stack([area.mean(), area.std(), (boxes[:, 2] / boxes[:, 3]).log().mean(), centre.mean(),
                            centre.std()])

    assert torch.allclose(summary(ours), summary(theirs), atol=0.015)
    # No try fits an aspect of 3 to 4 on a square image: torchvision's centred fallback, for every image.
    fallback = sample_boxes(5, 16, 16, CropSpec(8, (0.9, 1.0), (3.0, 4.0)), torch.device("cpu"))
    assert fallback.tolist() == [list(map(float, centred_box(16, 16, (3.0, 4.0))))] * 5
    assert not math.isnan(float(summary(ours).sum()))


def test_colour_jitter_whole_batch_equals_chunks():
    from selfsup.views import color

    x = _images(40, channels=3).float() / 255
    generator = torch.Generator().manual_seed(2)
    drawn = torch.rand(40, generator=generator) < 0.8
    steps = [(name, torch.empty(40).uniform_(low, high, generator=generator))
             for name, low, high in (("hue", -0.1, 0.1), ("contrast", 0.6, 1.4), ("saturation", 0.6, 1.4),
                                     ("brightness", 0.6, 1.4))]
    chunks = color.jitter_in_chunks(x, drawn, steps)
    assert torch.allclose(color.jitter_whole_batch(x, drawn, steps), chunks, atol=1e-5)
    assert torch.equal(chunks[~drawn], x[~drawn])


@pytest.mark.parametrize("name", ["flip", "grayscale", "solarize"])
def test_coin_ops_equal_kornias_where_the_coin_came_up_and_leave_the_rest(name):
    import kornia.augmentation as K

    from selfsup.views import coins

    ours, theirs = {"flip": (coins.RandomHorizontalFlip, K.RandomHorizontalFlip),
                    "grayscale": (coins.RandomGrayscale, K.RandomGrayscale),
                    "solarize": (coins.RandomSolarize, lambda p: K.RandomSolarize(0.0, 0.0, p=p))}[name]
    x = _images(400, channels=3).float() / 255
    assert torch.allclose(ours(1.0)(x), theirs(p=1.0)(x), atol=1e-6)
    assert torch.equal(ours(0.0)(x), x)
    torch.manual_seed(3)
    op = ours(0.3)
    out, drawn = op(x), op.last_drawn
    assert 80 < int(drawn.sum()) < 160  # 120 expected of 400; seeded, so the count is fixed
    assert torch.equal(out[~drawn], x[~drawn]) and torch.allclose(out[drawn], theirs(p=1.0)(x[drawn]), atol=1e-6)


def test_normalize_equals_kornias_and_the_eval_views():
    import kornia.augmentation as K

    from selfsup.views.coins import Normalize

    x = _images(4, channels=3).float() / 255
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    assert torch.allclose(Normalize(mean, std)(x), K.Normalize(torch.tensor(mean), torch.tensor(std))(x), atol=1e-6)
    assert torch.allclose(EvalView(16, mean, std)(_images(4, channels=3)), Normalize(mean, std)(x), atol=1e-6)
