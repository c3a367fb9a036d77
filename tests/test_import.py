"""`selfsup import`: a torchvision ResNet's weights as a selfsup checkpoint (ClusterFit's N_pre can
be any network), loaded exactly, and refused with the reason when they do not fit."""
import pytest
import torch
from safetensors.torch import save_file

from selfsup.cli import main
from selfsup.models import torchvision_resnet
from selfsup.recipes.loading import load_encoder


def _torchvision_weights(tmp_path, small_stem=False, suffix=".pth", wrap=False):
    torch.manual_seed(0)
    net = torchvision_resnet(18, in_channels=3, small_stem=small_stem, width=8)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    weights["fc.weight"], weights["fc.bias"] = torch.randn(10, 64), torch.randn(10)  # a classifier, dropped
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}} if wrap else weights, path)
    return path, weights


@pytest.mark.parametrize("suffix,wrap", [(".pth", False), (".pth", True), (".safetensors", False)])
def test_imported_weights_are_the_torchvision_network(mnist_root, tmp_path, capsys, suffix, wrap):
    path, weights = _torchvision_weights(tmp_path, suffix=suffix, wrap=wrap)
    run = tmp_path / "imported"
    assert main(["import", str(path), "--run-dir", str(run), "--data-root", str(mnist_root), "--quiet"]) == 0
    assert "selfsup eval all" in capsys.readouterr().out
    encoder, config, meta = load_encoder(run)
    assert config.backbone.width == 8 and config.backbone.small_stem is False  # read from the weights
    own = encoder.net.state_dict()
    assert torch.equal(own["conv1.weight"], weights["conv1.weight"].sum(1, keepdim=True))  # RGB -> gray
    assert all(torch.equal(own[k], v) for k, v in weights.items() if k != "conv1.weight" and not k.startswith("fc."))
    gray = torch.rand(2, 1, 16, 16)
    reference = torchvision_resnet(18, 3, False, 8)
    reference.load_state_dict({k: v for k, v in weights.items() if not k.startswith("fc.")})
    encoder.eval(), reference.eval()
    assert torch.allclose(encoder(gray), reference(gray.repeat(1, 3, 1, 1)), atol=1e-5)
    assert main(["eval", "knn", str(run), "--quiet"]) == 0
    assert "torchvision resnet18 (last, step 0)  knn: top-1" in capsys.readouterr().out


def test_import_refuses_what_does_not_fit(mnist_root, tmp_path, capsys):
    path, _ = _torchvision_weights(tmp_path)
    base = ["--data-root", str(mnist_root), "--quiet"]
    cases = (
        (["import", str(path), "--run-dir", str(tmp_path / "a"), "--set", "backbone.name=resnet34"] + base,
         "do not fit this model"),
        (["import", str(tmp_path / "missing.pth"), "--run-dir", str(tmp_path / "b")] + base, "does not exist"),
        (["import", str(path), "--run-dir", str(tmp_path / "c"), "--set", "backbone.name=toy"] + base,
         "needs a ResNet backbone"),
    )
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    assert main(["import", str(tmp_path / "notes.pth"), "--run-dir", str(tmp_path / "d")] + base) == 2
    err = capsys.readouterr().err  # bytes that are no pickle are not called code that could run (issue 21)
    assert "notes.pth is not a readable checkpoint" in err and "left untouched" in err and "run code" not in err
    (tmp_path / "damaged.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    assert main(["import", str(tmp_path / "damaged.safetensors"), "--run-dir", str(tmp_path / "e")] + base) == 2
    assert "damaged.safetensors is not a readable safetensors file" in capsys.readouterr().err
