"""A decoded dataset on disk, read by memory mapping (``data.source=cache``, ``selfsup data cache``).

Decoding JPEGs costs more than training a small network on them; holding a large decoded set
in RAM may not be possible. A cache is decoded once, at the training size, into one uint8 numpy
file (``images.npy``, (N, C, S, S)) beside ``targets.npy`` and ``cache.json`` (classes, the
files it was made from, the files skipped). Training maps it: a batch reads its rows from the
page cache or the disk, and memory holds what the operating system chooses to keep.

A cache is written into a temporary folder and renamed when complete, so a killed build leaves
no cache that looks whole; the next run builds it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SelfsupError
from ..tables import human_bytes
from .dataset import ImageDataset

CHUNK = 1024  # images decoded and written at a time
INFO = "cache.json"


def default_cache_root() -> Path:
    """``$SELFSUP_CACHE``, else ``~/.cache/selfsup/caches``."""
    return Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup" / "caches").expanduser()


def cache_folder(name: str, root: str | Path | None, split: str, size: int | None,
                 cache_root: str | Path | None = None) -> Path:
    """Where the cache of (dataset, its root, split, size) lives: one folder per combination."""
    where = str(Path(root).expanduser().resolve()) if root is not None else "default"
    digest = hashlib.sha1(where.encode()).hexdigest()[:10]
    side = f"{size}px" if size is not None else "native"
    base = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return base / f"{name}-{digest}-{split.replace('+', '_')}-{side}"


def is_complete(folder: Path) -> bool:
    return (folder / INFO).is_file() and (folder / "images.npy").is_file()


def write_cache(dataset: ImageDataset, folder: str | Path, quiet: bool = False) -> Path:
    """Decode (or copy) every image of ``dataset`` into a cache at ``folder``; files that do not decode
    stop it, or are left out and listed when the dataset's store skips them."""
    folder = Path(folder).expanduser()
    if is_complete(folder):
        raise SelfsupError(f"{folder} already holds a cache; delete it to build it again")
    # A name of this process's own: two machines sharing the folder never write into one file; the
    # first complete cache to be renamed into place is the one kept.
    partial = folder.with_name(f"{folder.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    free = shutil.disk_usage(partial).free
    if dataset.nbytes > free:
        raise SelfsupError(f"the cache of {dataset.name} ({dataset.split}) takes {human_bytes(dataset.nbytes)}; "
                           f"{partial.parent} has {human_bytes(free)} free: choose another place (--out, "
                           "SELFSUP_CACHE) or a smaller --size")
    shape = (len(dataset), dataset.channels, dataset.image_size, dataset.image_size)
    images = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    kept, skipped, written = [], list(dataset.skipped), 0
    with tqdm(total=len(dataset), disable=quiet, desc=f"caching {dataset.name} ({dataset.split})", unit="img") as bar:
        for start in range(0, len(dataset), CHUNK):
            positions = torch.arange(start, min(start + CHUNK, len(dataset)))
            if dataset.in_memory:
                pixels, ok, bad = dataset.pixels(positions), torch.ones(len(positions), dtype=torch.bool), []
            else:
                rows = positions if dataset.rows is None else dataset.rows[positions]
                pixels, ok, bad = dataset.store.decode(rows)
            images[written:written + len(pixels)] = pixels.numpy()
            written += len(pixels)
            kept.append(positions[ok])
            skipped += bad
            bar.update(len(positions))
    images.flush()
    del images
    if written == 0:
        raise SelfsupError(f"no image of {dataset.name} ({dataset.split}) could be decoded")
    targets = dataset.targets[torch.cat(kept)].numpy()
    np.save(partial / "targets.npy", targets)
    files = [dataset.store.name_of(int(r)) for r in (dataset.rows if dataset.rows is not None
                                                     else range(len(dataset.store)))] \
        if not dataset.in_memory else []
    (partial / "files.txt").write_text("".join(f"{f}\n" for f in files))
    info = {"name": dataset.name, "split": dataset.split, "images": written, "shape": list(shape[1:]),
            "classes": list(dataset.classes), "skipped": skipped}
    (partial / INFO).write_text(json.dumps(info, indent=1) + "\n")
    if folder.exists() and not is_complete(folder):
        shutil.rmtree(folder)  # what a killed build left
    try:
        partial.rename(folder)
    except OSError:
        if not is_complete(folder):
            raise
        shutil.rmtree(partial)  # another process finished first: its cache is the same
    return folder


def read_cache(folder: str | Path) -> ImageDataset:
    """The cache at ``folder``, memory-mapped: no pixel is read until a batch asks for it."""
    folder = Path(folder).expanduser()
    if not is_complete(folder):
        raise SelfsupError(f"{folder} holds no complete cache (make one with selfsup data cache)")
    try:
        info = json.loads((folder / INFO).read_text())
        # Copy-on-write mapping: writable for torch, and nothing is ever written back to the file.
        images = np.load(folder / "images.npy", mmap_mode="c")
        targets = np.load(folder / "targets.npy")
    except (OSError, ValueError) as err:
        raise SelfsupError(f"cannot read the cache in {folder} ({err}); delete it to build it again") from None
    count = int(info["images"])
    if images.ndim != 4 or len(images) < count or len(targets) != count:
        raise SelfsupError(f"the cache in {folder} is inconsistent ({images.shape} images, {len(targets)} "
                           f"targets, {count} recorded); delete it to build it again")
    return ImageDataset(torch.from_numpy(images[:count]), torch.from_numpy(targets), info["classes"], info["name"],
                        info["split"], info["skipped"], mapped=True)
