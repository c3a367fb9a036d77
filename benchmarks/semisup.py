"""Semi-supervised learning at CPU scale: FixMatch and Mean Teacher (and the labels alone) at 1% and 5% of
the Fashion-MNIST labels, from random initialisation and from a SimCLR checkpoint, over seeds;
the other methods at one setting.

Every run is a ResNet-18 of width 16 (the SimCLR encoder of section 10: run
``benchmarks/simclr_v2.py`` first; random initialisation uses the same backbone), trained for
``--steps`` steps of ``--batch-size`` images (labelled and unlabelled together, 1 : mu), SGD
at 0.03 with cosine decay, trunk at 1/10 of the head's rate from the checkpoint. These are
SHORT schedules (FixMatch trains 2^20 steps of 64 + 448 images): they compare methods at equal,
small compute, not at convergence. The labels alone run twice: on batches of labelled images
only (128 a step), and at the methods' labelled batch (mu = 7: 16 labelled a step, the 112
unlabelled images counting for nothing), the comparison that isolates what the unlabelled
images add. The ramped methods ramp over ``--rampup-steps`` (45, 30% of the run, as before
the ramps were counted in steps; the papers' 16,384-40,000 steps would leave every unlabelled
weight near 0 here). FixMatch and MixMatch are evaluated as their papers, by the moving
average of their weights (decay 0.999); the trained network's accuracy is in the ``raw``
columns. Test top-1 on the 10,000 test images; mean +- std over seeds. Interrupted runs
resume; finished ones are read back.

    python benchmarks/semisup.py                        # ~90 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import pick_device, provenance, resolve_precision
from selfsup.learners.semisup import METHODS as SEMISUP_METHODS
from selfsup.recipes.classifier import ClassifierTraining
from selfsup.recipes.loading import StartingPoint
from selfsup.recipes.semisup import SemiSupervisedSettings, semisup_sweep
from selfsup.files import write_json
from selfsup.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
MAIN = ("labels-only", "labels-only@mu7", "fixmatch", "mean-teacher")
OTHERS = ("pseudo-label", "entropy-min", "pi-model", "temporal-ensembling", "uda", "mixmatch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "benchmarks" / "out" / "simclr_v2" / "pretrain"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(MAIN))
    parser.add_argument("--others", nargs="*", default=list(OTHERS), help="methods run once: 1%%, random init, seed 0")
    parser.add_argument("--rampup-steps", type=int, default=45, help="ramp of the ramped methods (default 45)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "semisup"))
    args = parser.parse_args()
    config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")), ["backbone.width=16"]))
    starts = {"random init": (StartingPoint.load(None, config, seed=0, quiet=True), 1.0),
              "SimCLR": (StartingPoint.load(args.checkpoint, None, quiet=True), 0.1)}
    rows = []

    def run(method: str, start_name: str, fractions: list[float], seeds: list[int]) -> None:
        start, trunk_scale = starts[start_name]
        training = ClassifierTraining.for_strategy("semisup", steps=args.steps, batch_size=args.batch_size,
                                                   backbone_lr_scale=trunk_scale, test_every=1000, device=args.device)
        tag = "random" if start_name == "random init" else "simclr"
        name, ratio = (method.split("@mu")[0], float(method.split("@mu")[1])) if "@mu" in method else (method, None)
        out = Path(args.out) / f"{method.replace('@', '-')}-{tag}"
        ramped = SEMISUP_METHODS[name].default_rampup_steps > 0  # FixMatch, UDA, entropy minimisation have no ramp
        settings = SemiSupervisedSettings(method=name, ratio=ratio, rampup_steps=args.rampup_steps if ramped else None)
        report = semisup_sweep(start, out, training, settings, fractions=fractions, seeds=seeds, quiet=True)
        for row in report["summary"]:
            raw = [json.loads((out / f"{row['labels'].rstrip('%')}pct-seed{seed}" / "summary.json").read_text())
                   .get("test_top1_raw") for seed in seeds]
            raw_columns = {"raw mean": round(statistics.mean(raw), 2),
                           "raw std": round(statistics.stdev(raw), 2) if len(raw) > 1 else 0.0} \
                if None not in raw else {"raw mean": "", "raw std": ""}
            rows.append({"method": method, "start": start_name, **row, **raw_columns})
            print(json.dumps(rows[-1]), flush=True)

    for method in args.methods:
        for start_name in starts:
            run(method, start_name, args.fractions, args.seeds)
    for method in args.others:
        run(method, "random init", [args.fractions[0]], [args.seeds[0]])
    columns = ["method", "start", "labels", "seeds", "mean top-1 (%)", "std", "raw mean", "raw std", "runs"]
    table = markdown_table(rows, columns)
    device = pick_device(args.device)
    report = {**provenance(device, resolve_precision("auto", device)), "checkpoint": args.checkpoint,
              "steps": args.steps, "batch_size": args.batch_size, "rampup_steps": args.rampup_steps, "rows": rows}
    write_json(Path(args.out) / "semisup.json", report)
    (Path(args.out) / "semisup.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
