"""``selfsup embed`` and ``selfsup search``: an encoder's features for a folder of images (or a
dataset split) as an index, and nearest-neighbour search in it.

An index is a folder: ``embeddings.npy`` (N, D) float32 features as the encoder gives them,
and ``index.json`` with the N image paths (or ``dataset:split:row`` ids), the checkpoint, the
fingerprint of its encoder's weights, and the preprocessing. A query is embedded by the same
encoder and preprocessing; searching with another encoder is refused (its features live in
another space). Search is by cosine similarity, exact: faiss's ``IndexFlatIP`` when faiss is
installed, one matrix product in torch otherwise (the two agree; tests check it).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import figures
from ..data import DATASETS, USER_FORMATS, load_dataset
from ..data.formats import IMAGE_SUFFIXES, decode_image, decode_images, undecodable
from ..engine.checkpoint import run_dir_of
from ..engine.runtime import pick_device
from ..errors import SelfsupError
from ..files import write_atomic, write_text_atomic
from ..recipes.loading import load_features
from ..recipes.meta import RunMeta
from ..views import EvalView

INDEX_FILE, EMBEDDINGS_FILE = "index.json", "embeddings.npy"
BACKENDS = ("auto", "faiss", "torch")
INDEX_KEYS = ("paths", "dim", "checkpoint", "fingerprint", "source", "image_size", "channels")
TIE = 1e-5
"""Similarities this close are ties, broken by row (faiss and torch round differently in the last bits)."""


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 of the encoder's weights (names, shapes and values): equal iff the features are."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, sorted)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SelfsupError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images "
                           "or a dataset name")
    return files


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """(channels, size, size) uint8, preprocessed as for the index; a clear error for a bad file."""
    if path.is_dir():
        raise SelfsupError(f"{path} is a folder; the query is one image file (or a .npy vector)")
    try:
        return decode_image(path, size, channels)
    except FileNotFoundError:
        raise SelfsupError(f"image {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
        raise SelfsupError(f"cannot decode image {path} ({undecodable(err)}); give a PNG/JPEG/... image file") from None


@dataclass
class Encoder:
    """A checkpoint's features (as ``selfsup eval`` computes them: its encoder, or its method's own
    embedding where ``eval.features`` says so) with their preprocessing, on the device."""

    module: nn.Module
    encode: Callable[[torch.Tensor], torch.Tensor]
    view: EvalView
    meta: RunMeta
    fingerprint: str
    device: torch.device

    @classmethod
    def load(cls, checkpoint_path: str | Path, device: str = "auto") -> Encoder:
        module, encode, _, meta = load_features(checkpoint_path)
        target = pick_device(device)
        module = module.eval().to(target)
        return cls(module, encode or module, EvalView.of(meta.data).to(target), meta, encoder_fingerprint(module),
                   target)

    @property
    def image_size(self) -> int:
        return self.meta.data.image_size

    @property
    def channels(self) -> int:
        return self.meta.data.channels

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.view(images.to(self.device))).float().cpu()


def _embed_files(encoder: Encoder, files: list[Path], batch_size: int, strict: bool,
                 quiet: bool) -> tuple[torch.Tensor, list[str], list[dict[str, str]]]:
    """Features of the images that decode; the rest listed with the reason (or raised, ``strict``)."""
    features, kept, skipped = [], [], []
    with tqdm(total=len(files), desc="embedding", unit="img", disable=quiet) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images = []
            for path, result in zip(chunk, decode_images(chunk, encoder.image_size, encoder.channels)):
                if isinstance(result, Exception):
                    if strict:
                        raise SelfsupError(f"cannot decode image {path} ({undecodable(result)}). Fix or remove the file, or "
                                           "leave out --strict to skip undecodable images")
                    skipped.append({"path": str(path), "reason": undecodable(result)[:200]})
                    continue
                images.append(torch.from_numpy(result))
                kept.append(str(path))
            if images:
                features.append(encoder(torch.stack(images)))
            bar.update(len(chunk))
    if not features:
        raise SelfsupError(f"none of the {len(files)} images could be decoded (first: {skipped[0]['path']}: "
                           f"{skipped[0]['reason']})")
    return torch.cat(features), kept, skipped


def default_index_dir(checkpoint: str | Path, images: str) -> Path:
    """``RUN/embeddings/<images>`` for a run's checkpoint; ``<images>-embeddings`` otherwise."""
    name = Path(images).name or "images"
    run = run_dir_of(Path(checkpoint))
    return run / "embeddings" / name if run is not None else Path(f"{name}-embeddings")


def embed(checkpoint_path: str | Path, source: str, out_dir: str | Path, *, split: str = "test",
          root: str | None = None, batch_size: int = 256, strict: bool = False, device: str = "auto",
          quiet: bool = False) -> dict:
    """Embed a folder of images (recursively) or a dataset's split; write the index to ``out_dir``.

    Returns the index's metadata (``skipped`` lists the files that could not be decoded)."""
    if batch_size < 1:
        raise SelfsupError(f"--batch-size must be >= 1, got {batch_size}")
    encoder = Encoder.load(checkpoint_path, device)
    folder = Path(source).expanduser().resolve()
    skipped: list[dict[str, str]] = []
    if folder.is_dir():
        features, paths, skipped = _embed_files(encoder, list_images(folder), batch_size, strict, quiet)
        origin = {"folder": str(folder)}
    elif folder.exists():
        raise SelfsupError(f"{source} is a file; give a folder of images or a dataset name "
                           "(to find the neighbours of one image: selfsup search INDEX IMAGE)")
    elif source not in DATASETS and source not in USER_FORMATS:
        raise SelfsupError(f"{source} is neither a folder of images nor a dataset name (datasets: "
                           f"{', '.join(DATASETS)})")
    else:
        dataset = load_dataset(source, split, root=root, image_size=encoder.image_size, quiet=quiet)
        if dataset.channels != encoder.channels:
            raise SelfsupError(f"{source} ({split}) has {dataset.channels}-channel images, the encoder of "
                               f"{checkpoint_path} takes {encoder.channels}; use a checkpoint trained on such images")
        batches = dataset.images.split(batch_size)
        features = torch.cat([encoder(b) for b in tqdm(batches, desc="embedding", unit="batch", disable=quiet)])
        paths = [f"{source}:{split}:{row}" for row in range(len(dataset))]
        origin = {"dataset": source, "split": split, "root": root}
    bad = (~torch.isfinite(features).all(1)).nonzero().flatten().tolist()
    if bad:  # an index of NaN rows would answer every query with them
        raise SelfsupError(f"the encoder of {checkpoint_path} gives non-finite features for {len(bad)} of "
                           f"{len(paths)} images (the first: {paths[bad[0]]}); nothing was written. Its weights "
                           "or these images are broken")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / EMBEDDINGS_FILE, lambda handle: np.save(handle, features.numpy().astype(np.float32)))
    meta = {"format": "selfsup-index", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": encoder.meta.source, "step": encoder.meta.step, "method": encoder.meta.method,
            "features": "embedding" if encoder.encode is not encoder.module else "encoder",
            "fingerprint": encoder.fingerprint, "dim": int(features.shape[1]), "count": len(paths),
            "image_size": encoder.image_size, "channels": encoder.channels, "source": origin,
            "similarity": "cosine", "paths": paths, "skipped": skipped}
    write_text_atomic(out / INDEX_FILE, json.dumps(meta, indent=1) + "\n")
    return meta


def _faiss_flat(bank: np.ndarray):  # noqa: ANN202 - faiss.IndexFlatIP, or None without faiss
    try:
        import faiss
    except ImportError:
        return None
    flat = faiss.IndexFlatIP(bank.shape[1])
    flat.add(np.ascontiguousarray(bank))
    return flat


def _candidates(bank: np.ndarray, flat, queries: np.ndarray, k: int  # noqa: ANN001 - faiss index or None
                ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """For each query, its k nearest rows plus every row tied with the k-th (which the two backends
    would otherwise cut differently), exact: with faiss's ``flat`` index, else in torch. The ties
    are looked for only where the (k+1)-th nearest is within :data:`TIE` of the k-th."""
    wanted = min(k + 1, len(bank))
    if flat is not None:
        sims, rows = flat.search(np.ascontiguousarray(queries), wanted)

        def tied(i: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
            _, found_sims, found_rows = flat.range_search(np.ascontiguousarray(queries[i:i + 1]), threshold)
            return found_sims, found_rows.astype(np.int64)
        return _with_ties(sims, rows.astype(np.int64), k, tied), "faiss"
    similarity = torch.from_numpy(queries) @ torch.from_numpy(bank).T
    sims, rows = similarity.topk(wanted, dim=1)

    def tied(i: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        found = torch.nonzero(similarity[i] > threshold).squeeze(1)
        return similarity[i, found].numpy(), found.numpy()
    return _with_ties(sims.numpy(), rows.numpy(), k, tied), "torch"


def _with_ties(sims: np.ndarray, rows: np.ndarray, k: int, tied: Callable) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's first k candidates, or all rows above its k-th similarity less 2 TIE when the
    next one is that close (``tied(query, threshold)`` finds them)."""
    out = []
    for i in range(len(sims)):
        boundary = sims[i, k - 1]
        if sims.shape[1] > k and sims[i, k] >= boundary - TIE:
            out.append(tied(i, float(boundary) - 2 * TIE))
        else:
            out.append((sims[i, :k], rows[i, :k]))
    return out


@dataclass
class Index:
    """An index folder, read and checked."""

    directory: Path
    meta: dict
    embeddings: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> Index:
        path = Path(path)
        directory = path.parent if path.name in (INDEX_FILE, EMBEDDINGS_FILE) else path
        meta_path, data_path = directory / INDEX_FILE, directory / EMBEDDINGS_FILE
        if not meta_path.is_file() or not data_path.is_file():
            raise SelfsupError(f"{directory} is not an index ({INDEX_FILE} and {EMBEDDINGS_FILE} expected); "
                               "write one with: selfsup embed CHECKPOINT IMAGES --out DIR")
        try:
            meta = json.loads(meta_path.read_text())
            embeddings = np.load(data_path)
        except (json.JSONDecodeError, ValueError, OSError) as err:
            raise SelfsupError(f"the index in {directory} is damaged ({err}); write it again with selfsup embed") \
                from None
        if not isinstance(meta, dict) or meta.get("format") != "selfsup-index":
            raise SelfsupError(f"{meta_path} is not a selfsup index file; write one with selfsup embed")
        missing = [key for key in INDEX_KEYS if key not in meta]
        if missing or not isinstance(meta["paths"], list) or not isinstance(meta["source"], dict):
            raise SelfsupError(f"{meta_path} is damaged (missing or malformed: {', '.join(missing) or 'paths/source'}); "
                               "write the index again with selfsup embed")
        if embeddings.dtype.kind != "f" or not np.isfinite(embeddings).all():
            raise SelfsupError(f"the index in {directory} is damaged ({EMBEDDINGS_FILE} holds non-finite or "
                               "non-numeric values); write it again with selfsup embed")
        if embeddings.ndim != 2 or len(embeddings) != len(meta["paths"]) or embeddings.shape[1] != meta["dim"]:
            raise SelfsupError(f"the index in {directory} is inconsistent: {EMBEDDINGS_FILE} has shape "
                               f"{tuple(embeddings.shape)}, {INDEX_FILE} lists {len(meta['paths'])} paths of dim "
                               f"{meta['dim']}; write it again with selfsup embed")
        return cls(directory, meta, embeddings.astype(np.float32, copy=False))

    def encoder(self, checkpoint_path: str | Path | None = None, device: str = "auto") -> Encoder:
        """The index's encoder (or ``checkpoint_path``'s, which must be the same weights)."""
        path = checkpoint_path or self.meta["checkpoint"]
        if not Path(path).exists():
            raise SelfsupError(f"the checkpoint of index {self.directory} ({path}) no longer exists; pass "
                               "--checkpoint with a copy of it, or embed the images again")
        encoder = Encoder.load(path, device)
        if encoder.fingerprint != self.meta["fingerprint"]:
            raise SelfsupError(
                f"index {self.directory} was built from another encoder: {self.meta['checkpoint']} (step "
                f"{self.meta.get('step')}, fingerprint {self.meta['fingerprint'][:12]}) while {path} holds weights "
                f"{encoder.fingerprint[:12]} (step {encoder.meta.step}); their features are not comparable. "
                f"Search with the index's own checkpoint, or re-embed: selfsup embed {path} IMAGES --out NEW_INDEX")
        return encoder

    def search(self, queries: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
        """(M, D) queries -> (M, k) cosine similarities, (M, k) row indices, and the backend used."""
        if backend not in BACKENDS:
            raise SelfsupError(f"unknown search backend '{backend}'; choose from {', '.join(BACKENDS)}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.meta["dim"]:
            raise SelfsupError(f"the query has {queries.shape[1]} dimensions, index {self.directory} holds "
                               f"{self.meta['dim']}-dimensional embeddings of {self.meta['checkpoint']}; embed the "
                               "query with that encoder (give an image, not a vector of another model)")
        if k < 1:
            raise SelfsupError(f"-k must be >= 1, got {k}")
        if not np.isfinite(queries).all():  # NaN has no neighbours: faiss and torch would each rank it their way
            raise SelfsupError("the query holds non-finite values (NaN or inf); a query is a finite feature vector")
        k = min(k, len(self.embeddings))
        asked = F.normalize(torch.from_numpy(queries), dim=1).numpy()
        flat = None
        if backend in ("auto", "faiss"):
            flat = self._faiss
            if flat is None and backend == "faiss":
                raise SelfsupError("--backend faiss needs faiss: pip install faiss-cpu (or --backend torch, exact "
                                   "as well)")
        candidates, used = _candidates(self._bank, flat, asked, k)
        similarities, rows = np.zeros((len(asked), k), np.float32), np.zeros((len(asked), k), np.int64)
        for i, (sims, found) in enumerate(candidates):
            order = np.lexsort((found, -np.round(sims / TIE)))  # by similarity, ties by row: one answer
            similarities[i], rows[i] = sims[order[:k]], found[order[:k]]
        return similarities, rows, used

    @cached_property
    def _bank(self) -> np.ndarray:
        """The embeddings L2-normalised (cosine = inner product), once per index."""
        return F.normalize(torch.from_numpy(self.embeddings), dim=1).numpy()

    @cached_property
    def _faiss(self):  # noqa: ANN202 - built once per index; None without faiss
        return _faiss_flat(self._bank)

    def images(self, rows: list[int]) -> list[np.ndarray]:
        """The indexed images of ``rows`` (uint8 (C, H, W), preprocessed as when embedded)."""
        source = self.meta["source"]
        if "dataset" in source:
            dataset = load_dataset(source["dataset"], source["split"], root=source.get("root"),
                                   image_size=self.meta["image_size"], quiet=True)
            return [dataset.images[row].numpy() for row in rows]
        size, channels = self.meta["image_size"], self.meta["channels"]
        out = []
        for row in rows:
            try:
                out.append(decode_image(Path(self.meta["paths"][row]), size, channels))
            except Exception:  # noqa: BLE001 - moved or deleted since: a gray tile, the path still printed
                out.append(np.full((channels, size, size), 128, dtype=np.uint8))
        return out


def _short(name: str, width: int = 20) -> str:
    """The end of a long name (where file names differ), for captions."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


@dataclass
class SearchResult:
    paths: list[str]
    similarities: list[float]
    rows: list[int]
    backend: str
    sheet: Path | None


def search(index_path: str | Path, query: str | Path, k: int = 10, *, backend: str = "auto",
           checkpoint_path: str | Path | None = None, sheet: str | Path | None = None,
           device: str = "auto") -> SearchResult:
    """The ``k`` indexed images nearest ``query`` (an image file, or a ``.npy`` feature vector) and a
    contact sheet PNG (``sheet``; default ``INDEX/search-<query>.png``; none for a vector query)."""
    index = Index.load(index_path)
    query = Path(query)
    if query.suffix == ".npz":
        raise SelfsupError(f"{query} is a numpy archive; a query is an image file or one feature vector saved "
                           "with numpy.save (.npy)")
    if query.suffix == ".npy":
        if not query.is_file():
            raise SelfsupError(f"query vector {query} does not exist")
        try:
            vector, picture = np.load(query), None
        except (ValueError, OSError) as err:
            raise SelfsupError(f"{query} is not a readable .npy array ({err}); save one feature vector with "
                               "numpy.save") from None
        if vector.ndim == 2 and len(vector) == 1:
            vector = vector[0]
        if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.number):
            raise SelfsupError(f"{query} holds an array of shape {vector.shape}; a query is one feature vector "
                               f"(shape ({index.meta['dim']},))")
        vector = vector.reshape(1, -1)
    else:
        encoder = index.encoder(checkpoint_path, device)
        picture = read_image(query, encoder.image_size, encoder.channels)
        vector = encoder(torch.from_numpy(picture)[None]).numpy()
    similarities, rows, used = index.search(vector, k, backend)
    rows_list, sims = [int(r) for r in rows[0]], [float(s) for s in similarities[0]]
    paths = [index.meta["paths"][r] for r in rows_list]
    written = None
    if picture is not None:
        written = Path(sheet) if sheet else index.directory / f"search-{query.stem}.png"
        captions = [f"{rank}. {_short(Path(p).name)}\n{s:.3f}" for rank, (p, s) in enumerate(zip(paths, sims), 1)]
        figures.contact_sheet(written, picture, index.images(rows_list), captions, f"query\n{_short(query.name)}")
    return SearchResult(paths, sims, rows_list, used, written)
