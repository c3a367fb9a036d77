"""Does a run slow down as its learning rate goes to zero? Step time against the step, on the demo's
network (SimCLR, ResNet-18 width 32, Fashion-MNIST, batch 256), for the variants that tell the
candidate causes apart:

* ``default``: as ``make demo`` trains (cosine decay to zero over ``--steps``);
* ``flush denormals``: the same with ``torch.set_flush_denormal(True)`` (subnormal floats, which
  tiny updates can produce, cost many cycles on x86 unless flushed to zero);
* ``constant lr``: no decay (``optim.min_lr=1``): if the slowdown follows the schedule, it is gone here.

Each variant is a fresh run in this process, one after the other (the effect lives in the run's
late steps, so the variants cannot be interleaved step by step); run it on a quiet machine, and
compare the late steps' speed with the same run's middle steps. Results are written after each
variant (``--out``), and a finished variant is not run again.

Single runs on a shared host drift by 5-10%, so ``--paired`` asks the question directly: from the
trained state of the default run and from a fresh one, steps are timed with denormals flushed and
not, alternately, in interleaved rounds (``Engine.time_steps`` undoes each step), and the paired
ratio is reported per state. Denormals that appear as training progresses would make flushing
help at the trained state only.

    python benchmarks/late_steps.py --steps 300
    python benchmarks/late_steps.py --steps 300 --variants default --paired
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine import Engine
from selfsup.engine.runtime import describe_device, pick_device
from selfsup.recipes.pretrain import Pretraining
from throughput import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"default": [], "flush denormals": [], "constant lr": ["optim.min_lr=1.0"]}


def demo_config(steps: int, data_root: str | None, *extra: str):  # noqa: ANN201 (a RunConfig)
    overrides = [f"train.max_steps={steps}", "train.epochs=100", "train.log_every=1000000", *extra]
    if data_root:
        overrides.append(f"data.root={data_root}")
    return resolve(apply_overrides(read_yaml(find_config("demo")), overrides))


def step_seconds(config_overrides: list[str], steps: int, flush: bool, data_root: str | None,
                 run_dir: Path) -> list[float]:
    config = demo_config(steps, data_root, *config_overrides)
    times: list[float] = []
    original = Engine.train_step

    def timed(self, *batch):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        row = original(self, *batch)
        times.append(time.perf_counter() - start)
        return row

    previous = torch.set_flush_denormal(flush)
    Engine.train_step = timed
    try:
        Pretraining(config, run_dir, quiet=True).fit()
    finally:
        Engine.train_step = original
        torch.set_flush_denormal(False)
    del previous
    return times


def paired(run_dir: Path, steps: int, data_root: str | None, rounds: int) -> dict[str, dict]:
    """Seconds per step with and without flushing denormals, alternately, at the trained state of
    ``run_dir`` and at a fresh start; the paired ratio (without / with) per state."""
    states = {"trained (resumed at the end)": Pretraining(demo_config(steps + 50, data_root), run_dir, resume=True,
                                                          quiet=True, allow_change=("train.max_steps",)),
              "fresh (step 0)": Pretraining(demo_config(steps + 50, data_root),
                                            Path(tempfile.mkdtemp(prefix="selfsup-late-")), quiet=True)}
    found = {}
    for name, run in states.items():
        run.engine.seed_streams()
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                seconds[flush].append(run.engine.time_steps(count=3))
        torch.set_flush_denormal(False)
        ratios = [off / on for off, on in zip(seconds[False], seconds[True])]
        found[name] = {"s_per_step_not_flushed": round(statistics.median(seconds[False]), 4),
                       "s_per_step_flushed": round(statistics.median(seconds[True]), 4),
                       "not flushed / flushed (median of rounds)": round(statistics.median(ratios), 3),
                       "ratios": [round(r, 3) for r in ratios]}
        print(name, json.dumps(found[name]), flush=True)
    return found


def summary(times: list[float], batch: int) -> dict[str, float]:
    n = len(times)
    middle = times[n // 10:(6 * n) // 10]
    late = times[(8 * n) // 10:]
    return {"img_per_s_middle": round(batch / statistics.median(middle), 1),
            "img_per_s_last_fifth": round(batch / statistics.median(late), 1),
            "late / middle": round(statistics.median(middle) / statistics.median(late), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data-root")
    parser.add_argument("--paired", action="store_true", help="then time flushed against not, alternately")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "late_steps.json"))
    args = parser.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"machine": describe_device(pick_device("auto")), "cpu_flags": cpu_flags(), "steps": args.steps})
    report.setdefault("variants", {})
    default_run = out.parent / "late_steps-default-run"
    for name in args.variants:
        if name in report["variants"] and len(report["variants"][name]["seconds"]) == args.steps \
                and (name != "default" or not args.paired or default_run.is_dir()):
            continue  # finished in an earlier (killed) session
        run_dir = default_run if name == "default" else Path(tempfile.mkdtemp(prefix="selfsup-late-"))
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
        seconds = step_seconds(VARIANTS[name], args.steps, name == "flush denormals", args.data_root, run_dir)
        report["variants"][name] = {"seconds": [round(s, 4) for s in seconds], **summary(seconds, 256)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(name, json.dumps(summary(seconds, 256)), flush=True)
    if args.paired:
        report["paired"] = paired(default_run, args.steps, args.data_root, args.rounds)
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
