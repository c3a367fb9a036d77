"""The user's own data: image folders, file lists, WebDataset shards and tensor files, listed as
files (a :class:`~selfsup.data.stream.FileStore`, for streaming) or decoded into memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import SelfsupError
from . import formats, shards
from .dataset import ImageDataset
from .stream import FileStore, read_file_list, shard_members

#: Formats for the user's own data; they are read from ``data.root`` and never downloaded.
USER_FORMATS = {
    "imagefolder": "root/<class>/<image>, root/{train,test}/<class>/<image>, or images in root (unlabelled)",
    "tensors": "an .npz/.pt file (or a folder of <split>.npz/.pt) with uint8 'images' and optional 'targets'",
    "webdataset": "root/<split>-000000.tar, ...: WebDataset shards of key.jpg + key.cls (selfsup data shard "
                  "writes them), decoded once",
    "filelist": "a text file with one image per line, 'path' or 'path,class' (or a folder of <split>.txt)",
}

#: Formats of image files, which can also be streamed (``data.source=stream``).
FILE_FORMATS = ("imagefolder", "webdataset", "filelist")
DEFAULT_FILE_SIZE = 64


MAX_NUMBERED_CLASSES = 100_000
"""The most classes a tensor file without class names may number (ImageNet-21k has 21,841)."""

def join(parts: list[ImageDataset], name: str, split: str) -> ImageDataset:
    """The splits of ``a+b`` as one dataset (file stores: their files joined, nothing decoded)."""
    if len(parts) == 1:
        return parts[0]
    targets, skipped = torch.cat([p.targets for p in parts]), [s for p in parts for s in p.skipped]
    if all(isinstance(p.store, FileStore) for p in parts):
        first: FileStore = parts[0].store
        stores: list[FileStore] = [p.store for p in parts]
        offsets = None if first.offsets is None else np.concatenate([s.offsets for s in stores])
        lengths = None if first.lengths is None else np.concatenate([s.lengths for s in stores])
        keys = None if first.keys is None else [k.decode() for s in stores for k in s.keys]
        store = FileStore(np.concatenate([s.paths for s in stores]), first.size, first.channels, offsets=offsets,
                          lengths=lengths, keys=keys, skip_bad=first.skip_bad, source=f"{first.source} ({split})")
        return ImageDataset(store, targets, parts[0].classes, name, split, skipped)
    return ImageDataset(torch.cat([p.images for p in parts]), targets, parts[0].classes, name, split, skipped)


def image_folder_split(root: Path, split: str) -> Path:
    """The folder of ``split`` in an image folder: ``root/<split>/`` when it has split folders, else
    ``root`` itself for ``train``."""
    if not root.is_dir():
        raise SelfsupError(f"image folder {root} does not exist")
    split_dirs = [d for d in ("train", "test", "val") if (root / d).is_dir()]
    if split_dirs:
        if split not in split_dirs:
            raise SelfsupError(f"{root} has no split '{split}' (it has {', '.join(split_dirs)})")
        return root / split
    if split == "train":
        return root
    raise SelfsupError(f"{root} has no split '{split}': put images in {root}/{split}/<class>/")


def split_file(root: Path, split: str, suffixes: tuple[str, ...], what: str) -> Path:
    """The file of ``split`` in a folder of ``<split><suffix>`` files, or ``root`` itself (a single
    file: the ``train`` split)."""
    if root.is_dir():
        found = [root / f"{split}{suffix}" for suffix in suffixes if (root / f"{split}{suffix}").is_file()]
        if not found:
            raise SelfsupError(f"{root} has no {' or '.join(split + s for s in suffixes)}")
        return found[0]
    if split == "train":
        return root
    raise SelfsupError(f"{root} is a single {what}: it is the 'train' split; for a '{split}' split put "
                       f"{split}{suffixes[0]} next to train{suffixes[0]} in a folder and point data.root at the folder")


def file_dataset(name: str, root: Path, split: str, size: int, skip_bad: bool) -> ImageDataset:
    """``split`` of an image folder, shards or file list as a :class:`FileStore` (listed, not decoded)."""
    keys, offsets, lengths = None, None, None
    if name == "imagefolder":
        folder = image_folder_split(root, split)
        files, labels, classes = formats.list_image_folder(folder)
        source = str(folder)
    elif name == "webdataset":
        found = shards.split_shards(root, split)
        files, offsets, lengths, keys, labels = shard_members(found)
        if not files:
            raise SelfsupError(f"the '{split}' shards of {root} hold no images")
        classes = shards.read_classes(root, labels)
        source = f"the '{split}' shards of {root}"
    else:
        listed = split_file(root, split, (".txt", ".csv"), "file list")
        files, labels, classes = read_file_list(listed)
        source = str(listed)
    label_array = np.asarray(labels, dtype=np.int64)
    formats.check_labels(label_array, len(classes), source)
    store = FileStore([str(f) for f in files], size, offsets=offsets, lengths=lengths, keys=keys, skip_bad=skip_bad,
                      source=source)
    return ImageDataset(store, torch.from_numpy(label_array), list(classes), name, split)


def read_user_data(name: str, root: Path, split: str, image_size: int | None, skip_bad: bool,
                   quiet: bool) -> ImageDataset:
    """One split of an image folder, shards or a tensor file, decoded into memory."""
    if name == "imagefolder":
        images, labels, classes, skipped = formats.read_image_folder(image_folder_split(root, split),
                                                                     image_size or DEFAULT_FILE_SIZE, skip_bad, quiet)
        return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, name, split, skipped)
    if name == "webdataset":
        images, labels, classes, skipped = shards.read_shards(root, split, image_size or DEFAULT_FILE_SIZE,
                                                              skip_bad, quiet)
        return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, name, split, skipped)
    path = split_file(root, split, (".npz", ".pt", ".pth"), "tensor file")
    images, targets, classes = formats.read_tensor_file(path)
    if targets is None:
        targets = np.full(len(images), -1, dtype=np.int64)
    if classes is None:
        largest = int(targets.max()) if (targets >= 0).any() else -1
        if largest >= MAX_NUMBERED_CLASSES:  # the classes would be 0..largest: refused before they fill memory
            raise SelfsupError(f"{path}: label {largest} would make {largest + 1:,} classes (without a 'classes' "
                               f"list, the classes are 0 to the largest label); number the labels from 0, or "
                               f"save the class names as 'classes'")
        classes = [str(c) for c in range(largest + 1)]
    formats.check_labels(targets, len(classes), path)
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(targets), classes, name,
                        split)
