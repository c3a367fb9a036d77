"""Fine-tuning with few labels, repeated over label fractions and seeds (SPEC 7): the table of
mean and standard deviation, and a killed sweep that continues where it was."""
import json
import statistics

import pytest

from selfsup.cli import main
from selfsup.recipes import finetune as finetune_module


SWEEP = ["--labels", "0.25", "1", "--seeds", "0", "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
         "--quiet"]


def test_sweep_reports_mean_and_std_over_seeds(pretrained_run, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["eval", "finetune", str(pretrained_run), "--run-dir", str(out)] + SWEEP) == 0
    printed = capsys.readouterr().out
    assert "25% of the labels: test top-1" in printed and "over 2 seed(s)" in printed
    report = json.loads((out / "finetune.json").read_text())
    assert set(report["runs"]) == {"25%", "100%"} and set(report["runs"]["25%"]) == {"0", "1"}
    for row in report["summary"]:
        values = list(report["runs"][row["labels"]].values())
        assert row["mean top-1 (%)"] == pytest.approx(statistics.mean(values), abs=0.01)
        assert row["std"] == pytest.approx(statistics.stdev(values), abs=0.01)
    labelled = {seed: json.loads((out / f"25pct-seed{seed}" / "summary.json").read_text())["steps"] for seed in "01"}
    assert labelled == {"0": 20 // 8, "1": 20 // 8}  # 25% of 80 images, one epoch of batches of 8
    assert "| 25% | 2 |" in (out / "finetune.md").read_text()


def test_a_killed_sweep_continues_where_it_was(pretrained_run, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    original, calls = finetune_module.finetune, []

    def dies_on_the_third_run(*args, **kwargs):
        calls.append(kwargs["labels"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", dies_on_the_third_run)
    assert main(["eval", "finetune", str(pretrained_run), "--run-dir", str(out)] + SWEEP) == 130  # as after Ctrl-C
    done = {name: (out / name / "summary.json").stat().st_mtime_ns for name in ("25pct-seed0", "25pct-seed1")}
    calls.clear()
    assert main(["eval", "finetune", str(pretrained_run), "--run-dir", str(out)] + SWEEP) == 0
    assert calls == [1.0, 1.0]  # only the two runs that had not finished
    assert all((out / name / "summary.json").stat().st_mtime_ns == t for name, t in done.items())
    assert len(json.loads((out / "finetune.json").read_text())["runs"]["100%"]) == 2


def test_layer_modes_from_the_command_line(pretrained_run, tmp_path, capsys):
    from selfsup.engine import checkpoint

    run = tmp_path / "modes"
    assert main(["eval", "finetune", str(pretrained_run), "--layer-modes", "conv1=frozen", "res5=retrain",
                 "--epochs", "1", "--batch-size", "16", "--run-dir", str(run), "--device", "cpu", "--quiet"]) == 0
    names = {g["name"] for g in checkpoint.load(run)["optimizer"]["param_groups"]}
    assert "backbone.conv1" not in names and {"backbone.res5", "backbone.res2", "head"} <= names
    assert main(["eval", "finetune", str(pretrained_run), "--layer-modes", "res5:retrain", "--quiet"]) == 2
    assert "--layer-modes takes STAGE=MODE pairs" in capsys.readouterr().err


def test_supervised_baseline_from_random_init_and_as_a_noisy_n_pre(mnist_root, tmp_path, capsys):
    """`selfsup supervised`: a preset's backbone trained on labels alone; its checkpoint reads back
    as a classifier (distillation teacher, ClusterFit's N_pre) and records the label noise."""
    from selfsup.engine import checkpoint
    from selfsup.recipes.loading import load_classifier

    sets = [arg for item in ("backbone.name=toy", "backbone.width=8", "data.name=fashion_mnist",
                             f"data.root={mnist_root}") for arg in ("--set", item)]
    run = tmp_path / "noisy"
    assert main(["supervised"] + sets + ["--label-noise", "0.5", "--steps", "5", "--batch-size", "8",
                                         "--run-dir", str(run), "--quiet"]) == 0
    assert "trained from random initialisation on 100% of the labels" in capsys.readouterr().out
    state = checkpoint.load(run)
    assert state["step"] == 5 and state["config"]["data"]["label_noise"] == 0.5
    assert state["encoder"]["method"] == "supervised (50% label noise)"
    model, _ = load_classifier(run)
    assert model.head.out_features == 10  # the Fashion-MNIST format names its 10 classes
    assert main(["eval", "knn", str(run), "--quiet"]) == 0
    assert "supervised (50% label noise)" in capsys.readouterr().out
    sweep = tmp_path / "sweep"
    assert main(["supervised"] + sets + ["--labels", "0.25", "1", "--seeds", "0", "1", "--steps", "2",
                                         "--batch-size", "8", "--run-dir", str(sweep), "--quiet"]) == 0
    report = json.loads((sweep / "finetune.json").read_text())
    assert report["checkpoint"] == "random initialisation" and set(report["runs"]["25%"]) == {"0", "1"}
    steps = {json.loads((sweep / name / "summary.json").read_text())["steps"] for name in ("25pct-seed0", "100pct-seed1")}
    assert steps == {2}  # --steps: the same schedule for 20 labelled images as for 80
    assert main(["supervised"] + sets + ["--steps", "0", "--run-dir", str(tmp_path / "bad"), "--quiet"]) == 2


def test_label_smoothing_from_the_command_line(pretrained_run, mnist_root, tmp_path):
    from selfsup.engine import checkpoint

    run = tmp_path / "smooth"
    assert main(["eval", "finetune", str(pretrained_run), "--label-smoothing", "0.1", "--steps", "2",
                 "--batch-size", "8", "--run-dir", str(run), "--quiet"]) == 0
    assert checkpoint.load(run)["step"] == 2
    assert main(["distill", str(run), "--label-smoothing", "0.1", "--steps", "2", "--batch-size", "8",
                 "--run-dir", str(tmp_path / "student"), "--quiet"]) == 2  # a student has a real teacher
