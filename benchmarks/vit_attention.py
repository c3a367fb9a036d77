"""The ViT's attention on a CPU: PyTorch's fused kernel against the explicit product (RESULTS 33).

A profile of one DINO-ViT training step in bf16 on a CPU put 42% of it in the fused attention kernel's
backward (``_scaled_dot_product_flash_attention_for_cpu_backward``). ``selfsup.models.vit`` now takes
the explicit product (``softmax(q k^T / sqrt(d)) v``, as DINO's own code writes it) on a CPU in bf16
and keeps the fused kernel elsewhere (:func:`selfsup.models.vit.fused_attention_is_faster`). This
measures the rule, side by side in one process, interleaved round by round:

(a) the attention alone, forward and backward, at the shapes of the Fashion-MNIST presets' ViT-tiny
    (3 heads of 64; 50 tokens: a 28 px view in 4 px patches + [CLS]; 10 tokens: DINO's 12 px local
    crops), in fp32 and, where the CPU runs it natively, bf16: milliseconds, medians over rounds;
(b) whole training steps of DINO on ViT-tiny (``dino_fashion_mnist``: 2 global + 6 local crops) and of
    MaskFeat, each with the fused kernel forced and with the rule: img/s and the paired ratio.

    python benchmarks/vit_attention.py                  # both parts, about 10 minutes on 2 cores
    python benchmarks/vit_attention.py --parts a --rounds 3

Writes ``benchmarks/out/vit_attention.json`` (with the CPU's flags) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import cpu_supports_bf16, describe_device, library_versions
from selfsup.models import vit
from selfsup.recipes.pretrain import Pretraining
from throughput import cpu_flags, interleaved_rounds, ours_end_to_end, scratch_folder, spread

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"50 tokens (28 px view), batch 512": (512, 3, 50, 64),
          "10 tokens (12 px crop), batch 1536": (1536, 3, 10, 64)}


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return vit.attention_weights(q, k) @ v


def attention_ms(function, shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> float:  # noqa: ANN001
    """Milliseconds of one forward and backward, the mean of ``repeats`` after one untimed call."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator).to(dtype).requires_grad_() for _ in range(3))

    def once() -> None:
        function(q, k, v).float().sum().backward()

    once()
    started = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - started) / repeats * 1000


def attention_alone(dtypes: list[torch.dtype], rounds: int, repeats: int) -> list[dict]:
    rows = []
    for label, shape in SHAPES.items():
        for dtype in dtypes:
            times = {"fused": [], "explicit": []}
            for _ in range(rounds):
                times["fused"].append(attention_ms(F.scaled_dot_product_attention, shape, dtype, repeats))
                times["explicit"].append(attention_ms(explicit, shape, dtype, repeats))
            ratios = [f / e for f, e in zip(times["fused"], times["explicit"])]
            rows.append({"shape": label, "dtype": str(dtype).removeprefix("torch."),
                         **{f"{name}_ms": round(statistics.median(values), 1) for name, values in times.items()},
                         "fused_over_explicit": spread(ratios)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def trainer(preset: str, run_dir: Path, args: argparse.Namespace) -> Pretraining:
    overrides = ["train.knn_every=0", "train.online_probe=false", "train.log_every=1000000", "train.device=cpu",
                 "train.epochs=10", f"data.subset={args.subset}"] + ([f"data.root={args.data_root}"]
                                                                    if args.data_root else [])
    return Pretraining(resolve(apply_overrides(read_yaml(find_config(preset)), overrides)), run_dir, quiet=True)


def whole_steps(args: argparse.Namespace, scratch: Path) -> list[dict]:
    rows = []
    rule = vit.fused_attention_is_faster
    for preset in ("dino_fashion_mnist", "maskfeat_fashion_mnist"):
        training = trainer(preset, scratch / preset, args)
        step = ours_end_to_end(training)

        def with_rule(force_fused: bool):  # noqa: ANN202
            def timed_step() -> int:
                vit.fused_attention_is_faster = (lambda q: True) if force_fused else rule
                try:
                    return step()
                finally:
                    vit.fused_attention_is_faster = rule
            return timed_step

        speeds = interleaved_rounds({"fused kernel": with_rule(True), "the rule": with_rule(False)},
                                    args.rounds, args.steps, args.warmup)
        rows.append({"preset": preset, "precision": training.precision.name,
                     **{f"{name} img/s": round(statistics.median(v), 1) for name, v in speeds.items()},
                     "rule_over_fused": spread([r / f for r, f in zip(speeds["the rule"], speeds["fused kernel"])])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["a", "b"], default=["a", "b"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="(a): calls timed per round")
    parser.add_argument("--steps", type=int, default=3, help="(b): training steps timed per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--subset", type=int, default=4096)
    parser.add_argument("--data-root", help="the Fashion-MNIST folder (default: where selfsup looks)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "vit_attention.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": describe_device(torch.device("cpu")),
              "cpu_flags": cpu_flags(), "versions": library_versions()}
    if "a" in args.parts:
        dtypes = [torch.float32] + ([torch.bfloat16] if cpu_supports_bf16() else [])
        report["attention"] = attention_alone(dtypes, args.rounds, args.repeats)
    if "b" in args.parts:
        report["training"] = whole_steps(args, scratch_folder())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
