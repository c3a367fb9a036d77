"""benchmarks/versus_lightly.py (issue 22, part 2): lightly's side built from the preset's settings, both
sides scored by one path, the run resumable."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
pytest.importorskip("lightly")

from ladder import preset_config  # noqa: E402
from lightly_recipes import METHODS, LightlyMethod, lightly_transform, torchvision_weights  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import children_in_process  # noqa: E402


def preset(method: str, *overrides: str):  # noqa: ANN201
    """The method's Fashion-MNIST preset on a ResNet-18 as the benchmark takes it, with ``overrides``."""
    resnet = ["backbone.name=resnet18", "backbone.patch_size=null", "backbone.registers=0", "backbone.drop_path=0.0"]
    return preset_config(method, resnet + list(overrides))


@pytest.mark.parametrize("method", METHODS)
def test_lightly_transform_gives_the_preset_views(method):
    config = preset(method)
    views = lightly_transform(method, config, 28, (0.29,), (0.35,))(Image.new("L", (28, 28), 128))
    if method == "dino":
        assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2 + [(1, 12, 12)] * config.views["num_local"]
    else:
        assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2
    assert all(torch.isfinite(v).all() for v in views)


def jitters(transform) -> list:  # noqa: ANN001
    """The ColorJitter of every view a lightly multi-view transform draws."""
    return [next(t for t in view.transform.transforms if type(t).__name__ == "RandomApply").transforms[0]
            for view in transform.transforms]


@pytest.mark.parametrize("method", METHODS)
def test_the_preset_jitter_reaches_every_lightly_view_as_given(method):
    transform = lightly_transform(method, preset(method), 28, (0.5,), (0.5,))
    for jitter in jitters(transform):  # DINO's second global view too (lightly leaves its strength at 0.5)
        assert jitter.brightness == pytest.approx((0.6, 1.4)) and jitter.contrast == pytest.approx((0.6, 1.4))
        assert jitter.saturation is None and jitter.hue is None  # grayscale: brightness and contrast only
    if method == "simclr":
        crop = next(t for t in transform.transforms[0].transform.transforms if type(t).__name__ == "RandomResizedCrop")
        assert crop.scale == (0.2, 1.0) and crop.size == (28, 28)


@pytest.mark.parametrize("change, reason", [
    ("views.local_augment.jitter=[0.8, 0.8, 0.0, 0.0]", "jitters every crop alike"),
    ("views.global_augment.solarize_p=0.3", "solarizes the second global view only"),
    ("views.global_size=24", "global views at the image's size"),
])
def test_views_lightly_cannot_express_are_refused(change, reason):
    with pytest.raises(ValueError, match=reason):
        lightly_transform("dino", preset("dino", change), 28, (0.5,), (0.5,))


def test_a_second_view_spec_is_refused_where_lightly_draws_both_views_alike():
    with pytest.raises(ValueError, match="draws both views alike"):
        lightly_transform("simclr", preset("simclr", "views.augment_b.solarize_p=0.2"), 28, (0.5,), (0.5,))


def test_split_batch_norm_exports_as_torchvision_batch_norm_with_averaged_statistics():
    config = preset("moco", "backbone.width=4")
    torch.manual_seed(0)
    model = LightlyMethod("moco", config.backbone.build(1, 16), dict(config.method), total_steps=4, steps_per_epoch=2)
    images = torch.randn(16, 1, 16, 16)
    loss = model.loss([images, images.flip(-1)], step=0)
    loss.backward()
    assert torch.isfinite(loss)
    # both directions scored against the queue as it was, then all 2B keys enqueued at once
    assert model.criterion.memory_bank.bank_ptr.item() == 32
    split = model.backbone.net.bn1
    expected = split.running_mean.view(8, -1).mean(0)
    weights = torchvision_weights(model.backbone)
    import torchvision

    reference = torchvision.models.resnet18().state_dict()
    assert set(weights) == {k for k in reference if not k.startswith("fc.")}
    assert weights["bn1.running_mean"].shape == (4,)
    torch.testing.assert_close(weights["bn1.running_mean"], expected)
    assert model.backbone.net.bn1.training  # exporting left the trained model as it was


SMALL_HEADS = {"simclr": ["method.proj_hidden_dim=32"], "moco": ["method.proj_hidden_dim=32"],
               "byol": ["method.proj_hidden_dim=32", "method.pred_hidden_dim=32"],
               "simsiam": ["method.proj_dim=32", "method.pred_hidden_dim=16"], "barlow_twins": ["method.proj_dim=32"],
               "dino": ["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16"]}


@pytest.mark.parametrize("method", METHODS)
def test_each_lightly_method_steps_with_the_preset_groups(method):
    config = preset(method, "backbone.width=4", *SMALL_HEADS[method])
    torch.manual_seed(0)
    model = LightlyMethod(method, config.backbone.build(1, 16), dict(config.method), total_steps=4, steps_per_epoch=2)
    crops = 2 + (config.views["num_local"] if method == "dino" else 0)
    views = [torch.randn(16, 1, 16 if i < 2 else 8, 16 if i < 2 else 8) for i in range(crops)]
    loss = model.loss(views, step=0)
    loss.backward()
    model.after_backward(0)
    groups = model.parameter_groups()
    trained = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) in trained for p in model.backbone.parameters())
    assert all(g["wd_scale"] == 0.0 for g in groups if all(p.ndim <= 1 for p in g["params"]))
    assert any(g["fixed_lr"] for g in groups) == (method == "simsiam")
    # Norms and biases at their own fraction of the rate where the recipe says (Barlow Twins: 0.0048 / 0.2).
    assert {g["lr_scale"] for g in model.parameter_groups(0.024) if g["wd_scale"] == 0.0} == {0.024}
    if model.teacher_backbone is not None:
        before = [p.clone() for p in model.teacher_backbone.parameters()]
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(1.0)
        model.after_step(0)
        assert all(not torch.equal(a, b) for a, b in zip(before, model.teacher_backbone.parameters()))
        if method == "moco":
            assert model.momentum_at(3) == config.method["momentum"]
        else:
            assert model.momentum_at(0) == pytest.approx(config.method["base_momentum"])
            assert model.momentum_at(4) == pytest.approx(1.0)


def test_the_side_by_side_scores_both_sides_alike_and_a_rerun_skips_what_is_done(mnist_root, tmp_path, monkeypatch,
                                                                                  capsys):
    import versus_lightly

    children_in_process(monkeypatch, versus_lightly)
    out = tmp_path / "versus"
    command = ["--methods", "dino", "--epochs", "1", "--width", "4", "--batch-size", "16", "--data-root",
               str(mnist_root), "--device", "cpu", "--workers", "0", "--out", str(out), "--report",
               str(tmp_path / "report")]
    versus_lightly.main(command)
    report = json.loads((tmp_path / "report" / "versus-lightly.json").read_text())
    assert list(report["rows"]) == ["dino: selfsup", "dino: lightly"]
    for row in report["rows"].values():
        assert all(0 <= row[key] <= 100 for key in ("knn20", "knn200", "linear"))
        assert row["steps"] == 5 and row["epochs"] == 1 and row["peak_rss_mib"] > 0
        # The report grows across sessions and machines: each row names where and how it was trained.
        assert row["machine"] and row["date"] and row["commit"] and row["precision"] in ("fp32", "bf16")
    for side in ("selfsup", "lightly"):  # both sides went through one import: a torchvision checkpoint each
        assert (out / f"dino-{side}" / "scored" / "checkpoints" / "last.pt").is_file()
    assert [g["method"] for g in report["gaps"]] == ["dino"]
    assert all(g["target"] in ("met", "not met") for g in report["gaps"])
    summary = json.loads((out / "dino-lightly" / "run" / "summary.json").read_text())
    assert summary["evaluated"] == "teacher" and len(summary["epoch_losses"]) == 1
    assert not (out / "dino-lightly" / "run" / "last-epoch.pt").exists()
    assert (tmp_path / "report" / "versus-lightly.png").stat().st_size > 5000
    assert "| dino: lightly |" in (tmp_path / "report" / "versus-lightly.md").read_text()
    assert not (out / "versus-lightly.json").exists()  # the runs and the report apart
    capsys.readouterr()
    versus_lightly.main(command)
    assert '{"' not in capsys.readouterr().out  # every row read back, none trained or scored again


def test_a_killed_lightly_run_continues_from_its_last_finished_epoch(mnist_root, tmp_path, monkeypatch):
    from lightly_recipes import train_with_lightly

    config = preset("moco", "backbone.width=4", "train.batch_size=16", "train.epochs=2", f"data.root={mnist_root}",
                    "train.device=cpu", "train.precision=fp32")
    steps, queue_ends = [], []
    original = LightlyMethod.after_step

    class Killed(Exception):
        pass

    def dies_in_the_second_epoch(self, step):
        steps.append(step)
        queue_ends.append(self.criterion.memory_bank.bank_ptr.item())
        if step == 6 and not (tmp_path / "died").exists():
            (tmp_path / "died").touch()
            raise Killed
        original(self, step)

    monkeypatch.setattr(LightlyMethod, "after_step", dies_in_the_second_epoch)
    with pytest.raises(Killed):
        train_with_lightly("moco", config, tmp_path / "run", workers=0, progress=False)
    first_epoch = torch.load(tmp_path / "run" / "last-epoch.pt", weights_only=False)
    assert first_epoch["epoch"] == 1 and not (tmp_path / "run" / "summary.json").exists()
    steps.clear(), queue_ends.clear()
    summary = train_with_lightly("moco", config, tmp_path / "run", workers=0, progress=False)
    assert steps == list(range(5, 10))  # the second epoch only, from its start
    assert queue_ends[0] == 6 * 32  # the queue came back with the weights (lightly keeps it out of state_dict)
    assert summary["epoch_losses"][0] == round(first_epoch["losses"][0], 5) and len(summary["epoch_losses"]) == 2
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


def test_the_gap_table_pairs_every_seed_of_every_method_the_report_holds():
    from versus_lightly import gaps

    def row(seed, knn20, linear):  # noqa: ANN001, ANN202
        return {"seed": seed, "knn20": knn20, "knn200": 80.0, "linear": linear}

    rows = {"simclr: selfsup": row(0, 84.0, 87.0), "simclr: lightly": row(0, 84.5, 87.0),
            "moco: selfsup": row(0, 84.0, 85.0), "moco: lightly": row(0, 83.0, 86.5),
            "simclr: selfsup seed 1": row(1, 85.0, 88.0), "simclr: lightly seed 1": row(1, 84.5, 87.0),
            "byol: selfsup": row(0, 80.0, 80.0)}  # lightly's side not trained yet: no gap
    table = {line["method"]: line for line in gaps(rows, margin=1.0)}
    assert list(table) == ["simclr", "moco"]  # the benchmark's order, whichever run trained them
    assert table["simclr"]["seeds"] == 2 and table["simclr"]["knn20_gap"] == 0.0
    assert table["simclr"]["linear"] == "+0.50 ± 0.50" and table["simclr"]["target"] == "met"
    assert table["moco"]["seeds"] == 1 and table["moco"]["linear"] == "-1.50" and table["moco"]["target"] == "not met"


def test_the_chart_shows_each_side_as_its_mean_over_seeds_with_half_the_range():
    from versus_lightly import side_means

    def row(seed, knn20):  # noqa: ANN001, ANN202
        return {"seed": seed, "knn20": knn20, "knn200": 80.0, "linear": 85.0}

    rows = {"simclr: selfsup": row(0, 84.0), "simclr: lightly": row(0, 84.5),
            "simclr: lightly seed 1": row(1, 83.5), "simclr: selfsup seed 1": row(1, 85.0), "moco: selfsup": row(0, 83.0)}
    names, values, spreads = side_means(rows)
    assert names == ["simclr: selfsup (2 seeds)", "simclr: lightly (2 seeds)", "moco: selfsup"]
    assert values["kNN k=20"] == [84.5, 84.0, 83.0] and values["linear"] == [85.0, 85.0, 85.0]
    assert spreads["kNN k=20"] == [0.5, 0.5, None] and spreads["linear"] == [0.0, 0.0, None]
