"""The EMA teacher update, one fused foreach kernel per group against the per-parameter loop it
replaced, on ResNet-18/50 (the backbones MoCo, BYOL and DINO follow) plus a projection head.

The two variants run interleaved for several rounds (these machines drift); the ratio is taken
within each round, and the median reported. Both are checked to give the same teacher.

    python benchmarks/ema.py                    # ResNet-18 and ResNet-50, 7 rounds
    python benchmarks/ema.py --device cuda      # on a GPU
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from selfsup.blocks.ema import ema_update
from selfsup.engine.runtime import describe_device, pick_device
from selfsup.models import BackboneConfig


@torch.no_grad()
def loop_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """The update as it was: two kernels per parameter, launched from Python."""
    student_params = dict(student.named_parameters())
    for name, param in teacher.named_parameters():
        param.mul_(momentum).add_(student_params[name].detach(), alpha=1 - momentum)


def seconds(update, teacher: nn.Module, student: nn.Module, device: torch.device, repeats: int) -> float:
    update(teacher, student, 0.99)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        update(teacher, student, 0.99)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    results = {"device": describe_device(device), "threads": torch.get_num_threads(), "rows": []}
    for name in args.backbones:
        torch.manual_seed(0)
        backbone = BackboneConfig(name=name).build(3, 32)
        student = nn.Sequential(backbone, nn.Linear(backbone.num_features, 2048), nn.ReLU(), nn.Linear(2048, 256))
        student.to(device)
        teachers = {"loop": copy.deepcopy(student), "foreach": copy.deepcopy(student)}
        loop_update(teachers["loop"], student, 0.5)
        ema_update(teachers["foreach"], student, 0.5, buffers="keep")
        same = max((a - b).abs().max().item() for a, b in zip(teachers["loop"].parameters(),
                                                                 teachers["foreach"].parameters()))
        timings = {"loop": [], "foreach": []}
        for _ in range(args.rounds):
            timings["loop"].append(seconds(loop_update, teachers["loop"], student, device, args.repeats))
            timings["foreach"].append(seconds(lambda t, s, m: ema_update(t, s, m, buffers="keep"),
                                              teachers["foreach"], student, device, args.repeats))
        ratios = [loop / fused for loop, fused in zip(timings["loop"], timings["foreach"])]
        row = {"backbone": name, "tensors": len(list(student.parameters())),
               "parameters_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 1),
               "loop_ms": round(1000 * statistics.median(timings["loop"]), 2),
               "foreach_ms": round(1000 * statistics.median(timings["foreach"]), 2),
               "speed-up (median of rounds)": round(statistics.median(ratios), 2),
               "max_abs_difference": same}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
