"""The training and test sets of a run, built in one place for pretraining and for evaluation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..arguments import Count, Fraction, PositiveInt
from ..errors import SelfsupError, closest
from .catalog import USER_FORMATS, load_dataset
from .dataset import ImageDataset


@dataclass
class DataConfig:
    """Where the images come from (the ``data`` section; see ``selfsup data inspect``)."""

    name: str = "fashion_mnist"
    """Dataset name: fashion_mnist, mnist, cifar10, cifar100, stl10, imagefolder, webdataset, filelist, tensors."""
    root: str | None = None
    """Folder (or file, for ``tensors``); None searches the usual places."""
    train_split: str = "train"
    """Split used for pretraining (stl10: ``train+unlabeled`` uses the 100k unlabeled images)."""
    test_split: str = "test"
    image_size: PositiveInt | None = None
    """Stored image size; None keeps the native size (image folders and shards need one: 64 by default)."""
    subset: PositiveInt | None = None
    """Use a class-balanced subset of this many training images (seeded), e.g. for quick runs."""
    classes: list[str | int] | None = None
    """Keep only these classes (names or indices) in both splits, numbered in the order given: a
    transfer task on classes a network never saw, e.g. ClusterFit's (pretrain on classes 0-4,
    evaluate on 5-9). None keeps every class."""
    label_noise: Fraction = 0.0
    """Fraction of the training labels replaced by another class, drawn uniformly (seeded; the
    test split keeps its labels): ClusterFit's label-noise study."""
    download: bool = False
    """Fetch the dataset from its official URL when it is not found."""
    skip_bad: bool = False
    """Skip corrupt or unreadable images (counted in the log) instead of stopping."""
    on_device: Literal["auto", "always", "never"] = "auto"
    """Hold the uint8 image tensor on the training device (auto: when it takes < 25% of free memory)."""
    source: Literal["auto", "memory", "stream", "cache"] = "auto"
    """Where training images come from: ``memory`` (decoded once into RAM), ``stream`` (image files
    decoded by worker processes, each view's crop from the full-resolution image), ``cache``
    (decoded once into a memory-mapped file, see ``selfsup data cache``); ``auto``: stream image
    files whose decoded pixels would take over a quarter of the available memory, else memory."""
    workers: Count | None = None
    """Worker processes decoding a stream (None: all cores but one, shared among the processes of a machine)."""
    cache_dir: str | None = None
    """Where caches live (None: ``$SELFSUP_CACHE`` or ``~/.cache/selfsup/caches``)."""


@dataclass(frozen=True)
class DataFacts:
    """What a run records about its training images: enough to rebuild its network and input
    pipeline (channels, size, normalisation), name its classes, and tell one dataset from another.
    Checkpoints and ``meta.json`` hold it as a plain dict (:meth:`to_dict`, :meth:`of`)."""

    dataset: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    """Class names of the labelled images; empty for data without labels."""
    images: int = 0
    """Training images (a memory bank is sized to them)."""
    skipped: tuple[str, ...] = ()
    """Files that could not be decoded (``data.skip_bad``)."""
    held_out: int = 0
    """Labelled training images kept out of pretraining for the monitor's queries."""

    @classmethod
    def of(cls, record: dict[str, Any]) -> DataFacts:
        """From the dict a checkpoint holds (keys added since an old checkpoint was written take their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()
                  if key in known}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclass
class Splits:
    train: ImageDataset
    """The images to train on (pretraining: without the held-out monitor queries)."""
    test: ImageDataset | None
    """The test split; None for user data that has none (pretraining only)."""
    held_out: ImageDataset | None = None
    """Labelled training images kept out of pretraining, for the kNN monitor's queries."""

    def info(self) -> DataFacts:
        """The facts a checkpoint needs to rebuild the model and its input pipeline."""
        mean, std = self.train.stats()
        return DataFacts(self.train.name, self.train.channels, self.train.image_size, tuple(mean), tuple(std),
                         tuple(self.train.classes), len(self.train), tuple(self.train.skipped),
                         len(self.held_out) if self.held_out is not None else 0)


def load_splits(cfg: DataConfig, *, seed: int = 0, labeled: bool = False, hold_out: int = 0,
                hold_out_optional: bool = False, stream: bool = False, quiet: bool = False) -> Splits:
    """The train and test sets of ``cfg``.

    ``labeled=True`` (evaluation): only labelled training images (STL-10's ``unlabeled`` part is
    dropped), and a labelled test split is required. ``hold_out=N`` (pretraining with a kNN
    monitor): a seeded, class-balanced set of N labelled training images is kept out of the
    training set, so that the monitor (and ``best.pt``) never looks at the test split.
    ``hold_out_optional``: a training set with fewer than twice N labelled images keeps them all
    (``held_out`` is None) instead of refusing. ``stream``: the training set may be streamed
    (``data.source`` stream or auto; pretraining's loader reads files); every other reader gets
    its sets whole, in memory or from a cache.
    """
    common = dict(name=cfg.name, root=cfg.root, image_size=cfg.image_size, download=cfg.download,
                  skip_bad=cfg.skip_bad, quiet=quiet, cache_root=cfg.cache_dir)
    split = cfg.train_split
    if labeled:
        split = "+".join(part for part in split.split("+") if part != "unlabeled") or "train"
    train = load_dataset(split=split, source=cfg.source if stream else memory_or_cache(cfg.source), **common)
    held_out = None
    if cfg.classes is not None:
        train = only_classes(train, cfg.classes, keep_unlabelled=not labeled)
    if labeled:
        train = train.select((train.targets >= 0).nonzero().squeeze(1)) if train.labeled else train
    elif hold_out > 0 and train.labeled:
        if not (hold_out_optional and 2 * hold_out > int((train.targets >= 0).sum())):
            train, held_out = train.split_off(hold_out, seed)
            held_out = held_out.in_ram()  # a few hundred images: the monitors read them whole
    if cfg.subset is not None and not labeled:
        train = train.balanced_subset(cfg.subset, seed)
    if cfg.label_noise:
        train = with_label_noise(train, cfg.label_noise, seed)
    try:
        test = load_dataset(split=cfg.test_split, source=memory_or_cache(cfg.source), **common)
    except SelfsupError as err:
        if labeled or cfg.name not in USER_FORMATS:
            raise
        test = None
        if not quiet:
            print(f"note: no test split ({err})")
    if test is not None and cfg.classes is not None:
        if not test.labeled:
            raise SelfsupError(f"{test.name} ({test.split}) has no labels, so data.classes cannot choose among them")
        test = only_classes(test, cfg.classes)
    if test is not None and test.labeled and train.labeled and test.classes != train.classes:
        test = same_classes(test, train)
    if labeled:
        for part in (train, test):
            if not part.labeled:
                raise SelfsupError(f"{part.name} ({part.split}) has no labels: kNN and linear evaluation need them")
    return Splits(train, test, held_out)


def same_classes(test: ImageDataset, train: ImageDataset) -> ImageDataset:
    """``test`` with its labels renumbered to the training set's classes, by name (a test folder or
    list that lacks a class numbers the others differently)."""
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise SelfsupError(f"{test.name}: the test split has classes the training split has not: "
                           f"{', '.join(unknown[:5])}")
    renumber = torch.tensor([train.classes.index(name) for name in test.classes], dtype=torch.long)
    targets = torch.where(test.targets >= 0, renumber[test.targets.clamp_min(0)], test.targets)
    return dataclasses.replace(test, targets=targets, classes=list(train.classes))


def only_classes(dataset: ImageDataset, chosen: list[str | int], keep_unlabelled: bool = False) -> ImageDataset:
    """The images of ``dataset`` whose class is in ``chosen`` (names, or indices into its classes),
    relabelled 0..len(chosen)-1 in the order given; unlabelled images (STL-10's unlabeled part) are
    kept for pretraining (``keep_unlabelled``: they belong to no class) and dropped otherwise."""
    if not dataset.labeled:
        raise SelfsupError(f"{dataset.name} ({dataset.split}) has no labels, so data.classes cannot choose among them")
    picked, names = [], dataset.classes
    for item in chosen:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise SelfsupError(f"data.classes: {dataset.name} has classes 0..{len(names) - 1}, got {item}")
            picked.append(item)
        elif item in names:
            picked.append(names.index(item))
        else:
            raise SelfsupError(f"data.classes: {dataset.name} has no class {item!r}{closest(str(item), names)}")
    if len(set(picked)) != len(picked) or not picked:
        raise SelfsupError(f"data.classes must name each class once and at least one, got {list(chosen)}")
    renumber = torch.full((len(dataset.classes),), -1, dtype=torch.long)
    renumber[torch.tensor(picked)] = torch.arange(len(picked))
    targets = torch.where(dataset.targets >= 0, renumber[dataset.targets.clamp_min(0)], dataset.targets)
    kept = ((targets >= 0) | ((dataset.targets < 0) & keep_unlabelled)).nonzero().squeeze(1)
    return dataclasses.replace(dataset.select(kept), targets=targets[kept],
                               classes=[dataset.classes[i] for i in picked])


def memory_or_cache(source: str) -> str:
    """The source of a set that is read whole (a test split; evaluation's sets): a cache when asked, else memory."""
    return "cache" if source == "cache" else "memory"


def with_label_noise(dataset: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """A copy of ``dataset`` with round(``fraction`` x labelled images) labels flipped, each to one of
    the other classes drawn uniformly; which images and which classes is fixed by ``seed``."""
    if not 0.0 <= fraction <= 1.0:
        raise SelfsupError(f"data.label_noise must be a fraction in [0, 1], got {fraction}")
    classes = len(dataset.classes)
    if classes < 2:
        raise SelfsupError(f"{dataset.name}: label noise needs at least 2 classes")
    generator = torch.Generator().manual_seed(seed + 7919)  # its own stream: the subset draws stay as they were
    labelled = (dataset.targets >= 0).nonzero().squeeze(1)
    flipped = labelled[torch.randperm(len(labelled), generator=generator)[:round(fraction * len(labelled))]]
    targets = dataset.targets.clone()
    shift = torch.randint(1, classes, (len(flipped),), generator=generator)  # never the true class
    targets[flipped] = (targets[flipped] + shift) % classes
    return dataclasses.replace(dataset, targets=targets)


def labeled_part(dataset: ImageDataset) -> ImageDataset:
    """The images of ``dataset`` that carry a label."""
    return dataset.select((dataset.targets >= 0).nonzero().squeeze(1))


def label_index(train: ImageDataset, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced ``fraction`` of the labelled images of ``train`` (at least one
    per class); the same for a seed."""
    if not 0.0 < fraction <= 1.0:
        raise SelfsupError(f"the label fraction must be in (0, 1], got {fraction}")
    labelled = (train.targets >= 0).nonzero().squeeze(1)
    count = max(round(fraction * len(labelled)), len(train.targets[labelled].unique()))
    return labelled[train.select(labelled).balanced_index(count, seed)]
