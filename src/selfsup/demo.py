"""``selfsup demo`` / ``make demo``: the product in a few minutes on a laptop CPU.

Pretrain SimCLR on Fashion-MNIST with a CPU-sized ResNet-18 (configs/demo.yaml), evaluate
its frozen features with the weighted kNN and the linear probe, and put them next to the
same protocols on raw pixels: the baseline any representation has to beat.
"""
from __future__ import annotations

from pathlib import Path

from .config import load_config
from .eval import results_table
from .recipes.evaluate import checkpoint_evaluator, pixel_evaluator
from .recipes.pretrain import pretrain
from .report import write_report


def run_demo(run_dir: str | Path, config_path: Path, overrides: list[str] = (), quiet: bool = False) -> dict:
    run_dir = Path(run_dir)
    config = load_config(config_path, overrides)
    if not quiet:
        print(f"selfsup demo: {config.method_name} on {config.data.name}, {config.backbone.name} "
              f"(width {config.backbone.width}), {config.train.epochs} epochs -> {run_dir}\n"
              "An interrupted demo continues where it stopped; a finished one is only re-evaluated.")
    pretrain(config, run_dir, resume=True, quiet=quiet)
    evaluator, _ = checkpoint_evaluator(run_dir / "checkpoints" / "last.pt", quiet=quiet)
    evaluator.run(["knn", "linear"], config.eval, config.train.seed)
    results = pixel_evaluator(config, evaluator.out_dir, quiet).run(["knn", "linear"], config.eval, config.train.seed)
    summary = write_report(run_dir)
    print("\n" + results_table(results) + "\n")
    print(f"report: {summary}\nplots:  {run_dir / 'report'}")
    return results
