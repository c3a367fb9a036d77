"""``selfsup eval``: the protocols of :mod:`selfsup.eval` on checkpoints (or on raw pixels).

The checkpoint's encoder (or its method's own embedding) comes from :mod:`.loading`, which
rebuilds it alone: heads, teachers and memory banks are neither built nor loaded.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import RunConfig
from ..data import Splits, load_splits
from ..engine import checkpoint
from ..eval import Evaluator
from ..methods import get_method
from ..models import trunk_of
from ..views import EvalView
from .loading import load_features


def default_output_dir(checkpoint_path: Path) -> Path:
    """``RUN/eval`` for ``RUN/checkpoints/x.pt`` or ``RUN``; next to the file otherwise."""
    run = checkpoint.run_dir_of(checkpoint_path)
    return run / "eval" if run is not None else checkpoint_path.parent / f"{checkpoint_path.stem}-eval"


def evaluation_splits(config: RunConfig, quiet: bool = False) -> Splits:
    """The labelled train split (a balanced subset when ``eval.train_images`` says so) and the test
    split, with the true labels: a network trained on noisy labels is evaluated on clean ones."""
    data = dataclasses.replace(config.data, label_noise=0.0)
    splits = load_splits(data, seed=config.train.seed, labeled=True, quiet=quiet)
    if config.eval.train_images is not None:
        splits.train = splits.train.balanced_subset(config.eval.train_images, config.train.seed)
    return splits


def recalibration_images(config: RunConfig) -> int:
    """How many training images BatchNorm statistics are re-estimated on before probing (0: none)."""
    setting = config.eval.bn_recalibration
    wanted = setting is True or (setting == "auto" and get_method(config.method_name).trains_on_tiles)
    return config.eval.bn_recalibration_images if wanted else 0


def checkpoint_evaluator(path: str | Path, overrides: list[str] = (), out_dir: Path | None = None,
                         quiet: bool = False) -> tuple[Evaluator, RunConfig]:
    """An :class:`Evaluator` of a checkpoint's encoder (or its method's embedding) on its dataset."""
    module, encode, config, meta = load_features(path, overrides)
    ckpt_path = meta.path
    embedding = encode is not None
    suffix = ", embedding" if embedding else ""
    splits = evaluation_splits(config, quiet)
    stat = ckpt_path.stat()
    key = {"stem": ckpt_path.stem + ("-embedding" if embedding else ""), "checkpoint": str(ckpt_path.resolve()),
           "step": meta.step, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    method = meta.encoder.method or config.method_name
    teacher = not embedding and meta.encoder.network == "teacher"
    if teacher:
        suffix = ", teacher"
        key["stem"] += "-teacher"  # its own feature cache: never the student's features under its name
    key["prefix"] = meta.encoder.prefix
    name = f"{method} ({ckpt_path.stem}, step {meta.step}{suffix})"
    about = {"method": method, "checkpoint": key["checkpoint"], "stem": ckpt_path.stem, "step": meta.step,
             "network": "teacher" if teacher else "student", "features": "embedding" if embedding else "backbone"}
    evaluator = Evaluator(name, splits.train, splits.test, EvalView.of(meta.data),
                          out_dir or default_output_dir(Path(path)), module, device=config.train.device,
                          precision=config.train.precision, cache_key=key, batch_size=config.eval.batch_size,
                          recalibrate=recalibration_images(config), seed=config.train.seed, encode=encode,
                          about=about, quiet=quiet)
    return evaluator, config


def pixel_evaluator(config: RunConfig, out_dir: Path, quiet: bool = False) -> Evaluator:
    """The raw-pixel baseline on the data of ``config`` (normalised with training-set statistics)."""
    splits = evaluation_splits(config, quiet)
    mean, std = splits.train.stats()
    return Evaluator("raw pixels", splits.train, splits.test, EvalView(splits.train.image_size, mean, std), out_dir,
                     quiet=quiet)


def layers_for_checkpoints(paths: list[str], overrides: list[str] = (), out_dir: Path | None = None,
                           dims: tuple[int, ...] = (2048,), train_size: int | None = None,
                           quiet: bool = False) -> tuple[dict, Path]:
    """``selfsup eval layers``: the layer-wise probe of each checkpoint, merged into one chart."""
    from ..eval.layers import probe_layers, record_layers

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
        backbone = trunk_of(evaluator.encoder)  # the trunk, whatever eval.features
        results = probe_layers(name, backbone, train, evaluator.test, evaluator.view, config.eval, dims=tuple(dims),
                               device=evaluator.device, autocast_dtype=evaluator.precision.dtype,
                               recalibrate=evaluator.recalibrate, seed=config.train.seed, quiet=quiet)
        settings = {"checkpoint": evaluator.cache_key["checkpoint"], "pooled_dims": list(dims),
                    "train_images": len(train),
                    "test_images": len(evaluator.test), "solver": config.eval.linear_solver,
                    "bn_recalibration_images": evaluator.recalibrate}
        everything = record_layers(out_dir, name, results, settings)
    return everything, out_dir
