"""ViT token inspection: attention maps and token norms, with and without registers."""
import json

import pytest
import torch

from conftest import tiny_overrides
from selfsup.cli import main
from selfsup.errors import SelfsupError
from selfsup.models import build_backbone
from selfsup.explore.tokens import token_statistics


def _sets(settings):
    return [arg for value in settings for arg in ("--set", value)]


def test_token_statistics_of_a_vit_with_registers():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", 1, 16, patch_size=4, registers=3)
    stats = token_statistics(vit, torch.randn(5, 1, 16, 16))
    assert stats["attention"].shape == (5, 4, 4)
    # [CLS] attends to itself, the registers and the patches: the patch share is below 1.
    assert (stats["attention"].sum((1, 2)) < 1).all() and (stats["attention"] >= 0).all()
    assert stats["patch_norms"].shape == (5 * 16,) and stats["register_norms"].shape == (5 * 3,)
    assert 0.0 <= stats["outlier_share"] <= 1.0 and stats["registers"] == 3


def test_token_statistics_count_a_high_norm_patch_as_an_outlier():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", 1, 16, patch_size=4)
    vit.blocks = vit.blocks[:1]
    with torch.no_grad():  # one patch position whose embedding is huge: its token keeps a huge norm
        vit.position[0, 1 + 5].fill_(50.0)
    stats = token_statistics(vit, torch.zeros(2, 1, 16, 16))
    assert stats["outlier_share"] == pytest.approx(1 / 16)


def test_token_statistics_refuse_a_resnet():
    with pytest.raises(SelfsupError, match="need a ViT"):
        token_statistics(build_backbone("toy", 1, 16, width=4), torch.zeros(1, 1, 16, 16))


@pytest.mark.slow
def test_tokens_command_draws_dino_vits_with_and_without_registers(mnist_root, tmp_path, capsys):
    runs = []
    for registers in (0, 2):
        run = tmp_path / f"dino-r{registers}"
        sets = tiny_overrides(mnist_root, method__name="dino", backbone__name="vit_tiny", backbone__width=64,
                              backbone__registers=registers, method__out_dim=32, method__hidden_dim=32,
                              views__num_local=2, train__epochs=1, train__max_steps=2, train__knn_every=0)
        assert main(["pretrain", "--run-dir", str(run), "--quiet"] + _sets(sets)) == 0
        runs.append(str(run))
    out = tmp_path / "tokens"
    assert main(["tokens", *runs, "--images", "3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "0 registers" in printed and "2 registers" in printed
    assert (out / "attention.png").stat().st_size > 0 and (out / "token-norms.png").stat().st_size > 0
    summary = json.loads((out / "tokens.json").read_text())
    assert sorted(entry["registers"] for entry in summary.values()) == [0, 2]
