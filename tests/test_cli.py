"""Every CLI command, end to end, on tiny data."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import selfsup
from conftest import tiny_overrides, write_cifar, write_image_folder, write_stl10
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.recipes.loading import load_encoder
from selfsup.views import EvalView

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "selfsup" / "configs"


def _sets(items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture
def trained_run(mnist_root, tmp_path):
    """A finished tiny run with a ResNet-18 (width 8), shared by the eval/export/report tests."""
    run = tmp_path / "run"
    args = ["pretrain", "--run-dir", str(run), "--quiet"] + _sets(tiny_overrides(
        mnist_root, backbone__name="resnet18", train__epochs=1))
    assert main(args) == 0
    return run


def test_pretrain_eval_report(trained_run, capsys):
    assert main(["eval", "all", str(trained_run), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "simclr (last, step 4)  knn: top-1" in printed and "linear: top-1" in printed
    results = json.loads((trained_run / "eval" / "results.json").read_text())
    entry = results["simclr (last, step 4)"]
    assert 0 <= entry["knn"]["top1"] <= 100 and entry["linear"]["weight_decay"] in (0.0, 0.001)
    assert "| simclr (last, step 4) | knn |" in (trained_run / "eval" / "results.md").read_text()
    # What was evaluated, as fields (the report reads these, never the display name).
    assert {key: entry["about"][key] for key in ("stem", "step", "network", "features")} == \
        {"stem": "last", "step": 4, "network": "student", "features": "backbone"}
    assert "| about |" not in (trained_run / "eval" / "results.md").read_text()
    assert list((trained_run / "eval" / "features").glob("last-*.pt"))  # cached for the next protocol
    assert main(["eval", "knn", str(trained_run / "checkpoints" / "best.pt"), "--k", "5", "--quiet"]) == 0
    assert json.loads((trained_run / "eval" / "results.json").read_text())[
        "simclr (best, step 4)"]["knn"]["k"] == 5
    capsys.readouterr()
    # The conventions side by side (DINO: k 10, 20, 100, 200; solo-learn: 20; NPID: 200), one neighbour search.
    assert main(["eval", "knn", str(trained_run), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| k | T | top-1 (%) | reported by |" in printed and "| 20 | 0.07 |" in printed
    assert "DINO, solo-learn |" in printed and "DINO, NPID, selfsup's default |" in printed
    assert main(["eval", "knn", str(trained_run), "-k", "5,50", "-T", "0.07", "-T", "0.1", "--quiet"]) == 0
    entries = json.loads((trained_run / "eval" / "results.json").read_text())["simclr (last, step 4)"]
    assert {"knn k=5, T=0.07", "knn k=50, T=0.1"} <= set(entries) and entries["knn"]["k"] == 5
    assert capsys.readouterr().out.count("| 50 | 0.1 |") == 1
    assert main(["report", str(trained_run)]) == 0
    assert "## Evaluation" in (trained_run / "report" / "summary.md").read_text()


def test_eval_pixels_baseline(mnist_root, tmp_path, capsys):
    out = tmp_path / "pixels"
    assert main(["eval", "knn", "--pixels", "--data-root", str(mnist_root), "--out", str(out), "--quiet"]) == 0
    assert "raw pixels  knn: top-1" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["raw pixels"]["knn"]["top1"] > 50  # banded classes


def test_export_loads_into_plain_torchvision(trained_run, tmp_path):
    out = tmp_path / "export" / "backbone.safetensors"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    namespace: dict = {}
    exec(info["recipe"].replace(out.name, str(out)), namespace)  # only torch, torchvision, safetensors
    plain = namespace["model"].eval()
    assert type(plain).__module__ == "torchvision.models.resnet"
    encoder, _, meta = load_encoder(trained_run)
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    x = EvalView(16, meta.data.mean, meta.data.std)(images)
    with torch.no_grad():
        assert torch.allclose(plain(x), encoder.eval()(x), atol=1e-5)
    assert main(["export", str(trained_run), "--out", str(tmp_path / "b.pt")]) == 0
    assert set(torch.load(tmp_path / "b.pt", weights_only=True)) == set(plain.state_dict())


def test_data_commands(mnist_root, tmp_path, capsys):
    assert main(["data", "list"]) == 0
    assert "fashion_mnist" in capsys.readouterr().out
    assert main(["data", "prepare", "fashion_mnist", "--root", str(mnist_root)]) == 0
    grid = tmp_path / "grid.png"
    assert main(["data", "inspect", "fashion_mnist", "--root", str(mnist_root), "--grid", str(grid), "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out.split("sample grid")[0].split("ready in")[-1].split("\n", 1)[1])
    assert info["images"] == 80 and info["shape"] == [1, 16, 16] and grid.stat().st_size > 1000


def test_list_methods_print_config_and_help(capsys):
    assert main(["pretrain", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "simclr" in out and "simclr_fashion_mnist" in out
    assert main(["pretrain", "-c", "simclr_cifar10", "--print-config", "--set", "optim.lr=0.7"]) == 0
    assert "lr: 0.7" in capsys.readouterr().out
    assert main(["pretrain", "--help"]) == 0  # argparse's exits become main's return value
    assert "--resume" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"selfsup {selfsup.__version__}"


def test_demo_runs_end_to_end(mnist_root, tmp_path, capsys):
    run = tmp_path / "demo"
    sets = _sets(tiny_overrides(mnist_root, train__epochs=1)) + ["--minutes", "0"]  # the preset's epochs
    assert main(["demo", "--run-dir", str(run), "--quiet"] + sets) == 0
    table = capsys.readouterr().out
    for row in ("| simclr (last, step 4) | knn |", "| simclr (last, step 4) | linear |",
                "| raw pixels | knn |", "| raw pixels | linear |"):
        assert row in table
    assert (run / "report" / "summary.md").is_file()
    first = json.loads((run / "summary.json").read_text())
    assert main(["demo", "--run-dir", str(run), "--quiet"] + sets) == 0  # a finished demo is re-evaluated
    again = json.loads((run / "summary.json").read_text())
    assert again["steps"] == first["steps"] and again["train_seconds"] == first["train_seconds"]


def test_demo_fits_its_time_budget_and_says_how(mnist_root, tmp_path, capsys, monkeypatch, fixed_clock):
    from selfsup import demo

    run = tmp_path / "demo"
    sets = _sets(tiny_overrides(mnist_root, train__epochs=1000))
    # The evaluation's estimate times a real forward pass; the demo then plans with a fixed one.
    seconds, how = demo.estimate_evaluation_seconds(load_config(None, [item for item in sets if item != "--set"]))
    assert seconds > 0 and "img/s" in how and "probes about" in how
    monkeypatch.setattr(demo, "estimate_evaluation_seconds", lambda config: (3.0, "3 s here"))
    assert main(["demo", "--run-dir", str(run), "--minutes", "0.1"] + sets) == 0  # 6 s in all
    printed = capsys.readouterr().out
    assert "time budget 0.1 min: evaluation about 0.1 min (3 s here), pretraining 0.1 min" in printed
    assert "measured 0.25 s/step" in printed and "demo finished in" in printed
    summary = json.loads((run / "summary.json").read_text())
    # 6 s less 3 s of evaluation leave 3 s: 97% of them at 0.25 s a step, on any machine.
    assert summary["budget"]["minutes"] == pytest.approx(0.05) and summary["steps"] == 11
    monkeypatch.setattr(demo, "estimate_evaluation_seconds", lambda config: (100.0, "slow"))
    assert main(["demo", "--run-dir", str(tmp_path / "slow"), "--minutes", "1"] + sets) == 2
    assert "a 1 min demo leaves -40 s for pretraining" in capsys.readouterr().err


def test_pretrain_network_flag_sets_what_is_evaluated(capsys):
    assert main(["pretrain", "-c", "dino_fashion_mnist", "--network", "student", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["eval"]["network"] == "student"


@pytest.mark.parametrize("command, strategy", [
    (["eval", "finetune"], "finetune"), (["supervised"], "supervised"), (["distill", "teacher"], "distill"),
    (["cluster", "n_pre"], "cluster"), (["continual"], "continual"), (["semisup"], "semisup"),
    (["multitask"], "multitask")])
def test_each_strategy_trains_by_its_recipe_defaults(command, strategy):
    """The parser's --epochs/--lr are the recipes' (one table), and the flags build the same settings
    the Python API gets from ClassifierTraining.for_strategy."""
    from selfsup.cli import build_parser
    from selfsup.cli.common import classifier_training
    from selfsup.defaults import TRAINING_DEFAULTS
    from selfsup.recipes import ClassifierTraining

    args = build_parser().parse_args(command)
    defaults = TRAINING_DEFAULTS[strategy]
    assert (args.epochs, args.lr, args.weight_decay, args.batch_size) == \
        (defaults.epochs, defaults.lr, defaults.weight_decay, defaults.batch_size)
    built = classifier_training(args, strategy, start_lr_scale=0.1)
    assert built == ClassifierTraining.for_strategy(strategy, start_lr_scale=0.1, device="auto", precision="auto")
    assert (built.optim.name, built.optim.weight_decay, built.optim.warmup_epochs) == ("sgd", 5e-4, 0.0)
    assert built.backbone_lr_scale == (0.1 if defaults.backbone_lr_scale is None else defaults.backbone_lr_scale)
    if hasattr(args, "backbone_lr_scale"):  # the strategies that start from an encoder
        changed = build_parser().parse_args([*command, "--backbone-lr-scale", "0.5"])
        assert classifier_training(changed, strategy, start_lr_scale=0.1).backbone_lr_scale == 0.5


def test_training_defaults_of_an_unknown_strategy_are_refused():
    from selfsup.errors import SelfsupError
    from selfsup.recipes import ClassifierTraining

    with pytest.raises(SelfsupError, match="no training defaults for 'continuall'"):
        ClassifierTraining.for_strategy("continuall")
    with pytest.raises(SelfsupError, match="give lr= and weight_decay="):  # not silently dropped
        ClassifierTraining.for_strategy("continual", optim=ClassifierTraining().optim)


def test_key_value_flags_are_parsed_once():
    from selfsup.cli.common import parse_pairs
    from selfsup.errors import SelfsupError

    assert parse_pairs(["coarse=0.5", "class=2"], "--weights", "coarse=0.5", float) == {"coarse": 0.5, "class": 2.0}
    assert parse_pairs(["threshold=0.9", "t=[1, 2]"], "--option", "threshold=0.9", yaml.safe_load) == \
        {"threshold": 0.9, "t": [1, 2]}
    with pytest.raises(SelfsupError, match=r"--weights takes TASK=WEIGHT pairs \(e.g. coarse=0.5\), got coarse"):
        parse_pairs(["coarse"], "--weights", "coarse=0.5", float, form="TASK=WEIGHT")
    with pytest.raises(SelfsupError, match="--weights: could not convert"):
        parse_pairs(["coarse=half"], "--weights", "coarse=0.5", float)
    with pytest.raises(SelfsupError, match="--option: while parsing a flow sequence"):
        parse_pairs(["t=[0.9"], "--option", "threshold=0.9", yaml.safe_load)


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--set", "optim.lrr=1"], "error: unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    (["pretrain", "-c", "no_such_preset"], "error: config 'no_such_preset' not found (presets: barlow_twins_cifar10, "),
    (["eval", "knn", "missing/run"], "error: checkpoint missing/run does not exist"),
    (["data", "inspect", "fashoin_mnist"], "(did you mean 'fashion_mnist'?)"),
])
def test_errors_are_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_error_from_a_real_process_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "selfsup", "eval", "linear", str(tmp_path / "x.pt")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def _preset_data(name: str, tmp_path: Path, mnist_root: Path) -> list[str]:
    from selfsup.config import load_config

    dataset = load_config(CONFIGS / f"{name}.yaml").data.name
    if dataset == "cifar10":
        return [f"data.root={write_cifar(tmp_path / 'c10', 'cifar10', train=20, test=10)}"]
    if dataset == "cifar100":
        return [f"data.root={write_cifar(tmp_path / 'c100', 'cifar100', train=20, test=10)}"]
    if dataset == "stl10":
        return [f"data.root={write_stl10(tmp_path / 'stl')}"]
    if dataset == "imagefolder":
        return [f"data.root={write_image_folder(tmp_path / 'img', per_class=4)}", "data.image_size=32"]
    return [f"data.root={mnist_root}"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_preset_trains_two_steps(preset, mnist_root, tmp_path, monkeypatch):
    """Recipes cannot rot: each preset, its own model, two steps on tiny data of its format. (The run's
    report, half of each case's time, is the same code for every preset and tested on its own.)"""
    monkeypatch.setattr(importlib.import_module("selfsup.recipes.pretrain"), "write_report", lambda run_dir: None)
    recipe = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    sets = _preset_data(preset, tmp_path, mnist_root) + [
        "train.batch_size=4", "train.max_steps=2", "train.knn_every=0", "train.online_probe=false",
        "optim.warmup_epochs=0", "train.channels_last=false"]
    if recipe["backbone"]["name"].startswith("resnet"):
        sets.append("backbone.width=16")  # the preset's architecture, narrower: the recipe is under test, not the FLOPs
    method = recipe["method"]
    sets += [f"method.{key}=1024" for key in ("proj_dim", "proj_hidden_dim", "pred_hidden_dim", "out_dim")
             if method.get(key, 0) > 2048]  # Barlow Twins' 8192 x 8192 layers alone take 25 s a step
    assert main(["pretrain", "-c", preset, "--run-dir", str(tmp_path / "run"), "--quiet"] + _sets(sets)) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2


def test_eval_layers_probes_every_stage_and_overlays_checkpoints(trained_run, mnist_root, tmp_path, capsys):
    rotation = tmp_path / "rotation"
    assert main(["pretrain", "--run-dir", str(rotation), "--quiet"] + _sets(tiny_overrides(
        mnist_root, method__name="rotation", backbone__name="resnet18", train__epochs=1))) == 0
    out = tmp_path / "layers"
    assert main(["eval", "layers", str(trained_run), str(rotation), "--out", str(out), "--dim", "64", "128",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| encoder | conv1 | res2 | res3 | res4 | res5 |" in printed
    assert "| encoder | pooled size |" in printed and "| ~128 |" in printed
    results = json.loads((out / "layers.json").read_text())
    assert sorted(results) == ["rotation (last, step 4)", "simclr (last, step 4)"]
    for entry in results.values():
        assert list(entry["stages"]) == ["conv1", "res2", "res3", "res4", "res5"]
        assert all(0 <= s["top1"] <= 100 and 16 <= s["dim"] <= 128 for s in entry["stages"].values())
        assert sorted(entry["by_dim"]) == ["128", "64"]
        assert entry["by_dim"]["64"]["res5"] == entry["stages"]["res5"]["top1"]  # the first size is the main table
    assert (out / "layers.png").stat().st_size > 5000 and (out / "layers.md").is_file()
    assert (out / "layers-dims.png").stat().st_size > 5000
    assert main(["eval", "layers", "--out", str(out)]) == 2  # no checkpoint: one clear error


def test_pooled_grid_keeps_stage_sizes_comparable():
    from selfsup.eval.layers import pooled_grid

    assert pooled_grid(64, 28, 2048) == 6 and pooled_grid(512, 4, 2048) == 2 and pooled_grid(8, 2, 2048) == 2
    assert pooled_grid(4096, 7, 2048) == 1
