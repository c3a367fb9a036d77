"""selfsup reproduce (issue 22): every claim runs end to end on tiny data (a smoke run), reuses
finished runs, writes its verdict and figure, and --list reports the last verdict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_mnist_folder
from selfsup.cli import main
from selfsup.reproduce import CLAIMS, Budget, last_verdicts, reproduce
from selfsup.reproduce.lab import judge


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, Path]:
    """Ten classes of tiny images (ClusterFit's transfer needs classes N_pre never saw), and an output folder."""
    root = tmp_path_factory.mktemp("reproduce")
    return write_mnist_folder(root / "fm", train=160, test=40, classes=10), root / "out"


@pytest.mark.parametrize("name", list(CLAIMS))
def test_every_claim_runs_end_to_end_and_a_second_run_trains_nothing(name, bench):
    data, out = bench
    budget = Budget(smoke=True, device="cpu", data_root=str(data))
    verdict = reproduce(name, out, budget, quiet=True)
    assert verdict.outcome == "inconclusive" and "smoke run" in verdict.would_change  # never a verdict
    assert verdict.figure is not None and verdict.figure.stat().st_size > 5000 and verdict.rows
    text = (out / name / "verdict.md").read_text()
    assert text.startswith(f"## {name}: INCONCLUSIVE") and verdict.finding in text and "| " in text
    record = json.loads((out / name / "verdict.json").read_text())
    assert record["outcome"] == "inconclusive" and record["budget"].startswith("smoke")
    assert record["runs_trained"] >= 1 and record["minutes"] >= 0
    first = json.loads((out / "verdicts.json").read_text())[name]
    runs = {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("summary.json")}
    again = reproduce(name, out, budget, quiet=True)  # every run read back: nothing trained or rewritten
    assert again.finding == verdict.finding
    assert json.loads((out / name / "verdict.json").read_text())["runs_trained"] == 0
    assert json.loads((out / "verdicts.json").read_text())[name]["minutes"] == first["minutes"]  # the training's
    assert {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("summary.json")} == runs
    assert (out / name / "verdicts.md").read_text().count(f"## {name}:") == 2  # appended, not replaced


def test_the_list_shows_each_claim_with_its_last_verdict(bench, capsys):
    data, out = bench
    reproduce("simclr-v2-head", out, Budget(smoke=True, device="cpu", data_root=str(data)), quiet=True)
    assert main(["reproduce", "--list", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    for name in CLAIMS:
        assert name in listing
    line = next(line for line in listing.splitlines() if line.startswith("simclr-v2-head"))
    assert "inconclusive (smoke run" in line and str(out) in line
    assert last_verdicts(out)["simclr-v2-head"]["outcome"] == "inconclusive"


def test_a_claim_from_the_command_line_and_a_misspelt_one(bench, capsys):
    data, out = bench
    assert main(["reproduce", "distillation-temperature", "--smoke", "--device", "cpu", "--data-root", str(data),
                 "--out", str(out), "--quiet"]) == 0
    assert "distillation-temperature: inconclusive" in capsys.readouterr().out
    assert main(["reproduce", "simclr-v2-heads", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no claim 'simclr-v2-heads' (did you mean 'simclr-v2-head'?)" in err and "\n" not in err
    assert main(["reproduce", "simclr-v2-head", "--scale", "0"]) == 2


def test_the_verdict_rule_counts_a_gap_beyond_margin_and_noise():
    assert judge([80.0, 80.2, 79.8], [78.0, 78.1, 77.9], margin=0.5).outcome == "held"
    assert judge([78.0, 78.1, 77.9], [80.0, 80.2, 79.8], margin=0.5).outcome == "not held"
    noisy = judge([82.0, 78.0, 80.0], [79.0, 79.5, 78.5], margin=0.5)  # +1 point, standard error ~1.2
    assert noisy.outcome == "inconclusive" and noisy.threshold > 2.0
    assert judge([80.4], [80.0], margin=0.5).outcome == "inconclusive" and judge([81.0], [80.0], 0.5).error is None
    # what would change it: seeds enough for twice the standard error to fall under the gap, or nothing
    assert "about 18 seeds" in noisy.changes(3, 0.5)  # 3 x (2 x 1.19 / 1.0)^2 = 17.0, rounded up, plus one
    assert "more seeds cannot make it count" in judge([80.3, 80.4], [80.0, 80.1], margin=0.5).changes(2, 0.5)
