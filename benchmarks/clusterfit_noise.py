"""ClusterFit's label-noise study at CPU scale (Yan et al. 2020, Sec. 3.1 / Fig. 2).

For each noise level p: N_pre, a ResNet-18 (width 16) trained from random initialisation on
Fashion-MNIST labels of which a fraction p was moved to another class (``selfsup supervised
--label-noise p``); then, from N_pre and on the same images,
- distillation: a fresh network trained on N_pre's soft predictions (``selfsup distill``),
- ClusterFit: k-means of N_pre's features into K clusters, a fresh network trained on the
  cluster indices (``selfsup cluster``).
All three are compared on the clean labels: weighted kNN and the linear probe on frozen
features (``--eval-train`` training images, the full test set).

    python benchmarks/clusterfit_noise.py                  # ~30 min on 2 CPU cores
    python benchmarks/clusterfit_noise.py --noise 0 0.5 --images 2000 --epochs 1 --clusters 20   # smoke
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from selfsup.config import apply_overrides, find_config, read_yaml, resolve  # noqa: E402
from selfsup.engine.runtime import describe_device, library_versions, pick_device  # noqa: E402
from selfsup.recipes.classifier import ClassifierTraining  # noqa: E402
from selfsup.recipes.cluster import ClusterFitSettings, clusterfit  # noqa: E402
from selfsup.recipes.distill import distill  # noqa: E402
from selfsup.recipes.evaluate import checkpoint_evaluator  # noqa: E402
from selfsup.recipes.finetune import supervised  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("N_pre", "distillation", "ClusterFit")


def training(epochs: int, device: str) -> ClassifierTraining:
    """SGD 0.1 per 256 images, cosine, batch 128, every parameter at the full rate."""
    return ClassifierTraining(epochs=epochs, batch_size=128, backbone_lr_scale=1.0, test_every=1000, device=device)


def probe(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    evaluator, config = checkpoint_evaluator(run_dir, overrides, quiet=True)
    results = evaluator.run(["knn", "linear"], config.eval, config.train.seed)[evaluator.name]
    return {protocol: round(results[protocol]["top1"], 2) for protocol in ("knn", "linear")}


def plot(rows: dict[str, dict], path: Path) -> None:
    noise = [float(p) for p in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, protocol in zip(axes, ("knn", "linear")):
        for name in NETWORKS:
            ax.plot([100 * p for p in noise], [rows[p][name][protocol] for p in rows], marker="o", label=name)
        ax.set_xlabel("labels of N_pre moved to another class (%)")
        ax.set_title(f"{'weighted kNN' if protocol == 'knn' else 'linear probe'} on clean labels")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].legend()
    fig.suptitle("ClusterFit's label-noise study, Fashion-MNIST, ResNet-18 w16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--images", type=int, default=15000,
                        help="class-balanced training images N_pre learns from, and D_cf for the other two")
    parser.add_argument("--epochs", type=int, default=3, help="N_pre's epochs over its images")
    parser.add_argument("--student-epochs", type=int, default=2, help="epochs of the distilled network and of N_cf")
    parser.add_argument("--clusters", type=int, default=100, help="K")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--eval-train", type=int, default=10000, help="training images of kNN and linear probe")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "clusterfit_noise"))
    args = parser.parse_args()
    out = Path(args.out)
    fraction = args.images / 60000
    evaluation = [f"eval.train_images={args.eval_train}"]
    base = read_yaml(find_config("simclr_fashion_mnist"))
    rows: dict[str, dict] = {}
    for p in args.noise:
        here = out / f"noise{100 * p:g}"
        config = resolve(apply_overrides(base, [f"backbone.width={args.width}", f"data.label_noise={p}",
                                                f"train.device={args.device}"]))
        n_pre = here / "n_pre"
        if not (n_pre / "summary.json").is_file():
            supervised(config, n_pre, training(args.epochs, args.device), labels=fraction,
                       resume=(n_pre / "checkpoints" / "last.pt").is_file(), quiet=True)
        student = here / "distilled"
        if not (student / "summary.json").is_file():
            distill(n_pre, student, training(args.student_epochs, args.device),
                    overrides=[f"data.subset={args.images}"], resume=(student / "checkpoints" / "last.pt").is_file(),
                    quiet=True)
        settings = ClusterFitSettings(clusters=args.clusters, training=training(args.student_epochs, args.device))
        report = clusterfit(n_pre, here / "clusterfit", settings, overrides=[f"data.subset={args.images}"] + evaluation,
                            quiet=True)
        rows[f"{p:g}"] = {"N_pre": report["results"]["N_pre"], "distillation": probe(student, evaluation),
                          "ClusterFit": report["results"]["N_cf"],
                          "N_pre test top-1 (its own head)": json.loads((n_pre / "summary.json").read_text())[
                              "test_top1"]}
        print(f"p={p:g}", json.dumps(rows[f"{p:g}"]), flush=True)

    lines = ["| label noise | N_pre kNN | distilled kNN | ClusterFit kNN | N_pre linear | distilled linear | "
             "ClusterFit linear | N_pre's own test top-1 |", "|---" * 8 + "|"]
    for p, row in rows.items():
        lines.append(f"| {100 * float(p):g}% | " + " | ".join(f"{row[n]['knn']:.2f}" for n in NETWORKS) + " | "
                     + " | ".join(f"{row[n]['linear']:.2f}" for n in NETWORKS)
                     + f" | {row['N_pre test top-1 (its own head)']:.2f} |")
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "device": describe_device(pick_device(args.device)), "versions": library_versions(),
              "command": " ".join(sys.argv), "rows": rows}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "label-noise.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
