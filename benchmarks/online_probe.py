"""What the online linear probe costs: a training step with and without it, side by side.

For each method's Fashion-MNIST preset (ResNet-18 at ``--width``, the preset's batch), the same
trainer takes steps with its online probe (``train.online_probe``, 1/8 of each batch through
the evaluated network without gradient, then one SGD step of the classifier) and with the
probe detached, in interleaved rounds; the overhead is the ratio of the two step times within
a round (median over rounds). The probe's step is also timed on its own (median of
``--probe-repeats``), a steadier measure than the paired ratio on a noisy host. The probe's
end-of-epoch evaluation (the monitor's 2,000 held-out queries, once an epoch) is timed once
and reported as a share of an epoch's steps.

    python benchmarks/online_probe.py                       # simclr, npid, byol, dino; ~5 min on 2 cores
    python benchmarks/online_probe.py --methods simclr --rounds 3
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.recipes.pretrain import Pretraining
from selfsup.files import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import cpu_flags, ours_end_to_end, spread, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def trainer_for(method: str, args: argparse.Namespace, run_dir: Path) -> Pretraining:
    overrides = ["train.knn_every=0", "train.log_every=1000000", "train.online_probe=true",
                 f"train.probe_fraction={args.fraction}", "backbone.name=resnet18", f"backbone.width={args.width}",
                 "backbone.patch_size=null", "backbone.registers=0", "backbone.drop_path=0.0",
                 f"train.device={args.device}"]
    return Pretraining(resolve(apply_overrides(read_yaml(find_config(f"{method}_fashion_mnist")), overrides)),
                       run_dir, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr", "npid", "byol", "dino"])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=0.125)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--probe-repeats", type=int, default=20, help="timings of the probe's step alone")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "online_probe.json"))
    args = parser.parse_args()
    out = Path(args.out)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_flags": cpu_flags(),
              "command": " ".join(sys.argv), "versions": library_versions(), "settings": vars(args), "methods": {}}
    if out.is_file():  # a killed run continues: finished methods are kept
        report["methods"] = json.loads(out.read_text()).get("methods", {})
    for method in args.methods:
        if method in report["methods"]:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            trainer = trainer_for(method, args, Path(tmp))
            report["device"] = describe_device(trainer.device)
            probe, step = trainer.engine.probe, ours_end_to_end(trainer)

            def with_probe() -> int:
                trainer.engine.probe = probe
                return step()

            def without_probe() -> int:
                trainer.engine.probe = None
                return step()

            for warm in (with_probe, without_probe):
                warm()
            times: dict[str, list[float]] = {"with probe": [], "without": []}
            for index in range(args.rounds):
                for name, variant in (("with probe", with_probe), ("without", without_probe)):
                    times[name].append(trainer.config.train.batch_size / timed(args.steps, 0, variant))
                print(f"{method} round {index + 1}: {times['with probe'][-1]:.3f} / {times['without'][-1]:.3f} "
                      "s/step with / without the probe", flush=True)
            overhead = [with_ / without for with_, without in zip(times["with probe"], times["without"])]
            trainer.engine.probe = probe
            # The probe's step on its own, many times: a steadier number than the paired rounds' ratio.
            images, targets, _ = next(trainer.loader.iterate())
            alone = []
            for _ in range(args.probe_repeats):
                start = time.perf_counter()
                probe.step(images, targets)
                alone.append(time.perf_counter() - start)
            start = time.perf_counter()
            probe.evaluate()
            evaluate_seconds = time.perf_counter() - start
            step_seconds = statistics.median(times["with probe"])
            epoch_steps = len(trainer.loader)
            report["methods"][method] = {
                "batch_size": trainer.config.train.batch_size, "probe_images_per_step":
                    max(2, round(args.fraction * trainer.loader.batch_size)),
                "seconds_per_step_with_probe": round(statistics.median(times["with probe"]), 3),
                "seconds_per_step_without": round(statistics.median(times["without"]), 3),
                "step_time_ratio_with_over_without": spread(overhead),
                "probe_step_seconds_alone": round(statistics.median(alone), 4),
                "probe_share_of_a_step": round(statistics.median(alone) / statistics.median(times["without"]), 4),
                "evaluate_seconds": round(evaluate_seconds, 2), "query_images": len(probe.queries),
                "evaluation_share_of_epoch": round(evaluate_seconds / (epoch_steps * step_seconds), 4),
            }
            print(method, report["methods"][method], flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, report)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
