"""benchmarks/gpu_check.py runs on the CPU too, so that it cannot rot before a GPU is lent."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_end_to_end_on_the_cpu(mnist_root, tmp_path):
    out, scratch = tmp_path / "gpu_check.md", tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--methods", "simclr", "dino", "--no-lightly", "--data-root", str(mnist_root),
                           "--out", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert all(row["ok"] and row["steps"] == 2 for row in report["presets"].values())
    assert {"simclr: end to end", "simclr: model only", "dino: end to end"} <= set(report["throughput"]["variants"])
    assert 0 <= report["smoke"]["knn_top1"] <= 100 and report["smoke"]["steps"] == 5  # one epoch of 80 images
    text = out.read_text()
    assert text.startswith("## GPU check") and "(a) 2 of 2 method x precision runs trained 2 steps." in text
    assert report["decoding"]["images"] == 64 and report["decoding"]["crops"] == 128  # every image, two crops each
    assert "| simclr: end to end / model only |" in text and "(d) decoding 64 JPEGs" in text
    assert "(e) SimCLR smoke:" in text
    assert not list(scratch.glob("selfsup-*"))  # its 0.4 GB of data and runs are removed


def test_the_views_profile_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_views.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_views.py"), "--device", "cpu", "--quick",
                           "--methods", "dino", "--profile", "dino", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    row = json.loads(out.read_text())["methods"]["dino"]
    assert "error" not in row, row
    assert row["views"] == 8 and set(row["ops ms"]) == {"global_crop", "global_crop_b", "local_crop"}
    for timings in row["ops ms"].values():  # each replacement timed beside what it replaced
        assert {"RandomResizedCrop", "kornia RandomResizedCrop (before)", "ColorJitter",
                "ColorJitter in chunks (before)", "Normalize", "kornia Normalize (before)",
                "RandomHorizontalFlip", "kornia RandomHorizontalFlip (before)"} <= set(timings)
        assert all(ms > 0 for ms in timings.values())
    assert row["views with every previous op ms"] > 0 and "aten::nonzero" in row["profile"]["table"] + str(
        row["profile"]["host syncs and copies (3 calls)"])
