"""The datasets selfsup knows: where their files are, how to fetch them, how to read them.

``load_dataset(name, split, root)`` is the one entry point. Standard datasets are looked for
in ``$SELFSUP_DATA/<name>``, ``~/.cache/selfsup/datasets/<name>``, ``./data/<name>`` and the
system folder of a distribution package; with ``download=True`` they are fetched from their
official URLs and checked against the published MD5 sums. User data comes as an image
folder or a tensor file and needs ``root``.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SelfsupError, closest
from ..engine import dist
from ..engine.runtime import available_memory
from ..tables import human_bytes
from . import formats
from .cache import cache_folder, is_complete, read_cache, write_cache
from .dataset import ImageDataset
from .user import DEFAULT_FILE_SIZE, FILE_FORMATS, USER_FORMATS, file_dataset, join, read_user_data

SOURCES = ("auto", "memory", "stream", "cache")
"""Where training images come from (``data.source``)."""

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard "
    "lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal "
    "shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


#: (images, labels, class names or None for the spec's, skipped files)
RawSplit = tuple[np.ndarray, np.ndarray, "list[str] | None", list[str]]


@dataclass(frozen=True)
class Download:
    url: str
    filename: str
    md5: str
    extract: bool = False
    """A .tar(.gz) archive to unpack into the dataset folder (then deleted)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    read: Callable[[Path, str], RawSplit]
    markers: tuple[str, ...]
    """Paths relative to a root (a trailing .gz is optional); any one present marks the dataset."""
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    downloads: tuple[Download, ...]
    mirrors: tuple[str, ...]
    """Base URLs tried, in order, when a download's own URL fails."""
    system_dirs: tuple[str, ...]
    """Where distribution packages install the dataset."""
    install_hint: str


# ---------------------------------------------------------------- readers per dataset

def read_mnist_family(num_classes: int = 10) -> Callable[[Path, str], RawSplit]:
    def read(root: Path, split: str) -> RawSplit:
        prefix = {"train": "train", "test": "t10k"}[split]
        paths = []
        for kind in ("images-idx3", "labels-idx1"):
            path = formats.existing(root / f"{prefix}-{kind}-ubyte")
            if path is None:
                raise SelfsupError(f"{root / f'{prefix}-{kind}-ubyte'}(.gz) is missing; the dataset folder is incomplete")
            paths.append(path)
        images, labels = formats.read_idx_pair(paths[0], paths[1], num_classes)
        return images, labels, None, []
    return read


def read_cifar(variant: str) -> Callable[[Path, str], RawSplit]:
    folder_name, label_key, meta, names_key = {
        "cifar10": ("cifar-10-batches-py", b"labels", "batches.meta", b"label_names"),
        "cifar100": ("cifar-100-python", b"fine_labels", "meta", b"fine_label_names"),
    }[variant]

    def read(root: Path, split: str) -> RawSplit:
        folder = root / folder_name if (root / folder_name).is_dir() else root
        if variant == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        else:
            files = [split]
        parts = [formats.read_cifar_batch(folder / f, label_key) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        classes = formats.read_cifar_names(folder / meta, names_key)
        formats.check_labels(labels, len(classes or DATASETS[variant].classes), folder / files[0])
        return images, labels, classes, []
    return read


def read_stl10_split(root: Path, split: str) -> RawSplit:
    folder = root / "stl10_binary" if (root / "stl10_binary").is_dir() else root
    labels = None if split == "unlabeled" else folder / f"{split}_y.bin"
    images, targets = formats.read_stl10(folder / f"{split}_X.bin", labels)
    return images, targets, None, []


FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def idx_downloads(base: str, md5s: tuple[str, str, str, str]) -> tuple[Download, ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    return tuple(Download(base + name, name, md5) for name, md5 in zip(names, md5s))


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        "fashion_mnist", "Fashion-MNIST: 60k/10k 28x28 grayscale clothing images, 10 classes (idx)",
        read_mnist_family(), ("train-images-idx3-ubyte",), ("train", "test"), tuple(FASHION_MNIST_CLASSES),
        idx_downloads(FASHION_URL, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                    "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        ("/usr/share/datasets/fashion-mnist",),
        "On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist. "),
    DatasetSpec(
        "mnist", "MNIST: 60k/10k 28x28 grayscale digits, 10 classes (idx)",
        read_mnist_family(), ("train-images-idx3-ubyte",), ("train", "test"), tuple(str(d) for d in range(10)),
        idx_downloads(MNIST_URL, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                  "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
        ("http://yann.lecun.com/exdb/mnist/",), ("/usr/share/datasets/mnist",), ""),
    DatasetSpec(
        "cifar10", "CIFAR-10: 50k/10k 32x32 colour images, 10 classes (python pickles)",
        read_cifar("cifar10"), ("cifar-10-batches-py/test_batch", "test_batch"), ("train", "test"),
        tuple(CIFAR10_CLASSES),
        (Download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                  "c58f30108f718f92721af3b95e74349a", extract=True),), (), (), ""),
    DatasetSpec(
        "cifar100", "CIFAR-100: 50k/10k 32x32 colour images, 100 fine classes (python pickles)",
        read_cifar("cifar100"), ("cifar-100-python/test",), ("train", "test"), tuple(CIFAR100_CLASSES),
        (Download("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                  "eb9058c3a382ffc7106e4002c42a8d85", extract=True),), (), (), ""),
    DatasetSpec(
        "stl10", "STL-10: 5k/8k labelled + 100k unlabeled 96x96 colour images, 10 classes (binaries)",
        read_stl10_split, ("stl10_binary/test_X.bin", "test_X.bin"),
        ("train", "test", "unlabeled", "train+unlabeled"), tuple(STL10_CLASSES),
        (Download("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz",
                  "91f7769df0f17e558f3565bffb0c7dfb", extract=True),), (), (), ""),
)}


# ---------------------------------------------------------------- finding and fetching

def candidate_dirs(spec: DatasetSpec) -> list[Path]:
    """Where a standard dataset is looked for, in order."""
    dirs = [Path(os.environ["SELFSUP_DATA"]) / spec.name] if os.environ.get("SELFSUP_DATA") else []
    dirs += [Path.home() / ".cache" / "selfsup" / "datasets" / spec.name, Path("data") / spec.name]
    return dirs + [Path(d) for d in spec.system_dirs]


def is_present(spec: DatasetSpec, root: Path) -> bool:
    return any(formats.existing(root / marker) is not None for marker in spec.markers)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        known = [*DATASETS, *USER_FORMATS]
        raise SelfsupError(f"unknown dataset '{name}'{closest(name, known)}; known: {', '.join(known)}")
    return DATASETS[name]


def find_root(name: str, root: str | Path | None = None, download: bool = False, quiet: bool = False) -> Path:
    """The folder holding dataset ``name``; fetched into it when ``download`` and absent."""
    spec = get_spec(name)
    if root is not None:
        root = Path(root).expanduser()
        if is_present(spec, root):
            return root
        if download:
            fetch(spec, root, quiet)
            return root
        raise SelfsupError(f"{name} not found in {root} (looked for {' or '.join(spec.markers)}). "
                           f"{spec.install_hint}Or run `selfsup data prepare {name} --download --root {root}`")
    searched = candidate_dirs(spec)
    for folder in searched:
        if is_present(spec, folder):
            return folder
    if download:
        target = searched[0]
        fetch(spec, target, quiet)
        return target
    raise SelfsupError(f"{name} not found (looked in {', '.join(str(d) for d in searched)}). {spec.install_hint}"
                       f"Or run `selfsup data prepare {name} --download`, or point data.root at the files")


def prepare(name: str, root: str | Path | None = None, download: bool = False, quiet: bool = False) -> Path:
    """Find dataset ``name`` (fetching it when ``download``) and read every split once, which proves the
    files are readable; the folder holding it."""
    if name in USER_FORMATS:
        raise SelfsupError(f"{name} data is read from data.root; nothing to prepare")
    found = find_root(name, root, download=download, quiet=quiet)
    for split in get_spec(name).splits:
        if "+" not in split:  # a union of splits reads the same files again
            load_dataset(name, split, found, quiet=True)
    return found


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(spec: DatasetSpec, root: Path, quiet: bool = False) -> None:
    """Download every file of ``spec`` into ``root``, verify its MD5, unpack archives."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SelfsupError(f"cannot create {root} to download {spec.name} into: {err}") from err
    for item in spec.downloads:
        target = root / item.filename
        if not (target.is_file() and md5_of(target) == item.md5):
            urls = [item.url] + [mirror + item.filename for mirror in spec.mirrors]
            download_first(urls, target, quiet)
            actual = md5_of(target)
            if actual != item.md5:
                target.unlink()
                raise SelfsupError(f"{item.filename} has the wrong checksum (md5 {actual}, expected {item.md5}); "
                                   f"deleted it. Try again, or copy the official file into {root} by hand")
        if item.extract:
            try:
                with tarfile.open(target) as archive:
                    archive.extractall(root, filter="data")
            except (tarfile.TarError, OSError) as err:
                raise SelfsupError(f"cannot unpack {target}: {err}; delete it and download again") from err
            target.unlink()


def download_first(urls: list[str], target: Path, quiet: bool) -> None:
    """Fetch the first URL that answers into ``target`` (through a temporary file)."""
    errors = []
    partial = target.with_name(target.name + ".part")
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc=target.name, disable=quiet) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            partial.replace(target)
            return
        except (urllib.error.URLError, OSError, ValueError) as err:
            partial.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(err, 'reason', err)}")
    raise SelfsupError(f"could not download {target.name} ({'; '.join(errors)}). If this machine is offline, "
                       f"copy the files into {target.parent} by hand and run again")


# ---------------------------------------------------------------- loading

def load_dataset(name: str = "fashion_mnist", split: str = "train", root: str | Path | None = None,
                 image_size: int | None = None, download: bool = False, skip_bad: bool = False,
                 quiet: bool = False, source: str = "memory", cache_root: str | Path | None = None) -> ImageDataset:
    """Split ``split`` of dataset ``name``; ``a+b`` joins splits.

    ``source``: ``memory`` decodes everything once into one uint8 tensor; ``stream`` (image files
    only) lists the files and decodes them as batches ask (:mod:`selfsup.data.stream`); ``cache``
    reads the cache of this data and size, building it first when there is none
    (:mod:`selfsup.data.cache`); ``auto`` streams image files whose decoded pixels would take more
    than a quarter of the available memory and holds everything else in memory, and says which.
    ``image_size`` resizes on load (image files are always brought to one size: 64 by default).
    Every problem raises :class:`SelfsupError` naming the file and the fix.
    """
    if source not in SOURCES:
        raise SelfsupError(f"data.source must be one of {', '.join(SOURCES)}, got '{source}'{closest(source, SOURCES)}")
    if name in USER_FORMATS and root is None:
        raise SelfsupError(f"{name} data needs data.root: {USER_FORMATS[name]}")
    if source == "cache":
        folder = cache_folder(name, root, split, image_size, cache_root)
        if not is_complete(folder) and dist.local_rank() == 0:  # one process a machine builds it; the rest wait
            if not quiet:
                print(f"data: building the cache of {name} ({split}) in {folder} (once)")
            uncached = load_dataset(name, split, root, image_size, download, skip_bad, quiet,
                                    "stream" if name in FILE_FORMATS else "memory")
            write_cache(uncached, folder, quiet)
        dist.barrier()
        return read_cache(folder)
    if name in FILE_FORMATS:
        parts = [file_dataset(name, Path(root).expanduser(), part, image_size or DEFAULT_FILE_SIZE, skip_bad)
                 for part in split.split("+")]
        streamed = join(parts, name, split)
        if source == "auto":
            available = available_memory()
            source = "stream" if available is not None and streamed.nbytes > available / 4 else "memory"
            if not quiet and source == "stream":
                print(f"data: streaming {name} ({split}): {len(streamed)} images at {streamed.image_size} px take "
                      f"{human_bytes(streamed.nbytes)} decoded, more than a quarter of the "
                      f"{human_bytes(available)} of memory available (data.source=memory holds them anyway; "
                      "data.source=cache decodes them once to disk)")
        if source == "stream":
            return streamed
        if name == "filelist":
            return streamed.in_ram()
        parts = [read_user_data(name, Path(root).expanduser(), part, image_size, skip_bad, quiet)
                 for part in split.split("+")]
    elif source == "stream":
        raise SelfsupError(f"data.source=stream reads image files ({', '.join(FILE_FORMATS)}); {name} is "
                           "read whole: use data.source=memory or cache")
    elif name in USER_FORMATS:
        parts = [read_user_data(name, Path(root).expanduser(), part, image_size, skip_bad, quiet)
                 for part in split.split("+")]
    else:
        spec = get_spec(name)
        base_splits = [s for s in spec.splits if "+" not in s]
        for part in split.split("+"):
            if part not in base_splits:
                raise SelfsupError(f"{name} has no split '{part}'{closest(part, base_splits)}; "
                                   f"splits: {', '.join(spec.splits)}")
        folder = find_root(name, root, download, quiet)
        parts = []
        for part in split.split("+"):
            images, labels, classes, skipped = spec.read(folder, part)
            parts.append(ImageDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels),
                                      classes or list(spec.classes), name, part, skipped))
    dataset = join(parts, name, split)
    if image_size is not None and name not in FILE_FORMATS:
        dataset = dataset.resized(image_size)
    return dataset
