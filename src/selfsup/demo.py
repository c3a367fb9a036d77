"""``selfsup demo`` / ``make demo``: the product in a few minutes on the machine at hand.

Pretrain SimCLR on Fashion-MNIST with a CPU-sized ResNet-18 (the ``demo`` preset), evaluate
its frozen features with the weighted kNN and the linear probe, and put them next to the same
protocols on raw pixels: the baseline any representation has to beat. The whole demo is sized
to a time budget (``--minutes``, 5 by default): the evaluation's cost is estimated from a
measured forward pass, the rest goes to pretraining, whose first steps are timed to size it.
"""
from __future__ import annotations

import time
from pathlib import Path
from time import perf_counter as clock

import torch

from .config import RunConfig, load_config
from .data import load_splits
from .engine import dist
from .engine.runtime import pick_device, resolve_precision
from .errors import SelfsupError
from .eval import results_table
from .explore import inspect_checkpoint
from .models import prefers_channels_last
from .recipes.evaluate import checkpoint_evaluator, pixel_evaluator
from .recipes.pretrain import pretrain
from .report import write_report

PROBE_SECONDS_PER_VALUE = 2e-6
"""Linear probe (L-BFGS over the penalty grid, then a refit) per training image and feature,
measured on a 2-core AVX2 CPU (60k x 256 features: 34 s; 60k x 784 pixels: 90 s with kNN).
Faster machines take less, which leaves the pretraining a little short of the budget: safe."""

MAP_SECONDS_PER_POINT = 0.012
"""The report's t-SNE per test image on the map (1,000 of them: about 10 s on a 2-core AVX2 CPU)."""


def estimate_evaluation_seconds(config: RunConfig) -> tuple[float, str]:
    """Seconds the demo's evaluation will take here (features of the train and test images, the
    probes on them and on pixels), from a timed forward pass of a fresh encoder."""
    splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=True)
    train = min(len(splits.train), config.eval.train_images or len(splits.train))
    images = train + len(splits.test)
    device = pick_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    encoder = config.backbone.build(splits.train.channels, splits.train.image_size).to(device).eval()
    layout = torch.channels_last if prefers_channels_last(encoder) else torch.contiguous_format
    encoder = encoder.to(memory_format=layout)
    batch = torch.randn(config.eval.batch_size, splits.train.channels, splits.train.image_size,
                        splits.train.image_size, device=device).contiguous(memory_format=layout)
    with torch.no_grad(), precision.autocast(device):
        encoder(batch)
        start = time.perf_counter()
        encoder(batch)
        seconds = time.perf_counter() - start
    per_second = config.eval.batch_size / seconds
    pixels = splits.train.channels * splits.train.image_size ** 2
    probes = PROBE_SECONDS_PER_VALUE * train * (encoder.num_features + pixels)
    total = images / per_second + probes + MAP_SECONDS_PER_POINT * min(1000, len(splits.test))
    return total, (f"{images} images at {per_second:.0f} img/s = {images / per_second / 60:.1f} min, "
                   f"probes about {probes / 60:.1f} min")


def run_demo(run_dir: str | Path, config_path: Path, overrides: list[str] = (), minutes: float | None = 5.0,
             quiet: bool = False) -> dict:
    """Pretrain, evaluate and compare within ``minutes`` (None or 0: the preset's epochs)."""
    started = clock()
    run_dir = Path(run_dir)
    config = load_config(config_path, overrides)
    resuming = (run_dir / "checkpoints" / "last.pt").is_file()
    if minutes and config.train.minutes is None and not resuming:
        evaluation, how = estimate_evaluation_seconds(config)
        training = minutes * 60 - evaluation - (clock() - started)
        if training < 0.2 * minutes * 60:
            raise SelfsupError(f"a {minutes:g} min demo leaves {training:.0f} s for pretraining once the evaluation "
                               f"(about {evaluation / 60:.1f} min here: {how}) is done; give it more --minutes")
        config.train.minutes = training / 60
        if not quiet:
            print(f"time budget {minutes:g} min: evaluation about {evaluation / 60:.1f} min ({how}), "
                  f"pretraining {training / 60:.1f} min")
    if not quiet:
        length = f"{config.train.minutes:.1f} min" if config.train.minutes else f"{config.train.epochs} epochs"
        print(f"selfsup demo: {config.method_name} on {config.data.name}, {config.backbone.name} "
              f"(width {config.backbone.width}), {length} -> {run_dir}\n"
              "An interrupted demo continues where it stopped; a finished one is only re-evaluated.")
    pretrain(config, run_dir, resume=True, quiet=quiet)
    evaluator, _ = checkpoint_evaluator(run_dir / "checkpoints" / "last.pt", quiet=quiet)
    evaluator.run(["knn", "linear"], config.eval, config.train.seed)
    results = pixel_evaluator(config, evaluator.out_dir, quiet).run(["knn", "linear"], config.eval, config.train.seed)
    inspection = inspect_checkpoint(run_dir / "checkpoints" / "last.pt", seed=config.train.seed, quiet=quiet)
    summary = write_report(run_dir, inspection)
    if dist.is_main():
        print("\n" + results_table(results) + "\n")
        budget = f" (budget {minutes:g} min)" if minutes else ""
        print(f"demo finished in {(clock() - started) / 60:.1f} min{budget}\n"
              f"report: {run_dir / 'report' / 'report.html'} (open it in a browser) and {summary}")
    return results
