"""selfsup's losses against the `lightly` package's on the same inputs.

SimCLR (NT-Xent), MoCo (InfoNCE with a queue, lightly's NTXentLoss with a memory bank holding
the same keys), BYOL (negative cosine), Barlow Twins and DINO (with its center update), each on
seeded random embeddings of a few sizes. Inputs are float64 and lightly computes in float64;
selfsup computes every loss in float32 (it casts, so that bf16 autocast never reaches a
softmax), so equal formulas differ by float32 rounding: a relative difference near 1e-7.
Prints a markdown table and writes benchmarks/out/lightly_losses.json.

    pip install -e ".[bench]"      # lightly
    python benchmarks/lightly_losses.py
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import torch
from lightly.loss import BarlowTwinsLoss, DINOLoss, NegativeCosineSimilarity, NTXentLoss

from selfsup.engine.runtime import library_versions
from selfsup.losses import barlow_twins, dino_loss, info_nce, negative_cosine, nt_xent

ROOT = Path(__file__).resolve().parents[1]


def comparisons(batch: int, dim: int, seed: int) -> dict[str, tuple[float, float]]:
    """{loss: (selfsup, lightly)} on one draw of inputs."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    z_a, z_b = randn(batch, dim), randn(batch, dim)
    out = {"SimCLR NT-Xent (T 0.5)": (nt_xent(z_a, z_b, 0.5).item(), NTXentLoss(0.5)(z_a, z_b).item())}

    queue = torch.nn.functional.normalize(randn(4 * batch, dim), dim=1)
    moco = NTXentLoss(0.2, memory_bank_size=(len(queue), dim)).double()
    moco.memory_bank.bank.copy_(queue)
    out["MoCo InfoNCE + queue (T 0.2)"] = (info_nce(z_a, z_b, queue, 0.2).item(), moco(z_a, z_b).item())

    out["BYOL 2 - 2 cos"] = ((2 + 2 * negative_cosine(z_a, z_b)).item(),
                             (2 + 2 * NegativeCosineSimilarity()(z_a, z_b)).item())
    out["Barlow Twins (lambda 5e-3)"] = (barlow_twins(z_a, z_b, 5e-3).item(), BarlowTwinsLoss(5e-3)(z_a, z_b).item())

    teacher = [randn(batch, dim) for _ in range(2)]
    student = [randn(batch, dim) for _ in range(6)]
    lightly_dino = DINOLoss(output_dim=dim, warmup_teacher_temp=0.04, teacher_temp=0.04,
                            warmup_teacher_temp_epochs=0, student_temp=0.1, center_momentum=0.9).double()
    center = torch.zeros(dim, dtype=torch.float64)
    out["DINO (2 global + 4 local)"] = (dino_loss(student, teacher, center, 0.1, 0.04).item(),
                                        lightly_dino(teacher, student, epoch=0).item())
    ours_center = 0.1 * torch.cat(teacher).mean(0)  # what selfsup's DINO.update_center does
    theirs_center = lightly_dino.center.flatten()
    if not torch.allclose(ours_center, theirs_center, rtol=1e-6, atol=1e-12):
        raise AssertionError("DINO's center update differs from lightly's element-wise")
    out["DINO center after one update (norm)"] = (ours_center.norm().item(), theirs_center.norm().item())
    return out


def main() -> None:
    rows = {}
    for batch, dim, seed in ((8, 16, 0), (32, 64, 1), (128, 256, 2)):
        for name, (ours, theirs) in comparisons(batch, dim, seed).items():
            rows.setdefault(name, []).append({"batch": batch, "dim": dim, "selfsup": ours, "lightly": theirs,
                                              "abs_diff": abs(ours - theirs),
                                              "rel_diff": abs(ours - theirs) / max(abs(theirs), 1e-12)})
    versions = library_versions() | {"lightly": importlib.metadata.version("lightly")}
    print(f"selfsup vs lightly {versions['lightly']}, 3 input sizes (B x D: 8 x 16, 32 x 64, 128 x 256)\n")
    print("| loss | selfsup (128 x 256) | lightly (128 x 256) | max abs difference | max relative difference |")
    print("|---|---|---|---|---|")
    for name, entries in rows.items():
        last = entries[-1]
        print(f"| {name} | {last['selfsup']:.10g} | {last['lightly']:.10g} | "
              f"{max(e['abs_diff'] for e in entries):.1e} | {max(e['rel_diff'] for e in entries):.1e} |")
    out = ROOT / "benchmarks" / "out" / "lightly_losses.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"versions": versions, "rows": rows}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
