"""Every method of the registry on Fashion-MNIST with the same backbone and the same time budget.

Each method keeps its preset's recipe (configs/<method>_fashion_mnist.yaml: optimiser, batch
size, views, heads, image size), and all share the backbone (ResNet-18 of ``--width`` with the
small stem; DINO's ViT preset is switched to it too; MaskFeat, which masks ViT patches, and
DINO again run on ViT-tiny with 4 px patches, next to a random-init ViT) and ``--minutes`` of pretraining, timed
by the run itself (``train.minutes``: set-up included). Each pretraining runs in its own
process, so its peak memory (max RSS) is its own. Then weighted kNN (k=200, T=0.07) and the
linear probe on a class-balanced subset of ``--eval-train`` training images and the full test
set, next to two floors: raw pixels and the same backbone at random initialisation.

    python benchmarks/compare.py                              # 2 min each, width 16
    python benchmarks/compare.py --methods simclr moco --minutes 0.5   # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from ladder import VIT_ONLY, child
from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.eval import Evaluator
from selfsup.methods import METHODS
from selfsup.recipes.evaluate import checkpoint_evaluator, evaluation_splits, pixel_evaluator
from selfsup.views import EvalView

ROOT = Path(__file__).resolve().parents[1]
VIT = ["backbone.name=vit_tiny", "backbone.width=64", "backbone.patch_size=4", "backbone.registers=0"]  # width: unused


def pretrain_in_child(method: str, overrides: list[str], run_dir: Path) -> dict:
    """``selfsup pretrain`` in a child process; its summary plus the child's peak RSS in MiB."""
    _, peak = child(["pretrain", "-c", f"{method}_fashion_mnist", "--run-dir", str(run_dir), "--quiet",
                     *[arg for value in overrides for arg in ("--set", value)]])
    return json.loads((run_dir / "summary.json").read_text()) | {"peak_rss_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=[m for m in METHODS if m not in VIT_ONLY],
                        help="methods on the ResNet-18 (default: all but the ViT-only ones)")
    parser.add_argument("--vit-methods", nargs="*", default=["maskfeat", "dino"],
                        help="methods also run on ViT-tiny (4 px patches), next to a random-init ViT floor")
    parser.add_argument("--minutes", type=float, default=2.0, help="pretraining budget per method")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = standard)")
    parser.add_argument("--eval-train", type=int, default=5000, help="training images for kNN and the linear probe")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "compare"))
    args = parser.parse_args()
    out = Path(args.out)
    shared = [f"train.minutes={args.minutes}", "train.epochs=1000", "train.knn_every=0", "train.online_probe=false",
              "optim.warmup_epochs=0.02",
              "backbone.name=resnet18", f"backbone.width={args.width}", "backbone.patch_size=null",
              "backbone.registers=0", "backbone.drop_path=0.0", f"train.device={args.device}",
              f"eval.train_images={args.eval_train}"]
    rows: dict[str, dict] = {}
    floors_config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")), shared))
    pixels = pixel_evaluator(floors_config, out / "pixels", quiet=True)
    rows["raw pixels"] = pixels.run(["knn", "linear"], floors_config.eval, 0)["raw pixels"]
    splits = evaluation_splits(floors_config, quiet=True)
    mean, std = splits.train.stats()
    floors = [("random init", floors_config)]
    if args.vit_methods:
        floors.append(("random init (vit_tiny)", resolve(apply_overrides(floors_config.to_dict(), VIT))))
    for floor, config in floors:
        torch.manual_seed(0)
        random_init = config.backbone.build(splits.train.channels, splits.train.image_size)
        evaluator = Evaluator(floor, splits.train, splits.test, EvalView(splits.train.image_size, mean, std),
                              out / floor.replace(" ", "-").replace("(", "").replace(")", ""), random_init,
                              device=args.device, quiet=True)
        rows[floor] = evaluator.run(["knn", "linear"], config.eval, 0)[floor]
    for floor in ["raw pixels"] + [name for name, _ in floors]:
        rows[floor] = {"knn_top1": rows[floor]["knn"]["top1"], "linear_top1": rows[floor]["linear"]["top1"]}
        print(json.dumps({floor: rows[floor]}), flush=True)

    runs = [(method, method, shared) for method in args.methods]
    runs += [(f"{method} (vit_tiny)", method, shared + VIT) for method in args.vit_methods]
    for name, method, overrides in runs:
        run_dir = out / name.replace(" (vit_tiny)", "-vit")
        summary = pretrain_in_child(method, overrides, run_dir)
        evaluator, config = checkpoint_evaluator(run_dir, quiet=True)
        results = evaluator.run(["knn", "linear"], config.eval, config.train.seed)[evaluator.name]
        rows[name] = {"knn_top1": results["knn"]["top1"], "linear_top1": results["linear"]["top1"],
                      "steps": summary["steps"], "img_per_s": summary["img_per_s"],
                      "train_minutes": summary["train_minutes"], "peak_rss_mib": summary["peak_rss_mib"],
                      "batch_size": config.train.batch_size, "image_size": config.data.image_size or 28}
        print(json.dumps({name: rows[name]}), flush=True)

    report = {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": describe_device(torch.device("cuda") if torch.cuda.is_available() and args.device != "cpu"
                                         else torch.device("cpu")),
              "versions": library_versions(), "shared_overrides": shared, "rows": rows}
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']}; {args.minutes} min of pretraining each, ResNet-18 width {args.width} "
          "(ViT-tiny where marked)\n")
    print("| method | kNN top-1 | linear top-1 | steps x batch | img/s | peak RSS (MiB) |\n|---|---|---|---|---|---|")
    for name, row in sorted(rows.items(), key=lambda item: "steps" not in item[1]):
        if "steps" in row:
            print(f"| {name} ({row['image_size']} px) | {row['knn_top1']:.2f} | {row['linear_top1']:.2f} | "
                  f"{row['steps']} x {row['batch_size']} | {row['img_per_s']} | {row['peak_rss_mib']} |")
        else:
            print(f"| {name} | {row['knn_top1']:.2f} | {row['linear_top1']:.2f} | | | |")


if __name__ == "__main__":
    main()
