"""SimCLR v2's three stages on Fashion-MNIST at CPU scale (Chen et al. 2020b, Sec. 2 and 4).

1. Pretrain SimCLR with the 3-layer projection head for ``--minutes``.
2. Fine-tune on 1% and 10% of the labels (class-balanced), from the backbone's output
   (head layers 0) and from the middle of the projection head (head layers 1); next to the
   same network trained from random initialisation on the same labels.
3. Distill the 10% / head-layer-1 teacher into a fresh student of the same backbone and into a
   half-width one, on ``--unlabelled`` training images without their labels; next to the
   half-width student trained on the 10% labels alone.

Short schedules, labelled as such: the question is whether the ordering the paper reports
(head layer 1 >= 0 with few labels; distilled students close to, or above, their teacher; a
teacher better than labels alone) shows at this scale.

    python benchmarks/simclr_v2.py                       # ~25 min on 2 CPU cores
    python benchmarks/simclr_v2.py --minutes 1 --unlabelled 2000 --epochs-1pct 2 --epochs-10pct 1   # smoke
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from compare import pretrain_in_child
from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions, pick_device
from selfsup.recipes.classifier import ClassifierTraining
from selfsup.recipes.distill import distill
from selfsup.recipes.finetune import finetune, supervised

ROOT = Path(__file__).resolve().parents[1]


def settings(epochs: int, device: str, backbone_lr_scale: float = 0.1) -> ClassifierTraining:
    """SGD at 0.1 per 256 images, cosine, trunk at ``backbone_lr_scale`` of the head; test top-1 at the end."""
    return ClassifierTraining(epochs=epochs, batch_size=128, backbone_lr_scale=backbone_lr_scale,
                              test_every=1000, device=device)


def from_scratch(config, fraction: float, epochs: int, width: int | None, run_dir: Path, device: str) -> float:
    """The network of ``config`` (or of ``width``) from random initialisation on the labels alone."""
    if width is not None:
        config = resolve(apply_overrides(config.to_dict(), [f"backbone.width={width}"]))
    return supervised(config, run_dir, settings(epochs, device, 1.0), labels=fraction, quiet=True)["test_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="pretraining budget")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width of the teacher")
    parser.add_argument("--epochs-1pct", type=int, default=20)
    parser.add_argument("--epochs-10pct", type=int, default=4)
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--unlabelled", type=int, default=60000,
                        help="training images the students learn from (default: all 60,000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "simclr_v2"))
    args = parser.parse_args()
    out = Path(args.out)
    pretrain = out / "pretrain"
    overrides = [f"train.minutes={args.minutes}", "train.epochs=1000", "train.knn_every=0", "train.online_probe=false",
                 "optim.warmup_epochs=0.02", "method.proj_layers=3", f"backbone.width={args.width}",
                 f"train.device={args.device}"]
    if not (pretrain / "summary.json").exists():
        pretrain_in_child("simclr", overrides, pretrain)
    config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")), overrides))
    rows: list[dict] = []

    def record(stage: str, labels: str, detail: str, top1: float) -> None:
        rows.append({"stage": stage, "labels": labels, "network": detail, "test_top1": round(top1, 2)})
        print(json.dumps(rows[-1]), flush=True)

    epochs = {0.01: args.epochs_1pct, 0.1: args.epochs_10pct}
    for fraction, count in epochs.items():
        label = f"{100 * fraction:g}%"
        record("supervised", label, f"ResNet-18 w{args.width}, random init, {count} epochs",
               from_scratch(config, fraction, count, None, out / f"scratch-{label}", args.device))
        for head_layers in (0, 1):
            run = out / f"finetune-{label}-h{head_layers}"
            summary = finetune(pretrain, run, settings(count, args.device), head_layers=head_layers,
                               labels=fraction, quiet=True)
            record("fine-tuned", label, f"SimCLR (3-layer head), from head layer {head_layers}, {count} epochs",
                   summary["test_top1"])
    teacher = out / "finetune-10%-h1"
    half = args.width // 2
    record("supervised", "10%", f"ResNet-18 w{half}, random init, {args.epochs_10pct} epochs",
           from_scratch(config, 0.1, args.epochs_10pct, half, out / f"scratch-10%-w{half}", args.device))
    for width in (args.width, half):
        summary = distill(teacher, out / f"student-w{width}", settings(args.distill_epochs, args.device, 1.0),
                          student=[f"backbone.width={width}"],
                          overrides=[f"data.subset={args.unlabelled}"] if args.unlabelled < 60000 else [],
                          quiet=True)
        record("distilled", "10% (teacher's)", f"ResNet-18 w{width} student, {args.unlabelled} unlabelled images, "
               f"{args.distill_epochs} epochs", summary["test_top1"])

    lines = ["| stage | labels | network | test top-1 |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['labels']} | {r['network']} | {r['test_top1']:.2f} |" for r in rows]
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": describe_device(pick_device(args.device)),
              "versions": library_versions(), "command": " ".join(sys.argv), "rows": rows}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
