"""benchmarks/ladder.py (issue 22) runs end to end on tiny data and continues where it stopped."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_ladder_scores_every_row_alike_and_a_rerun_skips_what_is_done(mnist_root, tmp_path):
    out = tmp_path / "ladder"
    command = [sys.executable, str(ROOT / "benchmarks" / "ladder.py"), "--methods", "simclr", "rotation",
               "--vit-methods", "--epochs", "1", "--backbone", "toy", "--width", "4", "--seeds", "0", "1",
               "--seeded", "simclr", "--batch-size", "16", "--data-root", str(mnist_root), "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((out / "ladder.json").read_text())["rows"]
    assert list(rows) == ["raw pixels", "random init", "supervised (1 epochs, all labels)", "simclr",
                          "simclr seed 1", "rotation"]
    for row in rows.values():
        assert all(0 <= row[key] <= 100 for key in ("knn20", "knn200", "linear"))
    assert rows["simclr"]["epochs"] == 1 and rows["simclr"]["peak_rss_mib"] > 0
    assert isinstance(rows["simclr"]["img_per_s"], (int, float))  # recorded; its value is the machine's, not tested
    assert rows["simclr"]["seed"] == 0 and rows["simclr seed 1"]["seed"] == 1
    assert (out / "ladder.png").stat().st_size > 5000 and "| simclr seed 1 |" in (out / "ladder.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and '{"' not in again.stdout  # every row read back, none trained or scored again
    scored = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ladder.py"), "--score", str(out / "simclr")],
                            capture_output=True, text=True, timeout=900)
    assert scored.returncode == 0, scored.stderr[-3000:]
    row = json.loads(scored.stdout.strip().splitlines()[-1])[str(out / "simclr")]
    assert {key: row[key] for key in ("knn20", "knn200", "linear", "steps")} == \
        {key: rows["simclr"][key] for key in ("knn20", "knn200", "linear", "steps")}
