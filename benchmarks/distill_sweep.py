"""Knowledge distillation at CPU scale: a small student with and without a teacher, several T and lambda.

The teacher is section 10's fine-tuned SimCLR network (ResNet-18 width 16, 10% of the labels,
head layer 1; run ``benchmarks/simclr_v2.py`` first). Every student is a fresh ResNet-18 of
``--width`` trained for ``--steps`` steps of 128 on a class-balanced ``--images`` training
images: from the labels of ``--labels`` of them alone (with and without label smoothing, the
uniform teacher), or from the teacher at temperature T with weight lambda (lambda = 1: no
label used; lambda < 1: cross-entropy on the same labelled images for the rest). Test top-1 on
all 10,000 test images, one seed.

    python benchmarks/distill_sweep.py             # ~12 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from selfsup.config import apply_overrides, resolve
from selfsup.engine import checkpoint
from selfsup.engine.runtime import describe_device, library_versions, pick_device
from selfsup.recipes.classifier import ClassifierTraining
from selfsup.recipes.distill import distill
from selfsup.recipes.finetune import supervised

ROOT = Path(__file__).resolve().parents[1]


def training(steps: int, device: str, label_smoothing: float = 0.0) -> ClassifierTraining:
    return ClassifierTraining(steps=steps, batch_size=128, backbone_lr_scale=1.0, test_every=1000, device=device,
                              label_smoothing=label_smoothing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(ROOT / "benchmarks" / "out" / "simclr_v2" / "finetune-10%-h1"))
    parser.add_argument("--width", type=int, default=8, help="the student's ResNet-18 width")
    parser.add_argument("--images", type=int, default=15000, help="training images the students see")
    parser.add_argument("--labels", type=float, default=0.1, help="fraction of those images with their label")
    parser.add_argument("--steps", type=int, default=234)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "distill_sweep"))
    args = parser.parse_args()
    out = Path(args.out)
    state = checkpoint.load(args.teacher)
    config = resolve(apply_overrides(state["config"], [f"backbone.width={args.width}", "data.label_noise=0.0"]))
    labelled = round(args.labels * args.images)
    rows = []

    def record(student: str, teacher: str, summary: dict) -> None:
        rows.append({"student": student, "teacher": teacher, "test_top1": summary["test_top1"],
                     "steps": summary["steps"]})
        print(json.dumps(rows[-1]), flush=True)

    for smoothing in (0.0, 0.1):
        run = out / f"labels-ls{smoothing:g}"
        summary = (json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else
                   supervised(config, run, training(args.steps, args.device, smoothing), labels=labelled / 60000,
                              quiet=True))
        record(f"w{args.width}, {labelled} labels" + (f", label smoothing {smoothing:g}" if smoothing else ""),
               "none" if not smoothing else "uniform (label smoothing)", summary)
    for temperature in (1.0, 4.0):
        for weight in (1.0, 0.5):
            run = out / f"kd-T{temperature:g}-lambda{weight:g}"
            summary = (json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else
                       distill(args.teacher, run, training(args.steps, args.device), student=[
                           f"backbone.width={args.width}"], temperature=temperature, teacher_weight=weight,
                           labels=args.labels if weight < 1 else 0.0, overrides=[f"data.subset={args.images}"],
                           quiet=True))
            used = f"{labelled} labels" if weight < 1 else "no labels"
            record(f"w{args.width}, {args.images} images, {used}", f"fine-tuned SimCLR w16, T={temperature:g}, "
                   f"lambda={weight:g}", summary)
    lines = ["| student | teacher | test top-1 |", "|---|---|---|"]
    lines += [f"| {r['student']} | {r['teacher']} | {r['test_top1']:.2f} |" for r in rows]
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "teacher": args.teacher,
              "teacher_test_top1": json.loads((Path(args.teacher) / "summary.json").read_text())["test_top1"],
              "device": describe_device(pick_device(args.device)), "versions": library_versions(),
              "command": " ".join(sys.argv), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
