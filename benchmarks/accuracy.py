"""Does speed cost accuracy? Short Fashion-MNIST SimCLR runs, side by side, over seeds.

Variants, all through the production trainer with the demo recipe (configs/demo.yaml):
  * fp32            batched kornia views on the device, fp32
  * bf16            batched kornia views on the device, bf16 autocast + channels_last
  * bf16-per-image  the classic pipeline instead: torchvision transforms applied image by
                    image (same crop, flip and jitter parameters), bf16
Each run is evaluated with the weighted kNN (k=200, T=0.07) on the full test set with the
full training set as the bank; mean +- std over seeds is reported.

    python benchmarks/accuracy.py                        # 10k images x 3 epochs, seeds 0 1
    python benchmarks/accuracy.py --subset 2000 --epochs 1 --seeds 0   # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.recipes.evaluate import checkpoint_evaluator
from selfsup.recipes.pretrain import Pretraining

ROOT = Path(__file__).resolve().parents[1]


class PerImageViews(nn.Module):
    """Two views made the classic way: a torchvision pipeline called once per image."""

    def __init__(self, views: dict, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__()
        views = views["augment"]
        brightness, contrast, saturation, hue = views["jitter"]
        self.transform = v2.Compose([
            v2.RandomResizedCrop(image_size, scale=views["crop_scale"], ratio=views["crop_ratio"], antialias=True),
            v2.RandomHorizontalFlip(views["flip_p"]),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation or None, hue or None)],
                           p=views["jitter_p"]),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        cpu = images.cpu()
        return [torch.stack([self.transform(image) for image in cpu]).to(images.device) for _ in range(2)]


def run_variant(name: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    precision = "fp32" if name == "fp32" else "bf16"
    overrides = [f"train.precision={precision}", f"train.channels_last={'false' if precision == 'fp32' else 'true'}",
                 f"train.seed={seed}", f"train.epochs={args.epochs}", f"data.subset={args.subset}",
                 "train.knn_every=1"]
    config = resolve(apply_overrides(read_yaml(find_config("demo")), overrides))
    run_dir = out / f"{name}-seed{seed}"
    run = Pretraining(config, run_dir, resume=True, quiet=True)
    if name == "bf16-per-image":
        run.method.views = PerImageViews(config.views, run.data_info.image_size, run.data_info.mean,
                                         run.data_info.std)
    started = time.perf_counter()
    summary = run.fit()
    minutes = (time.perf_counter() - started) / 60
    evaluator, _ = checkpoint_evaluator(run_dir, quiet=True)
    knn = evaluator.knn(config.eval.knn_k, config.eval.knn_temperature)["top1"]
    return {"variant": name, "seed": seed, "knn_top1": knn, "train_minutes": round(minutes, 2),
            "img_per_s": summary["img_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16-per-image"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "accuracy"))
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for seed in args.seeds:  # seeds outermost: variants alternate, so drift in machine load is shared
        for name in args.variants:
            rows.append(run_variant(name, seed, args, out))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for name in args.variants:
        values = [r["knn_top1"] for r in rows if r["variant"] == name]
        summary[name] = {"mean": round(statistics.mean(values), 2),
                         "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                         "img_per_s": round(statistics.mean(r["img_per_s"] for r in rows if r["variant"] == name), 1)}
    report = {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": describe_device(torch.device("cpu")), "versions": library_versions(),
              "subset": args.subset, "epochs": args.epochs, "runs": rows, "summary": summary}
    (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']}: SimCLR demo recipe, {args.subset} images x {args.epochs} epochs, "
          f"seeds {args.seeds}\n| variant | kNN top-1 (%) mean | std | train img/s |\n|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['mean']:.2f} | {row['std'] if row['std'] is not None else '-'} | {row['img_per_s']} |")


if __name__ == "__main__":
    main()
