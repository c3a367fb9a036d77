"""Pretext (Jigsaw, Rotation) vs invariance (NPID, PIRL): kNN, linear and layer-wise probes.

The experiment of issue 3 and of the PIRL paper's Fig. 5: the same backbone and budget for
every method on Fashion-MNIST, then

  * weighted kNN (k=200, T=0.07) and the linear probe on the final features (full splits),
  * the layer-wise probe: linear classifiers on conv1, res2 .. res5 pooled to ~2048 features,
    all methods in one chart.

Each method keeps its preset's recipe (configs/<method>_fashion_mnist.yaml: optimiser,
batch size, views, heads, image size: 48 px so that 3x3 tiles are 12-13 px and never touch);
the budget (images x epochs) and the backbone are shared, set here. Tile-trained trunks have
their BatchNorm statistics re-estimated on full training images before every probe (the
evaluation default for them); the layer probe runs at several pooled sizes. Results go to
benchmarks/out/layerwise/ and the charts to benchmarks/layerwise-fashion-mnist*.png.

    python benchmarks/layerwise.py                                   # 10k images x 4 epochs, 48 px
    python benchmarks/layerwise.py --subset 2000 --epochs 1 --probe-train 2000 --dims 2048   # smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

import torch

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.eval.layers import layers_table
from selfsup.recipes.evaluate import checkpoint_evaluator, layers_for_checkpoints
from selfsup.recipes.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["jigsaw", "rotation", "npid", "pirl"])
    parser.add_argument("--subset", type=int, default=10000, help="class-balanced training images for pretraining")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=32, help="ResNet-18 width (64 = standard)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override the presets' image size (48 px: 3x3 tiles of 12-13 px that never touch)")
    parser.add_argument("--probe-train", type=int, default=10000,
                        help="training images for the layer probes and the kNN / linear evaluation")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 1024, 4096],
                        help="pooled sizes of the layer probe (the first is the main chart)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "layerwise"))
    args = parser.parse_args()
    out = Path(args.out)
    shared = [f"data.subset={args.subset}", f"train.epochs={args.epochs}", f"backbone.width={args.width}",
              "train.knn_every=0", "train.online_probe=false", f"train.device={args.device}", f"eval.train_images={args.probe_train}"]
    if args.image_size is not None:
        shared.append(f"data.image_size={args.image_size}")
    rows, checkpoints = {}, []
    for method in args.methods:
        config = resolve(apply_overrides(read_yaml(find_config(f"{method}_fashion_mnist")), shared))
        run_dir = out / method
        summary = pretrain(config, run_dir, resume=True, quiet=True)
        evaluator, config = checkpoint_evaluator(run_dir, quiet=True)  # BN recalibrated for tile methods
        results = evaluator.run(["knn", "linear"], config.eval, config.train.seed)[evaluator.name]
        rows[method] = {"knn_top1": results["knn"]["top1"], "linear_top1": results["linear"]["top1"],
                        "train_minutes": summary["train_minutes"], "img_per_s": summary["img_per_s"]}
        print(json.dumps({method: rows[method]}), flush=True)
        checkpoints.append(str(run_dir))
    layers, layers_dir = layers_for_checkpoints(checkpoints, [f"eval.train_images={args.probe_train}"],
                                                out_dir=out / "layers", dims=tuple(args.dims), quiet=True)
    report = {"date": datetime.date.today().isoformat(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": describe_device(torch.device("cpu") if args.device == "cpu" or not torch.cuda.is_available()
                                         else torch.device("cuda")),
              "versions": library_versions(), "shared_overrides": shared, "methods": rows, "layers": layers}
    (out / "layerwise.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.copy(layers_dir / "layers.png", ROOT / "benchmarks" / "layerwise-fashion-mnist.png")
    if (layers_dir / "layers-dims.png").is_file():
        shutil.copy(layers_dir / "layers-dims.png", ROOT / "benchmarks" / "layerwise-fashion-mnist-dims.png")
    print(f"\n{report['machine']}; budget: {args.subset} images x {args.epochs} epochs, ResNet-18 width {args.width}, "
          f"{args.image_size or 'presets'} px\n| method | kNN top-1 | linear top-1 | train min |\n|---|---|---|---|")
    for method, row in rows.items():
        print(f"| {method} | {row['knn_top1']:.2f} | {row['linear_top1']:.2f} | {row['train_minutes']} |")
    print("\nlayer-wise linear probe (top-1 %):\n" + layers_table(layers))


if __name__ == "__main__":
    main()
