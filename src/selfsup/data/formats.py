"""Readers for the on-disk formats of the standard datasets, each returning uint8 arrays.

Every reader checks what it reads and names the file when something is wrong: a truncated
idx file, a pickle that would run code, a label outside the class list, an image Pillow
cannot decode. Image arrays come back as ``(N, C, H, W)`` uint8, labels as ``(N,)`` int64
with -1 for unlabelled images.
"""
from __future__ import annotations

import functools
import gzip
import io
import pickle
import re
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from ..engine.runtime import available_memory
from ..errors import SelfsupError
from ..files import read_weights_only
from ..tables import human_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: idx type codes (http://yann.lecun.com/exdb/mnist/, "the IDX file format"); data is big-endian.
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------- idx (MNIST, Fashion-MNIST)

def existing(path: Path) -> Path | None:
    """``path`` or ``path.gz``, whichever exists."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise SelfsupError(f"cannot read {path}: the file is corrupt or truncated ({err}); "
                           "delete it and fetch it again") from err


def read_idx(path: Path) -> np.ndarray:
    """An idx array: magic ``00 00 <type> <ndim>``, ndim big-endian uint32 sizes, then the data."""
    payload = read_bytes(path)
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] not in IDX_DTYPES:
        raise SelfsupError(f"{path} is not an idx file (it starts with {payload[:4]!r}, "
                           "expected 00 00 <type> <ndim>)")
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise SelfsupError(f"{path} is truncated: its idx header is incomplete")
    shape = tuple(int.from_bytes(payload[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[payload[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(payload) - header != expected:
        raise SelfsupError(f"{path} is truncated or padded: the header declares shape {shape} "
                           f"({expected} bytes of data) but the file holds {len(payload) - header}")
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(shape).copy()  # writable for torch


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise SelfsupError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    labels = read_idx(labels_path).astype(np.int64)
    if labels.shape != (len(images),):
        raise SelfsupError(f"{labels_path}: {labels.size} labels for {len(images)} images in {images_path}; "
                           "the two files come from different releases")
    check_labels(labels, num_classes, labels_path)
    return images[:, None], labels


def check_labels(labels: np.ndarray, num_classes: int, source: Path | str) -> None:
    bad = labels[(labels < -1) | (labels >= num_classes)]
    if bad.size:
        raise SelfsupError(f"{source}: label {int(bad[0])} is out of range for {num_classes} classes")


# ---------------------------------------------------------------- CIFAR python pickles

class CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a CIFAR batch file cannot run code."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch: ``data`` (N, 3072) as R, G, B planes of 32x32 and a label list."""
    try:
        with open(path, "rb") as handle:
            batch = CifarUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except FileNotFoundError as err:
        raise SelfsupError(f"{path} is missing; the CIFAR folder is incomplete") from err
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise SelfsupError(f"{path} is not a CIFAR python pickle ({err}); fetch the 'python version' "
                           "of the dataset again") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise SelfsupError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} "
                           f"and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_names(path: Path, key: bytes) -> list[str] | None:
    """Class names from a ``batches.meta`` / ``meta`` file, when it is there."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            return [n.decode() for n in CifarUnpickler(handle, encoding="bytes").load()[key]]
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, ValueError) as err:
        raise SelfsupError(f"{path} is not a CIFAR meta pickle ({err})") from err


# ---------------------------------------------------------------- STL-10 binaries

def read_stl10(images_path: Path, labels_path: Path | None, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 ``*_X.bin``: uint8, column-major per image (N, 3, W, H); ``*_y.bin`` labels 1..10."""
    if not images_path.is_file():
        raise SelfsupError(f"{images_path} is missing; the STL-10 folder is incomplete")
    per_image = 3 * size * size
    nbytes = images_path.stat().st_size
    if nbytes == 0 or nbytes % per_image:
        raise SelfsupError(f"{images_path} is truncated: {nbytes} bytes is not a whole number of "
                           f"{size}x{size} RGB images ({per_image} bytes each)")
    images = np.fromfile(images_path, dtype=np.uint8).reshape(-1, 3, size, size).transpose(0, 1, 3, 2)
    images = np.ascontiguousarray(images)
    if labels_path is None:
        return images, np.full(len(images), -1, dtype=np.int64)
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise SelfsupError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    check_labels(labels, 10, labels_path)
    return images, labels


# ---------------------------------------------------------------- image folders (Pillow)

def undecodable(err: Exception) -> str:
    """Why an image did not decode, in one line a user can read (Pillow names its in-memory buffer)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return re.sub(r" ?<_io\.\w+ object at 0x[0-9a-f]+>", "", lines[-1]).strip() or type(err).__name__


def decode_image(path: Path | BinaryIO, size: int, channels: int = 3) -> np.ndarray:
    """uint8 (channels, size, size), RGB or gray (``channels`` 1): shorter side resized to ``size``,
    then centre-cropped. ``path`` is a file, or the file's bytes in a stream (a shard's member)."""
    if channels not in (1, 3):
        raise SelfsupError(f"images are decoded to 1 (gray) or 3 (RGB) channels, not {channels}")
    pixels = np.array(fit_square(open_image(path, channels), size), dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


JPEG_OR_PNG = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


@functools.cache
def torchvision_decoder() -> Any:
    """torchvision.io's decoder as ``decode(bytes tensor, channels)``, or None where it is gone."""
    try:
        from torchvision.io import ImageReadMode, decode_image as decode_tensor
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    return lambda data, channels: decode_tensor(data, ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)


def open_image(source: Path | str | BinaryIO, channels: int = 3) -> Any:
    """A file (or a file's bytes in a stream) as a Pillow image in RGB or gray (``channels`` 1).

    JPEG and PNG are decoded by torchvision.io (libjpeg-turbo / libpng), twice as fast as Pillow's
    decoder here (benchmarks/RESULTS.md, 24); 16-bit PNGs are scaled to 8 bits instead of clipped.
    Other formats, files torchvision cannot decode, and a torchvision without image decoding (it is
    deprecated since 0.29 in favour of TorchCodec) go through Pillow, whose error names the problem."""
    from PIL import Image

    data = source.read() if hasattr(source, "read") else Path(source).read_bytes()
    decode_tensor = torchvision_decoder()
    if decode_tensor is not None and data.startswith(JPEG_OR_PNG):
        try:
            pixels = decode_tensor(torch.frombuffer(bytearray(data), dtype=torch.uint8), channels)
        except RuntimeError:
            pass
        else:
            if pixels.dtype == torch.uint16:
                pixels = (pixels.to(torch.int32) >> 8).to(torch.uint8)
            array = pixels.permute(1, 2, 0).numpy()
            return Image.fromarray(array[..., 0] if channels == 1 else array)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode.startswith("I") or image.mode == "F":
            image = eight_bits(image)
        return image.convert("L" if channels == 1 else "RGB")


def eight_bits(image: Any) -> Any:
    """A 16-bit (or 32-bit integer holding 16-bit values) gray image scaled to 8 bits, where Pillow's
    convert would clip it to white; floating-point images are refused (their range is unknown)."""
    from PIL import Image

    if image.mode == "F":
        raise SelfsupError("a floating-point image (its range is unknown): save it with 8 or 16 bits per channel")
    values = np.asarray(image, dtype=np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise SelfsupError(f"a {image.mode} image with values outside 0-65535: save it with 8 or 16 bits per channel")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def fit_square(image: Any, size: int) -> Any:
    """A Pillow image's shorter side resized to ``size`` (bicubic), then its centre ``size`` x ``size``."""
    from PIL import Image

    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files of ``root/<class>/<image>`` (any depth below the class), their class indices and the
    sorted class names; a folder with images at its top is one set of unlabelled images (labels -1,
    no classes)."""
    if not root.is_dir():
        raise SelfsupError(f"image folder {root} does not exist")
    if any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in root.iterdir()):
        # Images at the top: one folder of unlabelled images (its sub-folders' images included).
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return files, [-1] * len(files), []
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SelfsupError(f"{root} holds no images and no class folders; expected {root}/<class>/<image> "
                           f"or the images themselves in {root}")
    files, labels = [], []
    for index, name in enumerate(classes):
        members = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not members:
            raise SelfsupError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                               "remove it or add images")
        files += members
        labels += [index] * len(members)
    return files, labels, classes


def decode_images(files: list[Path | BinaryIO], size: int, channels: int = 3, threads: int = 8
                  ) -> Iterator[np.ndarray | Exception]:
    """:func:`decode_image` of every file (or in-memory file) in order, in a thread pool (Pillow releases
    the GIL while decoding); one that cannot be decoded yields its exception instead of stopping the rest."""
    def decode(path: Path | BinaryIO) -> np.ndarray | Exception:
        try:
            return decode_image(path, size, channels)
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
            return err

    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(decode, files)


def check_fits_in_memory(count: int, size: int, source: str, channels: int = 3) -> None:
    """Refuse, before decoding anything, a set whose decoded pixels would not fit in the memory the
    system has available (they are held twice while the decoded images are stacked)."""
    needed, available = count * channels * size * size, available_memory()
    if available is not None and 2 * needed > available:
        raise SelfsupError(f"{source}: {count} images decoded at {size} px take {human_bytes(needed)}, twice that "
                           f"while they are stacked, and {human_bytes(available)} of memory is available; selfsup "
                           "holds them in memory with data.source=memory: stream the files instead (data.source=stream, "
                           "pretraining), decode them once to disk (data.source=cache, selfsup data cache), or lower "
                           "data.image_size (memory grows with its square)")


def read_image_folder(root: Path, size: int, skip_bad: bool = False, quiet: bool = False,
                      threads: int = 8) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode every image once."""
    files, labels, classes = list_image_folder(root)
    check_fits_in_memory(len(files), size, str(root))
    images, kept, skipped = [], [], []
    results = decode_images(files, size, threads=threads)
    for path, label, result in tqdm(zip(files, labels, results), total=len(files), disable=quiet,
                                    desc=f"decoding {root.name}", unit="img"):
        if isinstance(result, Exception):
            if not skip_bad:
                raise SelfsupError(f"cannot decode image {path}: {undecodable(result)}. Fix or remove the file, or set "
                                   "data.skip_bad=true to skip undecodable images")
            skipped.append(str(path))
            continue
        images.append(result)
        kept.append(label)
    if not images:
        raise SelfsupError(f"no image in {root} could be decoded")
    return np.stack(images), np.asarray(kept, dtype=np.int64), classes, skipped


# ---------------------------------------------------------------- tensors (.npz / .pt)

def read_tensor_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """``images`` (N, H, W), (N, H, W, C) or (N, C, H, W), optional ``targets`` and ``classes``."""
    if not path.is_file():
        raise SelfsupError(f"tensor file {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                content = {key: archive[key] for key in archive.files}
        elif path.suffix in (".pt", ".pth"):
            loaded = read_weights_only(path, "tensor file", "Save a dict of tensors: torch.save({'images': uint8 "
                                       "images, 'targets': labels, 'classes': names}, path), or numpy's savez.")
            if not isinstance(loaded, dict):
                raise SelfsupError(f"{path}: expected a dict with 'images' (and 'targets'), got {type(loaded).__name__}")
            content = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in loaded.items()}
        else:
            raise SelfsupError(f"{path}: tensor files must end in .npz, .pt or .pth")
    except SelfsupError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy/torch raise many types for bad files
        raise SelfsupError(f"cannot read tensor file {path}: {err}") from err
    if "images" not in content:
        raise SelfsupError(f"{path} has no 'images' entry (it has: {', '.join(content) or 'nothing'})")
    images = np.asarray(content["images"])
    if images.dtype != np.uint8:
        raise SelfsupError(f"{path.name}: images must be uint8 (0-255), got {images.dtype}; "
                           "convert with (x * 255).round().astype(np.uint8)")
    images = to_nchw(images, path)
    targets = content.get("targets")
    if targets is not None:
        targets = np.asarray(targets).astype(np.int64).reshape(-1)
        if len(targets) != len(images):
            raise SelfsupError(f"{path}: {len(targets)} targets for {len(images)} images")
    classes = content.get("classes")
    return images, targets, [str(c) for c in classes] if classes is not None else None


def to_nchw(images: np.ndarray, source: Path) -> np.ndarray:
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise SelfsupError(f"{source}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in (1, 3); "
                       f"got shape {images.shape}")
