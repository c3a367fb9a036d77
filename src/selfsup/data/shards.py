"""WebDataset tar shards: the format large-scale pretraining streams from (OpenCLIP, webdataset).

A shard is a plain tar file whose members are grouped by key: ``000000042.jpg`` (the image's
original bytes, never re-encoded, so a reader can crop from the full resolution) and
``000000042.cls`` (its class index as text; absent for unlabelled images). Shards of a split are
named ``<split>-000000.tar``, ``<split>-000001.tar``, ... in one folder, with ``classes.json`` (the
class names) beside them. Any tool that reads WebDataset reads these, and selfsup reads shards
written by those tools when they follow the same key convention.

:func:`write_shards` makes them from an image folder (``selfsup data shard``);
:func:`read_shards` decodes a split at the training size into memory, as the image-folder reader
does, with the same error handling (a file that does not decode stops the run naming the shard
and the key, or is skipped and listed with ``data.skip_bad``).
"""
from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SelfsupError
from .formats import IMAGE_SUFFIXES, check_fits_in_memory, check_labels, decode_images, list_image_folder

CLASSES_FILE = "classes.json"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def write_shards(folder: str | Path, out: str | Path, shard_size: int = 1000, quiet: bool = False) -> dict[str, int]:
    """Shards of ``folder`` (``<class>/<image>``, or ``train/``, ``test/``, ``val/`` holding those) in
    ``out``: ``shard_size`` images per shard, in a fixed order (class by class, files sorted), the
    images' bytes as they are. Returns the number of images per split."""
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if shard_size < 1:
        raise SelfsupError(f"--shard-size must be at least 1, got {shard_size}")
    if not folder.is_dir():
        raise SelfsupError(f"image folder {folder} does not exist")
    splits = {name: folder / name for name in ("train", "test", "val") if (folder / name).is_dir()} or {"train": folder}
    listed = {split: list_image_folder(path) for split, path in splits.items()}
    class_lists = {tuple(classes) for _, _, classes in listed.values()}
    if len(class_lists) > 1:
        raise SelfsupError(f"the splits of {folder} have different class folders: {sorted(class_lists)}")
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    if existing:
        raise SelfsupError(f"{out} already holds shards ({existing[0].name}, ...); choose an empty folder")
    counts = {}
    for split, (files, labels, classes) in listed.items():
        with tqdm(total=len(files), disable=quiet, desc=f"sharding {split}", unit="img") as bar:
            for number, start in enumerate(range(0, len(files), shard_size)):
                part = out / shard_name(split, number)
                temporary = part.with_suffix(".tar.tmp")
                with tarfile.open(temporary, "w") as archive:
                    for index in range(start, min(start + shard_size, len(files))):
                        key = f"{index:09d}"
                        _add(archive, f"{key}{files[index].suffix.lower()}", files[index].read_bytes())
                        _add(archive, f"{key}.cls", str(labels[index]).encode())
                        bar.update()
                temporary.replace(part)  # a killed run leaves no half shard under a shard's name
        counts[split] = len(files)
    (out / CLASSES_FILE).write_text(json.dumps(next(iter(class_lists))) + "\n")
    return counts


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def split_shards(root: Path, split: str) -> list[Path]:
    """The shards of ``split`` in ``root`` (or ``root/<split>/``), in order."""
    if not root.is_dir():
        raise SelfsupError(f"shard folder {root} does not exist")
    shards = sorted(root.glob(f"{split}-*.tar")) or sorted((root / split).glob("*.tar"))
    if not shards:
        found = sorted({p.name.rsplit("-", 1)[0] for p in root.glob("*.tar")})
        raise SelfsupError(f"{root} holds no shards of split '{split}' ({split}-000000.tar, ...)"
                           + (f"; it has splits {', '.join(found)}" if found else "; make them with selfsup data shard"))
    return shards


def samples(shard: Path) -> Iterator[tuple[str, bytes, str, int]]:
    """``(key, image bytes, image suffix, label)`` of every sample of a shard, in order (label -1 when
    the sample has no ``.cls``)."""
    try:
        with tarfile.open(shard, "r:") as archive:  # plain tar: shards are read in one pass, not decompressed
            current: dict[str, bytes] = {}
            key = None
            for member in archive:
                if not member.isfile():
                    continue
                stem, _, suffix = member.name.rpartition(".")
                if stem != key and key is not None:
                    yield _sample(shard, key, current)
                    current = {}
                key = stem
                current[suffix.lower()] = archive.extractfile(member).read()
            if key is not None:
                yield _sample(shard, key, current)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise unreadable(shard, err) from None


def unreadable(shard: Path, err: Exception) -> SelfsupError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    return SelfsupError(f"cannot read shard {shard} ({reason}); it is damaged or not a tar file")


def count_samples(shard: Path) -> int:
    """The samples with an image in a shard, from its member headers (the data is skipped over)."""
    try:
        with tarfile.open(shard, "r:") as archive:
            return len({member.name.rpartition(".")[0] for member in archive
                        if member.isfile() and f".{member.name.rpartition('.')[2].lower()}" in IMAGE_SUFFIXES})
    except (tarfile.TarError, OSError, EOFError) as err:
        raise unreadable(shard, err) from None


def _sample(shard: Path, key: str, parts: dict[str, bytes]) -> tuple[str, bytes, str, int]:
    images = [suffix for suffix in parts if f".{suffix}" in IMAGE_SUFFIXES]
    if not images:
        raise SelfsupError(f"{shard}: sample '{key}' has no image ({', '.join(sorted(parts))})")
    return key, parts[images[0]], images[0], parse_class(shard, key, parts["cls"]) if "cls" in parts else -1


def parse_class(shard: Path, key: str, data: bytes) -> int:
    """A sample's ``.cls`` member: its class index as text."""
    try:
        return int(data.decode().strip())
    except (ValueError, UnicodeDecodeError):
        raise SelfsupError(f"{shard}: sample '{key}' has a class that is not an integer: {data[:40]!r}") from None


def read_shards(root: str | Path, split: str, size: int, skip_bad: bool = False, quiet: bool = False,
                threads: int = 8) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Every image of ``split``'s shards decoded to ``size`` (shorter side, centre crop): images,
    labels (-1: none), class names and the skipped samples (``shard:key``)."""
    root = Path(root).expanduser()
    shards = split_shards(root, split)
    total = sum(count_samples(shard) for shard in shards)  # headers only: nothing decoded yet
    check_fits_in_memory(total, size, f"the '{split}' shards of {root}")
    entries = ((shard, key, data, label) for shard in shards for key, data, _, label in samples(shard))

    images, labels, skipped = [], [], []
    with tqdm(total=total, disable=quiet, desc=f"decoding {split} shards", unit="img") as bar:
        # A few hundred samples' bytes in flight at a time, not the whole split's.
        while chunk := list(itertools.islice(entries, 32 * threads)):
            results = decode_images([io.BytesIO(data) for _, _, data, _ in chunk], size, threads=threads)
            for (shard, key, _, label), result in zip(chunk, results):
                bar.update()
                if isinstance(result, Exception):
                    if not skip_bad:
                        raise SelfsupError(f"cannot decode sample '{key}' of {shard}: {result}. Fix or remove it, "
                                           "or set data.skip_bad=true to skip undecodable images")
                    skipped.append(f"{shard.name}:{key}")
                    continue
                images.append(result)
                labels.append(label)
    if not images:
        raise SelfsupError(f"no image in the '{split}' shards of {root} could be decoded")
    labels_array = np.asarray(labels, dtype=np.int64)
    classes = read_classes(root, labels)
    check_labels(labels_array, len(classes), f"the '{split}' shards of {root}")
    return np.stack(images), labels_array, classes, skipped


def read_classes(root: Path, labels: list[int]) -> list[str]:
    """The class names in ``classes.json`` beside the shards; without one, the class indices as names."""
    classes_file = root / CLASSES_FILE
    if classes_file.is_file():
        return [str(c) for c in json.loads(classes_file.read_text())]
    return [str(c) for c in range(max(labels) + 1)] if labels and max(labels) >= 0 else []
