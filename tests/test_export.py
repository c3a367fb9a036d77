"""`selfsup export`: weights that plain torchvision and timm load (ResNet and ViT), equal to the
encoder through the card's own recipe; the card's preprocessing, provenance and results; ONNX
equal to PyTorch under onnxruntime; and every refusal naming the file or key and the fix.

Checkpoints are written directly in the checkpoint format (no training): tiny networks with
random weights and random BatchNorm statistics, so that eval-mode outputs are not trivial."""
import hashlib
import json
import os
import sys

import pytest
import torch

from selfsup.cli import main
from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import checkpoint
from selfsup.recipes.loading import build_model, load_encoder

DATA = {"dataset": "fashion_mnist", "images": 64, "channels": 1, "image_size": 16, "mean": [0.286], "std": [0.353],
        "classes": ["a", "b", "c", "d"], "skipped": 0, "held_out": 0}
RESNET = {"name": "resnet18", "width": 8, "small_stem": True}
VIT = {"name": "vit_tiny", "patch_size": 4}


def write_checkpoint(path, backbone, step=7):
    """A selfsup checkpoint at ``path`` whose backbone (config section ``backbone``) has random weights."""
    config = resolve({"data": {"name": "fashion_mnist"}, "backbone": backbone})
    torch.manual_seed(1)
    model = config.backbone.build(DATA["channels"], DATA["image_size"])
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0.0, 0.1)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": config.to_dict(), "data": DATA,
             "encoder": {"prefix": "backbone"}, "model": {f"backbone.{k}": v for k, v in model.state_dict().items()},
             "step": step, "epoch": 1}
    checkpoint.save_atomic(state, path)
    return path


def encoder_output(ckpt, x):
    encoder, _, _ = load_encoder(ckpt)
    with torch.no_grad():
        return encoder.eval()(x)


@pytest.mark.parametrize("backbone,library", [
    (RESNET, "torchvision"),
    ({"name": "resnet50", "width": 8, "small_stem": True}, "timm"),  # Bottleneck blocks at another width
    ({"name": "resnet18", "width": 8, "small_stem": False, "norm": "layer"}, "timm"),
    (RESNET, "timm"),
    (VIT, "torchvision"),
    (VIT, "timm"),
    ({**VIT, "registers": 2}, "timm"),
    ({**VIT, "registers": 1, "pool": "mean"}, "timm"),  # global_pool='avg' must skip the register too
], ids=["resnet-torchvision", "resnet50-timm", "resnet-layernorm-timm", "resnet-timm", "vit-torchvision", "vit-timm",
        "vit-registers-timm", "vit-mean-pool-timm"])
def test_the_cards_recipe_rebuilds_the_encoder_in_plain_torchvision_and_timm(tmp_path, monkeypatch, capsys,
                                                                            backbone, library):
    pytest.importorskip("timm")
    ckpt = write_checkpoint(tmp_path / "model.pt", backbone)
    out = tmp_path / "export" / f"encoder-{library}.safetensors"
    assert main(["export", str(ckpt), "--out", str(out), "--format", library, "--quiet"]) == 0
    printed = capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert f"wrote {out}" in printed and card["recipe"].splitlines()[0] in printed
    assert "selfsup" not in card["recipe"] and card["architecture"]["library"] == library
    assert card["recipe_check"]["max_abs_diff"] < 1e-5
    if backbone.get("pool") == "mean":
        assert card["output"].endswith("the mean of the patch tokens after the final LayerNorm")

    monkeypatch.chdir(out.parent)  # the recipe names the weights file as it lies next to the card
    namespace: dict = {}
    exec(card["recipe"], namespace)
    model = namespace["model"].eval()
    assert type(model).__module__.startswith(f"{library}.models.")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        features = model(x)
    expected = encoder_output(ckpt, x)
    assert features.shape == expected.shape == (2, card["num_features"])
    assert torch.allclose(features, expected, atol=1e-5)


def test_pt_weights_are_the_target_models_state_dict(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "model.pt", RESNET)
    out = tmp_path / "encoder.pt"
    assert main(["export", str(ckpt), "--out", str(out), "--quiet"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(card["recipe"], namespace)
    assert "torch.load('encoder.pt', weights_only=True)" in card["recipe"]
    saved = torch.load(out, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in namespace["model"].state_dict().items())  # loaded as written


def test_card_holds_architecture_preprocessing_provenance_and_results(tmp_path):
    run = tmp_path / "run"
    ckpt = write_checkpoint(run / "checkpoints" / "best.pt", RESNET, step=12)
    meta = {"git_revision": "abc123", "date": "2026-01-02T03:04:05+00:00", "versions": {"torch": "2.x"},
            "command": ["selfsup", "pretrain"]}
    evaluated = {"simclr (best, step 12)": {"knn": {"top1": 61.5, "k": 20}, "linear": {"top1": 70.25},
                                            "about": {"stem": "best", "step": 12}}}
    other = {"simclr (last, step 40)": {"knn": {"top1": 66.0}, "about": {"stem": "last", "step": 40}},
             "simclr (best, step 12) in a slide's words": {"knn": {"top1": 1.0}},  # no fields: not these weights'
             "raw pixels": {"knn": {"top1": 80.0}}}
    summary = {"steps": 12, "best": 61.5, "best_metric": "knn_top1"}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({**evaluated, **other}))  # only the exported one's kept
    out = tmp_path / "w.safetensors"
    mask = os.umask(0o027)
    try:
        assert main(["export", str(ckpt), "--out", str(out), "--quiet"]) == 0
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o640  # the user's umask, as any file (safetensors alone writes 0600)
    card = json.loads(out.with_suffix(".json").read_text())

    assert card["weights"] == "w.safetensors" and card["num_features"] == 64
    assert card["architecture"]["library"] == "torchvision" and card["architecture"]["model"] == "resnet18"
    assert card["architecture"]["requires"].startswith("torchvision>=")
    assert "conv1 takes 1-channel images" in card["architecture"]["changes"]
    assert card["architecture"]["selfsup_arch"] == {"depth": 18, "in_channels": 1, "small_stem": True, "width": 8}
    pre = card["preprocessing"]
    assert (pre["channels"], pre["image_size"], pre["mean"], pre["std"]) == (1, 16, DATA["mean"], DATA["std"])
    assert "[0, 1]" in pre["pixels"] and "(x - mean) / std" in pre["pixels"] and "16x16" in pre["resize"]
    source = card["provenance"]
    assert source["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert source["checkpoint"] == str(ckpt.resolve()) and (source["step"], source["epoch"]) == (12, 1)
    assert (source["method"], source["dataset"]) == ("simclr", "fashion_mnist")
    assert source["run"]["git_revision"] == "abc123" and source["run"]["date"] == meta["date"]
    assert "torch" in source["exported"]["versions"]
    assert card["results"] == {"eval": evaluated, "summary": summary}

    alone = write_checkpoint(tmp_path / "elsewhere" / "model.pt", RESNET)  # not in a run directory
    assert main(["export", str(alone), "--out", str(tmp_path / "alone.safetensors"), "--quiet"]) == 0
    card = json.loads((tmp_path / "alone.json").read_text())
    assert card["results"] == {} and "run" not in card["provenance"]


@pytest.mark.parametrize("backbone", [RESNET, {**VIT, "registers": 1}], ids=["resnet", "vit-registers"])
def test_onnx_equals_pytorch_under_onnxruntime_at_any_batch_size(tmp_path, capsys, backbone):
    ort = pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path / "model.pt", backbone)
    out = tmp_path / "encoder.safetensors"
    library = "timm" if backbone.get("registers") else "torchvision"
    if backbone is RESNET:  # --onnx alone: next to the weights; with the progress bar
        args, onnx_file = ["--onnx"], out.with_suffix(".onnx")
    else:
        args, onnx_file = ["--onnx", str(tmp_path / "onnx" / "vit.onnx"), "--quiet"], tmp_path / "onnx" / "vit.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--format", library] + args) == 0
    captured = capsys.readouterr()
    assert f"wrote {onnx_file} (opset 17, dynamic batch; onnxruntime equals PyTorch" in captured.out
    if backbone is RESNET:
        assert "export" in captured.err  # the progress bar
    card = json.loads(out.with_suffix(".json").read_text())["onnx"]
    assert card["file"] == ("encoder.onnx" if backbone is RESNET else "onnx/vit.onnx")  # relative to the card
    assert card["opset"] >= 17 and card["exporter"] in ("torchscript", "dynamo")
    assert sorted(card["checked_batch_sizes"]) == [1, 2, 5] and card["max_abs_diff"] < 1e-4

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 16, 16)  # a batch size the export did not check
    features = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert torch.allclose(features, encoder_output(ckpt, x), atol=1e-4)


def _fails(args, capsys, *messages):
    assert main(["export"] + [str(a) for a in args]) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    return err


def test_export_refuses_what_it_cannot_do_naming_the_file_or_key_and_the_fix(tmp_path, capsys, monkeypatch):
    resnet = write_checkpoint(tmp_path / "resnet.pt", RESNET)
    _fails([resnet, "--out", tmp_path / "w.txt"], capsys, "--out", "w.txt", "use a .safetensors")
    _fails([resnet, "--onnx", tmp_path / "w.bin", "--out", tmp_path / "w.pt"], capsys, "w.bin", "ending in .onnx")
    assert main(["export", str(resnet), "--format", "keras"]) == 2
    assert "invalid choice: 'keras'" in capsys.readouterr().err

    registers = write_checkpoint(tmp_path / "vit.pt", {**VIT, "registers": 2})
    _fails([registers, "--out", tmp_path / "v.safetensors"], capsys, "2 register tokens", "--format timm")
    mean_pool = write_checkpoint(tmp_path / "vit-mean.pt", {**VIT, "pool": "mean"})
    _fails([mean_pool, "--out", tmp_path / "m.safetensors"], capsys, "backbone.pool: mean", "--format timm")
    toy = write_checkpoint(tmp_path / "toy.pt", {"name": "toy", "width": 8})
    _fails([toy, "--out", tmp_path / "t.safetensors"], capsys, str(toy), "backbone 'toy'", "resnet18")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(resnet.read_bytes()[:1000])
    _fails([truncated, "--out", tmp_path / "x.safetensors"], capsys, str(truncated), "not a readable checkpoint")
    _fails([tmp_path / "missing.pt", "--out", tmp_path / "y.safetensors"], capsys, "missing.pt does not exist")
    assert not (tmp_path / "x.safetensors").exists()

    run = tmp_path / "run"
    in_run = write_checkpoint(run / "checkpoints" / "last.pt", RESNET)
    (run / "summary.json").write_text("{ truncated")
    _fails([in_run, "--out", tmp_path / "r.safetensors"], capsys, str(run / "summary.json"), "repair or delete it")
    assert not (tmp_path / "r.safetensors").exists()  # the card is assembled before anything is written

    config = resolve({"data": {"name": "fashion_mnist"}, "backbone": RESNET})
    trunk = build_model(config, DataFacts.of(DATA)).fine_tune_trunk(1)  # SimCLR v2: backbone + first projection layer
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": config.to_dict(), "data": DATA,
             "encoder": {"prefix": "trunk", "head_layers": 1}, "step": 1, "epoch": 1,
             "model": {f"trunk.{k}": v for k, v in trunk.state_dict().items()}}
    checkpoint.save_atomic(state, tmp_path / "tuned.pt")
    _fails([tmp_path / "tuned.pt", "--out", tmp_path / "t.pt", "--format", "timm"], capsys,
           "1 projection-head layer(s) on its trunk, which a plain timm model has no place for",
           "export the pretraining checkpoint")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    out = tmp_path / "no-ort.safetensors"
    _fails([resnet, "--out", out, "--onnx"], capsys, "'onnxruntime' package", "pip install 'selfsup[export]'")
    assert not out.exists()  # refused before writing anything


def test_a_recipe_that_fails_or_differs_removes_the_weights_and_says_what_to_do(tmp_path, capsys, monkeypatch):
    pytest.importorskip("timm")
    from selfsup.export import resnet

    ckpt = write_checkpoint(tmp_path / "model.pt", RESNET)
    out = tmp_path / "w.safetensors"
    assert main(["export", str(ckpt), "--out", str(out), "--quiet"]) == 0  # an earlier export: its card goes too
    broken = "model = timm.create_model('resnet18', stem_kind='none')\n"  # as an argument an older timm lacks
    monkeypatch.setattr(resnet, "timm_resnet_recipe", lambda arch, weights_file: "import timm\n" + broken)
    _fails([ckpt, "--out", out, "--format", "timm", "--quiet"], capsys, f"the card's recipe for {out.resolve()} fails "
           "with timm", "TypeError", "so the file was removed", "pip install -U timm", "the other --format")
    assert not out.exists() and not out.with_suffix(".json").exists()

    wrong = "import torch\nmodel = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(64))\n"
    monkeypatch.setattr(resnet, "timm_resnet_recipe", lambda arch, weights_file: wrong)
    _fails([ckpt, "--out", out, "--format", "timm", "--quiet"], capsys, str(out), "differs from the encoder by",
           "so the file was removed")
    assert not out.exists()


def test_a_failed_write_is_an_error_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    ckpt = write_checkpoint(tmp_path / "model.pt", RESNET)
    (tmp_path / "a-file").write_text("x")
    _fails([ckpt, "--out", tmp_path / "a-file" / "w.safetensors", "--quiet"], capsys, "could not write",
           "choose another --out")

    def disk_full(weights, path):
        open(path, "wb").write(b"half")
        raise RuntimeError("I/O error: No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "w.safetensors"
    _fails([ckpt, "--out", out, "--quiet"], capsys, f"could not write {out}", "No space left on device")
    assert list(tmp_path.glob("w.*")) == []  # neither the weights, a partial file, nor a card


def test_timm_format_is_written_without_timm(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed: only the recipe's user needs it
    ckpt = write_checkpoint(tmp_path / "vit.pt", {**VIT, "registers": 1})
    out = tmp_path / "vit.safetensors"
    assert main(["export", str(ckpt), "--out", str(out), "--format", "timm", "--quiet"]) == 0
    assert "recipe not run: timm is not installed" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["recipe_check"] == {"skipped": "timm is not installed where the export ran"}
    from safetensors.torch import load_file

    weights = load_file(str(out))
    assert weights["pos_embed"].shape == (1, 1 + 1 + 16, 192) and weights["reg_token"].shape == (1, 1, 192)
    assert not weights["pos_embed"][:, 1].any()  # the register gets no position embedding, as in ours


def test_onnx_falls_back_to_the_torch_export_exporter(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript")
    legacy = torch.onnx.export

    def without_torchscript(*args, dynamo=True, **kwargs):
        if not dynamo:
            raise RuntimeError("the TorchScript-based exporter was removed")
        return legacy(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_torchscript)
    ckpt = write_checkpoint(tmp_path / "model.pt", RESNET)
    out = tmp_path / "w.safetensors"
    with monkeypatch.context() as no_onnxscript:
        no_onnxscript.setitem(sys.modules, "onnxscript", None)
        _fails([ckpt, "--out", out, "--onnx", "--quiet"], capsys, "TorchScript exporter failed (the TorchScript-based "
               "exporter was removed)", "'onnxscript' package: pip install 'selfsup[export]'")
    assert out.is_file() and not out.with_suffix(".onnx").exists()  # the weights and card stand without ONNX
    assert main(["export", str(ckpt), "--out", str(out), "--onnx", "--quiet"]) == 0
    assert "[torch.onnx]" not in capsys.readouterr().out  # --quiet is quiet
    card = json.loads(out.with_suffix(".json").read_text())["onnx"]
    assert card["exporter"] == "dynamo" and card["max_abs_diff"] < 1e-4
    assert sorted(card["checked_batch_sizes"]) == [1, 2, 5]


def test_a_mean_pooled_vit_is_read_by_its_class_token_on_request(tmp_path):
    ckpt = write_checkpoint(tmp_path / "maskfeat.pt", {**VIT, "pool": "mean"})
    by_mean, by_cls = load_encoder(ckpt)[0].eval(), load_encoder(ckpt, ["backbone.pool=cls"])[0].eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        tokens = by_mean.tokens(x)
        assert torch.allclose(by_mean(x), tokens["patches"].mean(1), atol=1e-6)
        assert torch.allclose(by_cls(x), tokens["cls"], atol=1e-6)
