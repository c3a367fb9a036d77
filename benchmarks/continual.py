"""Continual learning on split Fashion-MNIST (5 tasks of 2 classes): every strategy, task- and class-incremental.

Two starting points: a ResNet-18 of ``--width`` at random initialisation, and (``--checkpoint``,
when it exists) section 10's SimCLR encoder (ResNet-18 width 16, run ``benchmarks/simclr_v2.py``
first), its trunk at 1/10 of the head's rate. Each task trains ``--epochs`` passes over its
12,000 images (rehearsal: plus the replayed buffer; joint: every image seen so far), SGD at
``--lr`` (batch 256, cosine per task), and the accuracy matrix is measured on the 10,000 test
images after every task. One seed. Interrupted runs resume where they were.

    python benchmarks/continual.py                # ~25 min on 2 CPU cores (random init, w8, 2 epochs/task)
    python benchmarks/continual.py --start simclr --epochs 1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.defaults import TRAINING_DEFAULTS
from selfsup.engine.runtime import pick_device, provenance, resolve_precision
from selfsup.recipes.classifier import ClassifierTraining
from selfsup.recipes.continual import STRATEGIES, ContinualSettings, continual
from selfsup.recipes.loading import StartingPoint
from selfsup.files import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", choices=["random", "simclr"], default="random")
    parser.add_argument("--checkpoint", default=str(ROOT / "benchmarks" / "out" / "simclr_v2" / "pretrain"))
    parser.add_argument("--width", type=int, default=8, help="ResNet-18 width of the random initialisation")
    parser.add_argument("--epochs", type=int, default=2, help="passes over each task's training images")
    parser.add_argument("--lr", type=float, default=TRAINING_DEFAULTS["continual"].lr)
    parser.add_argument("--buffer-size", type=int, default=200)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "continual"))
    args = parser.parse_args()
    if args.start == "random":
        config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")),
                                         [f"backbone.width={args.width}"]))
        start = StartingPoint.load(None, config, seed=0, quiet=True)
        trunk_scale, name = 1.0, f"random-w{args.width}-e{args.epochs}"
    else:
        start = StartingPoint.load(args.checkpoint, None, quiet=True)
        trunk_scale, name = 0.1, f"simclr-e{args.epochs}"
    training = ClassifierTraining.for_strategy("continual", epochs=args.epochs, lr=args.lr, backbone_lr_scale=trunk_scale,
                                               device=args.device)
    out = Path(args.out) / name
    result = continual(start, out, training, strategies=args.strategies, scenarios=["task", "class"],
                       settings=ContinualSettings(buffer_size=args.buffer_size), quiet=True)
    device = pick_device(args.device)
    report = {**provenance(device, resolve_precision("auto", device)), "source": start.source,
              "summary": result["summary"]}
    write_json(out / "benchmark.json", report)
    print(json.dumps(report, indent=1))
    print((out / "continual.md").read_text())


if __name__ == "__main__":
    main()
