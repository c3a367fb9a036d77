"""``selfsup eval``: run protocols on a checkpoint (or on raw pixels) and record the results.

Features are extracted once per checkpoint and split and cached next to the results, so a
second protocol (or a linear probe with other settings) costs no forward passes. Results
accumulate in ``results.json`` and ``results.md`` of the output folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint
from ..config import EvalConfig, RunConfig, apply_overrides, resolve
from ..data import ImageDataset, load_dataset
from ..errors import SelfsupError
from ..methods import build_method
from ..report import results_table
from ..runtime import pick_device, resolve_precision, write_json
from ..views import EvalView
from .features import extract_features, pixel_features
from .knn import knn_accuracy
from .linear import linear_probe

PROTOCOLS = ("knn", "linear")


def load_checkpoint_model(path: str | Path, overrides: list[str] = ()) -> tuple[nn.Module, RunConfig, dict]:
    """The trained method of a checkpoint, on the CPU, with the checkpoint's (overridden) config."""
    state = checkpoint.load(path)
    config = resolve(apply_overrides(state["config"], list(overrides)))
    checkpoint.check_compatible(state, config.to_dict())
    method = build_method(config, state["data"])
    checkpoint.load_weights(method, state["model"], state["path"])
    return method, config, state


def default_output_dir(checkpoint_path: Path) -> Path:
    """``RUN/eval`` for ``RUN/checkpoints/x.pt`` or ``RUN``; next to the file otherwise."""
    if checkpoint_path.is_dir():
        return checkpoint_path / "eval"
    if checkpoint_path.parent.name == "checkpoints":
        return checkpoint_path.parent.parent / "eval"
    return checkpoint_path.parent / f"{checkpoint_path.stem}-eval"


def labeled_splits(config: RunConfig, quiet: bool) -> tuple[ImageDataset, ImageDataset]:
    """Labelled training images (unlabeled parts dropped) and the test split of ``config.data``."""
    cfg = config.data
    common = dict(name=cfg.name, root=cfg.root, image_size=cfg.image_size, download=cfg.download,
                  skip_bad=cfg.skip_bad, quiet=quiet)
    # STL-10's train+unlabeled pretrains on 105k images; only its labelled part is evaluated.
    labelled_parts = "+".join(part for part in cfg.train_split.split("+") if part != "unlabeled") or "train"
    train = load_dataset(split=labelled_parts, **common)
    train = train.select((train.targets >= 0).nonzero().squeeze(1)) if (train.targets >= 0).any() else train
    test = load_dataset(split=cfg.test_split, **common)
    for split in (train, test):
        if not split.labeled:
            raise SelfsupError(f"{split.name} ({split.split}) has no labels: kNN and linear evaluation need them")
    return train, test


class Evaluator:
    """Features of one encoder (a checkpoint's backbone, or raw pixels) for the train and test sets."""

    def __init__(self, name: str, train: ImageDataset, test: ImageDataset, view: EvalView, out_dir: Path,
                 backbone: nn.Module | None = None, device: str = "auto", precision: str = "auto",
                 cache_key: dict | None = None, batch_size: int = 512, quiet: bool = False) -> None:
        self.name, self.train, self.test, self.view, self.out_dir = name, train, test, view, out_dir
        self.backbone, self.cache_key, self.batch_size, self.quiet = backbone, cache_key, batch_size, quiet
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self._features: dict[str, torch.Tensor] = {}

    def features(self, split: str) -> torch.Tensor:
        if split in self._features:
            return self._features[split]
        dataset = self.train if split == "train" else self.test
        if self.backbone is None:
            features = pixel_features(dataset.images, self.view)
        else:
            features = self._cached(split, dataset)
        self._features[split] = features
        return features

    def _cached(self, split: str, dataset: ImageDataset) -> torch.Tensor:
        key = {**(self.cache_key or {}), "split": split, "images": len(dataset),
               "image_shape": list(dataset.images.shape[1:])}
        path = self.out_dir / "features" / f"{self.cache_key['stem']}-{split}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached.get("key") == key:
                    return cached["features"]
            except Exception:  # noqa: BLE001 - a bad cache is recomputed, never trusted
                pass
        self.backbone.to(self.device)
        features = extract_features(
            self.backbone, dataset.images, self.view.to(self.device), batch_size=self.batch_size,
            autocast_dtype=self.precision.dtype, channels_last=getattr(self.backbone, "prefers_channels_last", False),
            desc=None if self.quiet else f"features {split}")
        checkpoint.save_atomic({"key": key, "features": features}, path)
        return features

    def knn(self, k: int = 200, temperature: float = 0.07) -> dict[str, Any]:
        top1 = knn_accuracy(self.features("train"), self.train.targets, self.features("test"), self.test.targets,
                            len(self.train.classes), k, temperature)
        return {"top1": round(top1, 2), "k": k, "temperature": temperature, "settings": f"k={k}, T={temperature}"}

    def linear(self, cfg: EvalConfig, seed: int = 0) -> dict[str, Any]:
        result = linear_probe(self.features("train"), self.train.targets, self.features("test"), self.test.targets,
                              len(self.train.classes), cfg.linear_weight_decays, solver=cfg.linear_solver,
                              max_iter=cfg.linear_max_iter, epochs=cfg.linear_epochs, seed=seed)
        result["top1"] = round(result["top1"], 2)
        result["settings"] = f"{cfg.linear_solver}, wd={result['weight_decay']:g} (chosen on 10% held out)"
        return result


def record(out_dir: Path, name: str, results: dict[str, dict]) -> dict:
    """Merge ``results`` for encoder ``name`` into ``out_dir/results.json`` and rewrite ``results.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything.setdefault(name, {}).update(results)
    write_json(path, everything)
    (out_dir / "results.md").write_text(results_table(everything) + "\n")
    return everything


def checkpoint_evaluator(path: str | Path, overrides: list[str] = (), out_dir: Path | None = None,
                         quiet: bool = False) -> tuple[Evaluator, RunConfig]:
    method, config, state = load_checkpoint_model(path, overrides)
    ckpt_path = Path(state["path"])
    out_dir = out_dir or default_output_dir(Path(path))
    train, test = labeled_splits(config, quiet)
    data = state["data"]
    view = EvalView(data["image_size"], data["mean"], data["std"])
    stat = ckpt_path.stat()
    key = {"stem": ckpt_path.stem, "checkpoint": str(ckpt_path.resolve()), "step": state["step"],
           "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    name = f"{config.method_name} ({ckpt_path.stem}, step {state['step']})"
    evaluator = Evaluator(name, train, test, view, out_dir, method.backbone, config.train.device,
                          config.train.precision, key, config.eval.batch_size, quiet)
    return evaluator, config


def pixel_evaluator(config: RunConfig, out_dir: Path, quiet: bool = False) -> Evaluator:
    """The raw-pixel baseline on the data of ``config`` (normalised with training-set statistics)."""
    train, test = labeled_splits(config, quiet)
    mean, std = train.stats()
    return Evaluator("raw pixels", train, test, EvalView(train.image_size, mean, std), out_dir, quiet=quiet)


def run_protocols(evaluator: Evaluator, protocols: list[str], cfg: EvalConfig, seed: int = 0) -> dict:
    results = {}
    for protocol in protocols:
        if protocol == "knn":
            results["knn"] = evaluator.knn(cfg.knn_k, cfg.knn_temperature)
        elif protocol == "linear":
            results["linear"] = evaluator.linear(cfg, seed)
        else:
            raise SelfsupError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
    return record(evaluator.out_dir, evaluator.name, results)


def layers_for_checkpoints(paths: list[str], overrides: list[str] = (), out_dir: Path | None = None, dim: int = 2048,
                           train_size: int | None = None, quiet: bool = False) -> tuple[dict, Path]:
    """``selfsup eval layers``: the layer-wise probe of each checkpoint, merged into one chart."""
    from .layers import probe_layers, record_layers

    everything: dict = {}
    out_dir = out_dir or default_output_dir(Path(paths[0]))
    for path in paths:
        evaluator, config = checkpoint_evaluator(path, overrides, out_dir, quiet)
        train = evaluator.train
        if train_size is not None:
            train = train.balanced_subset(train_size, seed=config.train.seed)
        name = evaluator.name
        if name in everything:  # two runs of one method: tell them apart by folder
            name = f"{name} [{Path(evaluator.cache_key['checkpoint']).parent.parent.name}]"
        results = probe_layers(name, evaluator.backbone, train, evaluator.test, evaluator.view, config.eval, dim=dim,
                               device=evaluator.device, autocast_dtype=evaluator.precision.dtype,
                               seed=config.train.seed, quiet=quiet)
        settings = {"checkpoint": evaluator.cache_key["checkpoint"], "pooled_dim": dim, "train_images": len(train),
                    "test_images": len(evaluator.test), "solver": config.eval.linear_solver}
        everything = record_layers(out_dir, name, results, settings)
    return everything, out_dir
