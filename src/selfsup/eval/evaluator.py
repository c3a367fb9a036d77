"""Protocols on the frozen features of one encoder (or of raw pixels), with a feature cache.

Features are extracted once per encoder and split and cached next to the results, so a second
protocol (or a linear probe with other settings) costs no forward passes. Results accumulate
in ``results.json`` and ``results.md`` of the output folder.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from ..arguments import Count, NonEmpty, NonNegative, Positive, PositiveInt, Range
from ..data import ImageDataset
from ..engine import checkpoint
from ..engine.runtime import pick_device, resolve_precision
from ..errors import SelfsupError
from ..models import prefers_channels_last
from ..files import read_json_record, write_json, write_text_atomic
from ..tables import markdown_table
from ..views import EvalView
from .calibrate import recalibrate_batchnorm
from .features import extract_features, pixel_features
from .fewshot import fewshot_accuracy
from .knn import KNN_CONVENTIONS, knn_accuracy, knn_grid
from .linear import linear_probe

PROTOCOLS = ("knn", "knn-grid", "linear", "fewshot")


@dataclass
class EvalConfig:
    """Evaluation protocols on frozen features (the ``eval`` section of a run config)."""

    train_images: PositiveInt | None = None
    """Evaluate with a class-balanced, seeded subset of this many labelled training images as the kNN
    bank and the linear probe's training set (None: all); the test split is always used whole."""
    knn_k: PositiveInt = 200
    knn_temperature: Positive = 0.07
    """NPID's weighted kNN: votes exp(cosine / T) of the k nearest training images."""
    knn_grid_k: Annotated[list[PositiveInt], NonEmpty()] = field(default_factory=lambda: [10, 20, 100, 200])
    knn_grid_temperatures: Annotated[list[Positive], NonEmpty()] = field(default_factory=lambda: [0.07])
    """The ``knn-grid`` protocol: every (k, T) from one neighbour search; the defaults are the
    conventions of DINO (k 10, 20, 100, 200) and solo-learn (k 20), at T = 0.07."""
    network: Literal["auto", "student", "teacher"] = "auto"
    """Which network of a method with a momentum teacher is evaluated and exported: auto is the
    paper's choice (DINO: the teacher, as its evaluation code reads it; MoCo and BYOL: the
    trained encoder, the student); student or teacher overrides it."""
    features: Literal["backbone", "embedding"] = "backbone"
    """backbone: pooled backbone features (every method, comparable); embedding: the method's own
    embedding (NPID/PIRL: the 128-d vectors the memory bank holds; SimCLR: the projection)."""
    bn_recalibration: bool | Literal["auto"] = "auto"
    """Re-estimate BatchNorm statistics on full training images before extracting features
    (auto: for methods whose trunk trained on tiles, patches or half-size images: jigsaw, context
    prediction, counting, PIRL, multi-task, Selfie). Uses no labels."""
    bn_recalibration_images: PositiveInt = 10000
    linear_solver: Literal["lbfgs", "sgd"] = "lbfgs"
    """lbfgs: full-batch on the cached features; sgd: mini-batches, for feature sets too large for that."""
    linear_max_iter: PositiveInt = 300
    """L-BFGS iterations."""
    linear_epochs: PositiveInt = 100
    """SGD passes over the cached features."""
    linear_weight_decays: Annotated[list[NonNegative], NonEmpty()] = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3])
    """Chosen on a held-out 10% of the training set, then refit on all of it."""
    batch_size: PositiveInt = 512
    fewshot_ways: Annotated[int, Range(2)] = 5
    fewshot_shots: Annotated[list[PositiveInt], NonEmpty()] = field(default_factory=lambda: [1, 5])
    fewshot_queries: PositiveInt = 15
    """Query images per class in every episode."""
    fewshot_episodes: PositiveInt = 600
    fewshot_classes: list[Count] | None = None
    """Classes the episodes are drawn from, on the test split (the held-out classes of an
    encoder trained with labels); None: all of them."""


def fingerprint(dataset: ImageDataset) -> str:
    """A short digest of which images a set holds (its labels, classes, the store rows it is made of and
    64 of its images, spread over it, read alone): two sets of one size, e.g. other classes of one
    dataset, never share cached features."""
    step = max(1, len(dataset) // 64)
    digest = hashlib.sha1(dataset.targets.cpu().numpy().tobytes())
    digest.update("\n".join(dataset.classes).encode("utf-8", "surrogateescape"))
    if dataset.rows is not None:
        digest.update(dataset.rows.cpu().numpy().tobytes())
    digest.update(dataset.pixels(torch.arange(0, len(dataset), step)).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Evaluator:
    """Features of one encoder for the train and test sets, and the protocols on them.

    ``encoder`` None evaluates raw pixels. ``encode`` replaces ``encoder(x)`` (a method's
    ``embed``). ``recalibrate`` > 0 re-estimates BatchNorm statistics on that many training
    images first (see :mod:`selfsup.eval.calibrate`).
    """

    def __init__(self, name: str, train: ImageDataset, test: ImageDataset, view: EvalView, out_dir: Path,
                 encoder: nn.Module | None = None, *, device: str = "auto", precision: str = "auto",
                 cache_key: dict | None = None, batch_size: int = 512, recalibrate: int = 0, seed: int = 0,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None, about: dict | None = None,
                 quiet: bool = False) -> None:
        self.name, self.train, self.test, self.view, self.out_dir = name, train, test, view, out_dir
        self.about = about
        self.encoder, self.encode, self.cache_key = encoder, encode, cache_key
        self.batch_size, self.recalibrate, self.seed, self.quiet = batch_size, recalibrate, seed, quiet
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = prefers_channels_last(encoder)
        self._features: dict[str, torch.Tensor] = {}
        self._calibrated = False

    def features(self, split: str) -> torch.Tensor:
        if split not in self._features:
            dataset = self.train if split == "train" else self.test
            self._features[split] = (pixel_features(dataset.images, self.view) if self.encoder is None
                                     else self._cached(split, dataset))
        return self._features[split]

    def _cached(self, split: str, dataset: ImageDataset) -> torch.Tensor:
        key = {**(self.cache_key or {}), "split": split, "images": len(dataset),
               "image_shape": [dataset.channels, dataset.image_size, dataset.image_size],
               "data": fingerprint(dataset), "recalibrate": self.recalibrate,
               "recalibrated_on": fingerprint(self.train) if self.recalibrate else None,
               "features": "embedding" if self.encode is not None else "encoder"}
        path = self.out_dir / "features" / f"{(self.cache_key or {}).get('stem', 'encoder')}-{split}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached.get("key") == key:
                    return cached["features"]
            except Exception:  # noqa: BLE001 - a bad cache is recomputed, never trusted
                pass
        self.encoder.to(self.device)
        options = dict(autocast_dtype=self.precision.dtype, channels_last=self.channels_last)
        if self.recalibrate and not self._calibrated:
            recalibrate_batchnorm(self.encoder, self.train.images, self.view, count=self.recalibrate,
                                  batch_size=self.batch_size, seed=self.seed, encode=self.encode,
                                  desc=None if self.quiet else "BatchNorm recalibration", **options)
            self._calibrated = True
        features = extract_features(self.encoder, dataset.images, self.view.to(self.device),
                                    batch_size=self.batch_size, encode=self.encode,
                                    desc=None if self.quiet else f"features {split}", **options)
        if self.cache_key is not None:
            checkpoint.save_atomic({"key": key, "features": features}, path)
        return features

    def knn(self, k: int = 200, temperature: float = 0.07) -> dict[str, Any]:
        top1 = knn_accuracy(self.features("train"), self.train.targets, self.features("test"), self.test.targets,
                            len(self.train.classes), k, temperature)
        return {"top1": round(top1, 2), "k": k, "temperature": temperature, "settings": f"k={k}, T={temperature}"}

    def knn_grid(self, ks: list[int], temperatures: list[float]) -> dict[str, dict[str, Any]]:
        """The weighted kNN at every (k, T) from one search: entries ``knn k=K, T=T`` (the conventions
        of DINO and solo-learn side by side: :data:`~selfsup.eval.knn.KNN_CONVENTIONS`)."""
        found = knn_grid(self.features("train"), self.train.targets, self.features("test"), self.test.targets,
                         len(self.train.classes), ks, temperatures)
        return {f"knn k={k}, T={t:g}": {"top1": round(top1, 2), "k": k, "temperature": t,
                                        "settings": f"k={k}, T={t:g}" + (f" ({KNN_CONVENTIONS[k]})" if k in
                                                                        KNN_CONVENTIONS and t == 0.07 else "")}
                for (k, t), top1 in found.items()}

    def linear(self, cfg: EvalConfig, seed: int = 0) -> dict[str, Any]:
        result = linear_probe(self.features("train"), self.train.targets, self.features("test"), self.test.targets,
                              len(self.train.classes), cfg.linear_weight_decays, solver=cfg.linear_solver,
                              max_iter=cfg.linear_max_iter, epochs=cfg.linear_epochs, seed=seed)
        result["top1"] = round(result["top1"], 2)
        result["settings"] = f"{cfg.linear_solver}, wd={result['weight_decay']:g} (chosen on 10% held out)"
        return result

    def fewshot(self, cfg: EvalConfig, seed: int = 0) -> dict[str, dict[str, Any]]:
        """N-way K-shot episodes on the test split's features (one entry per K), nearest centroid."""
        results = {}
        classes = cfg.fewshot_classes
        names = "all classes" if classes is None else "classes " + ", ".join(self.test.classes[c] for c in classes)
        for shots in cfg.fewshot_shots:
            result = fewshot_accuracy(self.features("test"), self.test.targets, cfg.fewshot_ways, shots,
                                      cfg.fewshot_queries, cfg.fewshot_episodes, seed, classes)
            result = {k: round(v, 2) for k, v in result.items()}
            result["settings"] = (f"+- {result['ci95']:.2f} (95%), {result['episodes']} episodes, "
                                  f"{cfg.fewshot_queries} queries per class, nearest centroid, test split, {names}")
            results[f"{cfg.fewshot_ways}-way {shots}-shot"] = result
        return results

    def run(self, protocols: list[str], cfg: EvalConfig, seed: int = 0) -> dict[str, dict]:
        results: dict[str, dict] = {}
        for protocol in protocols:
            if protocol == "knn":
                entries = {"knn": self.knn(cfg.knn_k, cfg.knn_temperature)}
            elif protocol == "linear":
                entries = {"linear": self.linear(cfg, seed)}
            elif protocol == "fewshot":
                entries = self.fewshot(cfg, seed)
            elif protocol == "knn-grid":
                entries = self.knn_grid(cfg.knn_grid_k, cfg.knn_grid_temperatures)
            else:
                raise SelfsupError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
            if self.recalibrate:
                images = min(self.recalibrate, len(self.train))
                for entry in entries.values():
                    entry["settings"] += f"; BN recalibrated on {images} train images"
            results.update(entries)
        return record(self.out_dir, self.name, results, self.about)


ABOUT = "about"
"""The key of an entry's structured description in ``results.json`` (what was evaluated: the
checkpoint, its step, the network, the features), beside its protocols; the display name is
never parsed back."""


def record(out_dir: Path, name: str, results: dict[str, dict], about: dict | None = None) -> dict:
    """Merge ``results`` for encoder ``name`` (and its ``about`` fields) into ``out_dir/results.json``
    and rewrite ``results.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    everything = read_json_record(path)
    everything.setdefault(name, {}).update(results)
    if about is not None:
        everything[name][ABOUT] = about
    write_json(path, everything)
    write_text_atomic(out_dir / "results.md", results_table(everything) + "\n")
    return everything


def results_table(results: dict) -> str:
    """Markdown table of evaluation results ``{name: {protocol: {top1, ...}}}``."""
    rows = []
    for name, protocols in results.items():
        for protocol, result in protocols.items():
            if protocol == ABOUT:
                continue
            rows.append({"features": name, "protocol": protocol, "top-1 (%)": round(result["top1"], 2),
                         "settings": result.get("settings", "")})
    return markdown_table(rows, ["features", "protocol", "top-1 (%)", "settings"])
