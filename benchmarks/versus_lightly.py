"""selfsup against lightly, method by method, at equal settings and equal epochs (issue 22, part 2).

For SimCLR, MoCo v2, BYOL, SimSiam, Barlow Twins and DINO (on the ResNet), each method is trained
twice on Fashion-MNIST from its preset (``configs/<method>_fashion_mnist.yaml``; for DINO the convnet
recipe ``dino_resnet_fashion_mnist``), with the ladder's shared settings: ResNet-18 of ``--width`` with
the small stem, ``--epochs`` epochs, the warm-up capped at a tenth of the run:

* **selfsup**: ``selfsup pretrain``, then ``selfsup export`` to torchvision weights;
* **lightly**: lightly's own transforms, heads, losses, momentum utilities, LARS and schedules, wired
  as lightly's examples wire them (:mod:`lightly_recipes`, which lists what differs by recipe: one
  backbone pass per view, PIL views, a step's shift in the schedules), at the same hyper-parameters,
  backbone, epochs, batch size and precision; its backbone saved with the same torchvision names.

Both weight files are then imported (``selfsup import``) and scored by the same evaluation code
as the ladder: weighted kNN at k = 20 and 200 (T = 0.07) and the linear probe on the full
60k / 10k split. The evaluated network is the paper's on both sides (DINO's teacher, the online
backbone otherwise). The target is selfsup >= lightly - 1 point on kNN and on linear for every
method; the table states each gap, and, with ``--seeds`` of two or more, its standard error.

Resumable: each finished row (one side of one method and seed) goes to ``REPORT/versus-lightly.json``
at once, each training runs in its own process under ``OUT`` (selfsup's with ``--resume``, lightly's
from its last finished epoch), a rerun skips the rows it has. The report is small and lives in the
repository (``benchmarks/versus_lightly/``), like the ladder's, so that the pairs, an hour or two each
on a CPU, accumulate across sessions; each row names the machine, precision and date it was trained
on. Run a pair's two sides on one machine kind: the img/s ratio is only meaningful side by side.

    python benchmarks/versus_lightly.py --epochs 10                  # all six, width 16, CPU (hours)
    python benchmarks/versus_lightly.py --methods simclr byol --seeds 0 1
    python benchmarks/versus_lightly.py --device cuda --width 64 --epochs 100
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

from ladder import (EVAL, PROTOCOLS, add_run_arguments, child, machine_kind, preset, preset_config, scores,
                    shared_overrides, warmup_overrides)
from lightly_recipes import METHODS, train_with_lightly
from selfsup.engine.runtime import describe_device, git_revision, library_versions
from selfsup.export import export_backbone, import_torchvision
from selfsup.figures import grouped_bars
from selfsup.files import write_json
from selfsup.recipes.evaluate import checkpoint_evaluator
from selfsup.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("selfsup", "lightly")
METRICS = {"knn20": "kNN k=20", "knn200": "kNN k=200", "linear": "linear"}


def score(weights: Path, method: str, overrides: list[str], folder: Path) -> dict:
    """kNN and linear top-1 of torchvision weights, imported as a checkpoint: one path for both sides."""
    if not (folder / "checkpoints" / "last.pt").is_file():
        import_torchvision(weights, folder, preset_config(method, overrides), quiet=True)
    evaluator, config = checkpoint_evaluator(folder, EVAL, quiet=True)
    return scores(evaluator.run(PROTOCOLS, config.eval, config.train.seed)[evaluator.name])


def train(side: str, method: str, overrides: list[str], run_dir: Path, workers: int) -> dict:
    """Train one side in its own process; its weights file and what the row records about the run."""
    sets = [arg for value in overrides for arg in ("--set", value)]
    weights = run_dir / "backbone.safetensors"
    if side == "selfsup":
        minutes, rss = child(["pretrain", "-c", preset(method), "--run-dir", str(run_dir), "--resume",
                              "--quiet", *sets])
        if not weights.is_file():  # `selfsup export`'s function: the paper's network (DINO's teacher)
            export_backbone(run_dir, weights, quiet=True)
        summary, meta = (json.loads((run_dir / name).read_text()) for name in ("summary.json", "meta.json"))
        return {"weights": weights, "img_per_s": summary["img_per_s"], "steps": summary["steps"],
                "wall_minutes": minutes, "peak_rss_mib": rss, "precision": meta["precision"],
                "commit": meta.get("git_revision", "unknown")}
    minutes, rss = child(["--train-lightly", method, "--run-dir", str(run_dir), "--workers", str(workers), *sets],
                         program=(sys.executable, str(Path(__file__).resolve())))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"weights": weights, "img_per_s": summary["img_per_s"], "steps": summary["steps"], "wall_minutes": minutes,
            "peak_rss_mib": rss, "loader_workers": summary["loader_workers"], "precision": summary["precision"],
            "commit": git_revision()}


def gaps(rows: dict[str, dict], margin: float) -> list[dict]:
    """selfsup - lightly per method and metric, over every seed the report holds both sides of (this run's
    and earlier runs'): the mean over seeds, its standard error (paired by seed)."""
    out = []
    for method in METHODS:
        seeds = sorted({row["seed"] for name, row in rows.items() if name.startswith(f"{method}: ")})
        pairs = [(rows.get(row_name(method, "selfsup", s)), rows.get(row_name(method, "lightly", s))) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a and b]
        if not pairs:
            continue
        line = {"method": method, "seeds": len(pairs)}
        for key, label in METRICS.items():
            differences = [a[key] - b[key] for a, b in pairs]
            mean = statistics.fmean(differences)
            error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else None
            line[label] = f"{mean:+.2f}" + (f" ± {error:.2f}" if error is not None else "")
            line[f"{key}_gap"] = round(mean, 2)
        line["target"] = "met" if all(line[f"{k}_gap"] >= -margin for k in METRICS) else "not met"
        out.append(line)
    return out


def side_means(rows: dict[str, dict]) -> tuple[list[str], dict[str, list[float]], dict[str, list[float | None]]]:
    """The chart's bars: one per method and side, in the report's order, the mean over the seeds it holds
    (named "(N seeds)" when more than one) and half their range as the error bar, so no seed is left out."""
    sides: dict[tuple[str, str], list[dict]] = {}
    for name, row in rows.items():
        method, side = name.split(": ", 1)
        sides.setdefault((method, side.split(" seed ")[0]), []).append(row)
    names = [f"{method}: {side}" + (f" ({len(held)} seeds)" if len(held) > 1 else "")
             for (method, side), held in sides.items()]
    values = {label: [round(statistics.fmean(r[key] for r in held), 2) for held in sides.values()]
              for key, label in METRICS.items()}
    spreads = {label: [(max(r[key] for r in held) - min(r[key] for r in held)) / 2 if len(held) > 1 else None
                       for held in sides.values()] for key, label in METRICS.items()}
    return names, values, spreads


def row_name(method: str, side: str, seed: int) -> str:
    return f"{method}: {side}" + (f" seed {seed}" if seed else "")


def train_lightly_main(argv: list[str]) -> None:
    """``--train-lightly METHOD --run-dir DIR [--workers N] [--set KEY=VALUE ...]``: one lightly run."""
    parser = argparse.ArgumentParser(prog="versus_lightly.py --train-lightly")
    parser.add_argument("--train-lightly", dest="method", choices=METHODS, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    train_with_lightly(args.method, preset_config(args.method, args.overrides), Path(args.run_dir),
                       workers=args.workers, progress=sys.stderr.isatty())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--train-lightly" in argv:
        return train_lightly_main(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = standard)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="auto", help="both sides (auto: bf16 where native, else fp32)")
    parser.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers (its examples: one a core)")
    parser.add_argument("--margin", type=float, default=1.0, help="the target: selfsup >= lightly - margin points")
    add_run_arguments(parser)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "versus-lightly"), help="the runs")
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "versus_lightly"),
                        help="the rows, tables and chart (default: in the repository, to grow across sessions)")
    args = parser.parse_args(argv)
    out, report_dir = Path(args.out), Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    report_file = report_dir / "versus-lightly.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"rows": {}}
    shared = shared_overrides(args, online_probe=False) + [f"train.precision={args.precision}"]
    report.update({"date": datetime.date.today().isoformat(),
                   "command": " ".join(["python benchmarks/versus_lightly.py", *argv]),
                   "machine": describe_device(torch.device("cuda") if torch.cuda.is_available()
                                              and args.device != "cpu" else torch.device("cpu")),
                   "versions": library_versions(), "shared_overrides": shared, "margin": args.margin})
    rows = report["rows"]
    for method in args.methods:
        for seed in args.seeds:
            overrides = shared + warmup_overrides(method, args.epochs) + [f"train.seed={seed}"]
            for side in SIDES:
                name = row_name(method, side, seed)
                if name in rows:
                    continue
                folder = out / name.replace(": ", "-").replace(" ", "-")
                trained = train(side, method, overrides, folder / "run", args.workers)
                row = {**score(trained.pop("weights"), method, overrides, folder / "scored"), **trained,
                       "epochs": args.epochs, "seed": seed,
                       "batch_size": preset_config(method, overrides).train.batch_size,
                       "machine": report["machine"], "date": report["date"]}
                rows[name] = row
                write_json(report_file, report)
                print(json.dumps({name: row}), flush=True)

    report["gaps"] = gaps(rows, args.margin)  # from every row held, earlier runs' too
    write_json(report_file, report)
    columns = ["row", *METRICS.values(), "epochs", "img/s", "wall (min)", "peak RSS (MiB)", "machine", "date"]
    table = markdown_table([{"row": name, **{label: row[key] for key, label in METRICS.items()},
                             "epochs": row.get("epochs"), "img/s": row["img_per_s"], "wall (min)": row["wall_minutes"],
                             "peak RSS (MiB)": row["peak_rss_mib"], "machine": machine_kind(row),
                             "date": row.get("date")} for name, row in rows.items()], columns)
    gap_table = markdown_table(report.get("gaps", []), ["method", "seeds", *METRICS.values(), "target"])
    # rows accumulate across sessions and machines: each names its own, the header only what they share
    text = (f"ResNet-18 width {args.width}, equal settings on both sides; each row names its machine, precision and "
            f"date, and a pair's two sides ran on one machine kind\n\n"
            f"{table}\n\nselfsup - lightly (points; target: >= -{args.margin:g} on every metric)\n\n{gap_table}\n")
    (report_dir / "versus-lightly.md").write_text(text)
    print("\n" + text)
    names, values, spreads = side_means(rows)
    grouped_bars(report_dir / "versus-lightly.png", names, values, "top-1 (%)",
                 f"Fashion-MNIST, {args.epochs} epochs each: selfsup and lightly (over seeds: mean, half the range)",
                 errors=spreads, zoom=True)  # a side with one seed gets no whisker


if __name__ == "__main__":
    main()
