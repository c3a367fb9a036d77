"""Does this torch's oneDNN still get the channels_last weight gradient of a narrow strided 1x1
convolution wrong? The check behind selfsup's layout rule (``selfsup.recipes.layout``).

oneDNN reads a strided 1x1 convolution's input through a workspace sized for whole channel blocks
(8 channels on AVX2, 16 on AVX-512); in channels_last, with fewer input channels than a block, its
weight gradient writes past that workspace (uxlfoundation/oneDNN#6035). What follows depends on the
heap: a hang, a crash, or a wrong gradient. A ResNet narrower than 16 has such convolutions (the
downsampling shortcuts), so selfsup trains those in NCHW on CPUs. When a torch release fixes the
bug, this script shows every case ``ok`` and the rule can go.

Each case (input channels x threads x layout) runs in its own process, which computes the weight
gradient of a 1x1 convolution at stride 2 (8 output channels, 32 images of 32 x 32) ``--steps``
times and compares each with the float64 gradient (which does not go through oneDNN): ``ok``,
``wrong N of M``, ``hang`` (still running after ``--timeout`` seconds) or ``crash (SIGSEGV)``.

    python benchmarks/onednn_1x1.py
    python benchmarks/onednn_1x1.py --channels 4 8 --threads 2 --layouts channels_last

Writes ``benchmarks/out/onednn_1x1.json`` after every case (a rerun skips the cases it has; a
different torch starts afresh) and prints the table with the CPU's flags and oneDNN's version.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import cpu_flags  # noqa: E402

from selfsup.files import write_json  # noqa: E402
from selfsup.recipes.layout import channels_last_hazards  # noqa: E402
from selfsup.tables import markdown_table  # noqa: E402

CASE = """
import json, sys, torch
channels, threads, layout, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
images = torch.randn(32, channels, 32, 32)
weight = torch.randn(8, channels, 1, 1) / channels ** 0.5
exact = weight.double().requires_grad_()
torch.nn.functional.conv2d(images.double(), exact, stride=2).square().sum().backward()
expected = exact.grad.float()
fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
wrong = 0
for _ in range(steps):
    trained = weight.clone(memory_format=fmt).requires_grad_()
    torch.nn.functional.conv2d(images.contiguous(memory_format=fmt), trained, stride=2).square().sum().backward()
    wrong += not torch.allclose(trained.grad, expected, rtol=1e-4, atol=1e-3 * float(expected.abs().max()))
print(json.dumps({"wrong": wrong, "steps": steps}))
"""


def run_case(channels: int, threads: int, layout: str, steps: int, timeout: float) -> str:
    try:
        done = subprocess.run([sys.executable, "-c", CASE, str(channels), str(threads), layout, str(steps)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang"
    if done.returncode < 0:
        return f"crash ({signal.Signals(-done.returncode).name})"
    if done.returncode != 0:
        return f"error: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    counted = json.loads(done.stdout.strip().splitlines()[-1])
    return "ok" if counted["wrong"] == 0 else f"wrong {counted['wrong']} of {counted['steps']}"


def onednn_version() -> str:
    found = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[2, 4, 7, 8, 12, 15, 16, 24])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layouts", nargs="+", default=["channels_last", "nchw"], choices=["channels_last", "nchw"])
    parser.add_argument("--steps", type=int, default=100, help="weight gradients per case")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds after which a case counts as hung")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "onednn_1x1.json"))
    args = parser.parse_args(argv)

    about = {"torch": torch.__version__, "onednn": onednn_version(), "cpu_flags": cpu_flags()}
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.is_file() else {}
    if report.get("about") != about:
        report = {"about": about, "cases": {}}
    for layout in args.layouts:
        for threads in args.threads:
            for channels in args.channels:
                key = f"{channels} {threads} {layout}"
                if key not in report["cases"]:
                    report["cases"][key] = run_case(channels, threads, layout, args.steps, args.timeout)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_json(path, report)
                print(f"{channels:>3} input channels, {threads} thread(s), {layout}: {report['cases'][key]}", flush=True)

    rows = []
    for key, outcome in report["cases"].items():
        channels, threads, layout = key.split()
        # selfsup's own rule, asked of the case's convolution, not restated here
        guarded = layout == "channels_last" and bool(channels_last_hazards(torch.nn.Conv2d(int(channels), 8, 1, stride=2)))
        rows.append({"input channels": channels, "threads": threads, "layout": layout, "outcome": outcome,
                     "selfsup trains it": "no (NCHW instead)" if guarded else "yes"})
    print(f"\ntorch {about['torch']}, oneDNN {about['onednn']}, CPU flags: {' '.join(about['cpu_flags'])}\n")
    print(markdown_table(rows, ["input channels", "threads", "layout", "outcome", "selfsup trains it"]))
    exposed = [row for row in rows if row["outcome"] != "ok" and row["selfsup trains it"] == "yes"]
    print(f"\n{len(exposed)} failing case(s) that selfsup would train" +
          (": the layout rule is too narrow for this machine" if exposed else ""))
    return 1 if exposed else 0


if __name__ == "__main__":
    sys.exit(main())
