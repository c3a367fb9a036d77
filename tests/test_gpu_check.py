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
