"""Multi-task learning at CPU scale: Fashion-MNIST class + coarse grouping (or + rotation), every sharing
and weighting against each task trained alone.

ResNet-18 of ``--width`` from random initialisation on a class-balanced ``--images`` training
images, ``--epochs`` epochs of batch 256, SGD 0.1 with cosine decay; test top-1 of every task on
the 10,000 test images (rotation: each at all four turns). One seed. Finished runs are read
back, interrupted ones resumed.

    python benchmarks/multitask.py                          # ~12 min on 2 CPU cores
    python benchmarks/multitask.py --tasks class rotation
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import pick_device, provenance, resolve_precision
from selfsup.learners.multitask import SHARING, WEIGHTING
from selfsup.recipes.classifier import ClassifierTraining
from selfsup.recipes.loading import StartingPoint
from selfsup.recipes.multitask import MultiTaskSettings, multitask_comparison
from selfsup.files import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["class", "coarse"])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "multitask"))
    args = parser.parse_args()
    config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")), [f"backbone.width={args.width}"]))
    start = StartingPoint.load(None, config, seed=0, quiet=True)
    train = start.splits.train
    start.splits = dataclasses.replace(start.splits, train=train.select(train.balanced_index(args.images, 0)))
    training = ClassifierTraining.for_strategy("multitask", epochs=args.epochs, backbone_lr_scale=1.0,
                                               device=args.device)
    out = Path(args.out) / "-".join(args.tasks)
    result = multitask_comparison(start, out, training, MultiTaskSettings(tasks=args.tasks), sharings=list(SHARING),
                                  weightings=list(WEIGHTING), quiet=True)
    device = pick_device(args.device)
    report = {**provenance(device, resolve_precision("auto", device)), "rows": result["rows"]}
    write_json(out / "benchmark.json", report)
    print(json.dumps(report, indent=1))
    print((out / "multitask.md").read_text())


if __name__ == "__main__":
    main()
