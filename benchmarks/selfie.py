"""Selfie at CPU scale: its query variants, then its few-label experiment (Trinh et al. 2019, Sec. 3-4).

1. Variants: Selfie pretrained for ``--variant-epochs`` with the paper's query (u + position,
   dot products unscaled), with the products scaled by 1/sqrt(dim), and with the location
   added to u0 before the pooling (``method.query=pool``); each one's pretext accuracy (which
   masked patch goes where), kNN top-1 of P's pooled features, and whether u still depends on
   the image (its standard deviation over images).
2. Few labels: Selfie (the default variant) pretrained for ``--epochs`` on all 60,000 training
   images; then fine-tuned on class-balanced 5/10/20/100% of the labels over ``--seeds``
   seeds, next to the same ResNet-18 from random initialisation and to SimCLR pretrained for
   about the same time (benchmarks/simclr_v2.py's pretraining run, the best few-label result so
   far; pretrained here if absent). Every run trains ``--steps`` steps whatever its label
   fraction (the paper's fixed schedules), test top-1 on all 10,000 test images.

    python benchmarks/selfie.py                    # ~45 min on 2 CPU cores
    python benchmarks/selfie.py --variant-epochs 0 --epochs 1 --seeds 0 1 --steps 20   # smoke
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from compare import pretrain_in_child  # noqa: E402
from selfsup.config import apply_overrides, find_config, read_yaml, resolve  # noqa: E402
from selfsup.data import load_splits  # noqa: E402
from selfsup.engine.runtime import describe_device, library_versions, pick_device  # noqa: E402
from selfsup.recipes.classifier import ClassifierTraining  # noqa: E402
from selfsup.recipes.evaluate import checkpoint_evaluator  # noqa: E402
from selfsup.recipes.loading import load_method  # noqa: E402
from selfsup.recipes.finetune import finetune_sweep, supervised_sweep  # noqa: E402
from selfsup.views import EvalView, grid_patches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"paper (u + position, unscaled)": ["method.query=add", "method.scaled_logits=false"],
            "u + position, scaled (default)": ["method.query=add", "method.scaled_logits=true"],
            "position into the pooling, scaled": ["method.query=pool", "method.scaled_logits=true"]}


def pretext_accuracy(run_dir: Path) -> float:
    """Mean pretext accuracy (%) of the last five logged steps."""
    rows = list(csv.DictReader((run_dir / "steps.csv").open()))[-5:]
    return 100 * statistics.mean(float(row["accuracy"]) for row in rows)


@torch.no_grad()
def u_spread(run_dir: Path) -> float:
    """Mean over features of the standard deviation of u over 256 test images, 12 patches visible."""
    method, config, state = load_method(run_dir)
    method.eval()
    images = load_splits(config.data, labeled=True, quiet=True).test.images[:256]
    x = EvalView(state["data"]["image_size"], state["data"]["mean"], state["data"]["std"])(images)
    patches = grid_patches(x, method.patch_size)[:, :method.visible_count]
    return method.encode(patches).std(0).mean().item()


def knn(run_dir: Path, train_images: int, recalibrate: bool = True) -> float:
    """kNN top-1 of P's pooled features; ``recalibrate`` (the default since P is known to train on
    patches): its BatchNorm statistics re-estimated on whole training images first."""
    overrides = [f"eval.train_images={train_images}", f"eval.bn_recalibration={str(recalibrate).lower()}"]
    evaluator, config = checkpoint_evaluator(run_dir, overrides, out_dir=run_dir / ("eval" if recalibrate else
                                                                                   "eval-patch-bn"), quiet=True)
    return evaluator.run(["knn"], config.eval, config.train.seed)[evaluator.name]["knn"]["top1"]


def settings(steps: int, backbone_lr_scale: float, device: str, **extra) -> ClassifierTraining:
    """SGD 0.1 per 256 images, cosine, ``steps`` steps of 64; test top-1 after the last."""
    return ClassifierTraining(steps=steps, batch_size=64, backbone_lr_scale=backbone_lr_scale, test_every=1000,
                              device=device, **extra)


def plot(arms: dict[str, dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for offset, (name, report) in enumerate(arms.items()):
        labels = [row["labels"] for row in report["summary"]]
        x = [float(label.rstrip("%")) for label in labels]
        means = [row["mean top-1 (%)"] for row in report["summary"]]
        stds = [row["std"] for row in report["summary"]]
        ax.errorbar([v * (1 + 0.04 * (offset - 1)) for v in x], means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks([5, 10, 20, 100], ["5%", "10%", "20%", "100%"])
    ax.set_xlabel("labelled training images (fraction of 60,000)")
    ax.set_ylabel("test top-1 (%), mean +- std over seeds")
    ax.set_title("Fine-tuning with few labels, Fashion-MNIST, ResNet-18 w16")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant-epochs", type=int, default=1, help="pretraining of each variant (0: skip part 1)")
    parser.add_argument("--epochs", type=int, default=3, help="Selfie pretraining for the few-label experiment "
                                                             "(3 epochs: about 5.5 minutes alone, SimCLR had 6.9)")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps of 64 images, every run")
    parser.add_argument("--attention-fractions", type=float, nargs="*", default=[0.05, 1.0],
                        help="label fractions of the ResNet-36 + attention pooling arm")
    parser.add_argument("--full-rate", action=argparse.BooleanOptionalAction, default=True,
                        help="also fine-tune the pretrained trunks end to end at the head's rate (the paper's "
                             "'finetuned end-to-end'; random init always trains at that rate)")
    parser.add_argument("--simclr", default=str(ROOT / "benchmarks" / "out" / "simclr_v2" / "pretrain"),
                        help="SimCLR run to compare with (pretrained here for 7 minutes if absent)")
    parser.add_argument("--eval-train", type=int, default=10000, help="training images of the variants' kNN")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "selfie"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = [f"backbone.width={args.width}", "train.knn_every=0", "train.online_probe=false",
              f"train.device={args.device}"]
    report: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "device": describe_device(pick_device(args.device)), "versions": library_versions(),
                    "command": " ".join(sys.argv), "variants": {}, "few_labels": {}}

    if args.variant_epochs:
        for name, overrides in VARIANTS.items():
            run = out / ("variant-" + "-".join(o.split("=")[1] for o in overrides))
            if not (run / "summary.json").exists():
                pretrain_in_child("selfie", shared + overrides + [f"train.epochs={args.variant_epochs}",
                                                                  "optim.warmup_epochs=0.1"], run)
            row = {"pretext accuracy (%)": round(pretext_accuracy(run), 1), "kNN top-1": knn(run, args.eval_train),
                   "kNN top-1, patch BatchNorm (before the fix)": knn(run, args.eval_train, recalibrate=False),
                   "u spread": round(u_spread(run), 5)}
            report["variants"][name] = row
            print(name, json.dumps(row), flush=True)

    selfie = out / "pretrain"
    if not (selfie / "summary.json").exists():
        pretrain_in_child("selfie", shared + [f"train.epochs={args.epochs}", "optim.warmup_epochs=0.1"], selfie)
    simclr = Path(args.simclr)
    if not (simclr / "summary.json").exists():
        pretrain_in_child("simclr", shared + ["train.minutes=7", "train.epochs=1000", "optim.warmup_epochs=0.02",
                                              "method.proj_layers=3"], simclr)
    config = resolve(apply_overrides(read_yaml(find_config("selfie_fashion_mnist")), shared))
    sweep = {"fractions": args.fractions, "seeds": args.seeds, "quiet": True}
    arms = {
        "random init": supervised_sweep(config, out / "random-init", settings(args.steps, 1.0, args.device), **sweep),
        "SimCLR": finetune_sweep(simclr, out / "simclr", settings(args.steps, 0.1, args.device), **sweep),
        "Selfie (res5 fresh)": finetune_sweep(selfie, out / "selfie", settings(args.steps, 0.1, args.device,
                                                                             layer_modes={"res5": "retrain"}),
                                              **sweep),
    }
    if args.full_rate:  # the paper's end-to-end fine-tuning: the trunk at the head's rate, as random init's
        arms["SimCLR, trunk at full rate"] = finetune_sweep(simclr, out / "simclr-full-rate",
                                                            settings(args.steps, 1.0, args.device), **sweep)
        arms["Selfie (res5 fresh), trunk at full rate"] = finetune_sweep(
            selfie, out / "selfie-full-rate", settings(args.steps, 1.0, args.device, layer_modes={"res5": "retrain"}),
            **sweep)
    if args.attention_fractions:
        arms["Selfie + attention pooling"] = finetune_sweep(
            selfie, out / "selfie-attention", settings(args.steps, 0.1, args.device), head_layers=1,
            **{**sweep, "fractions": args.attention_fractions})
    report["few_labels"] = {name: arm["summary"] for name, arm in arms.items()}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(arms, out / "few-labels.png")
    lines = ["| labels | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for fraction in args.fractions:
        label, cells = f"{100 * fraction:g}%", []
        for arm in arms.values():
            row = next((r for r in arm["summary"] if r["labels"] == label), None)
            cells.append(f"{row['mean top-1 (%)']:.2f} +- {row['std']:.2f}" if row else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
