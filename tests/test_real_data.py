"""Learning sanity on a small real subset of Fashion-MNIST (CI installs the Debian package)."""
import json

import pytest

from conftest import FASHION_MNIST, requires_fashion_mnist
from selfsup.config import apply_overrides, resolve
from selfsup.recipes.pretrain import pretrain

pytestmark = [requires_fashion_mnist, pytest.mark.real_data]


def test_simclr_learns_on_fashion_mnist(tmp_path):
    config = resolve(apply_overrides({}, [
        f"data.root={FASHION_MNIST}", "data.subset=2048", "backbone.name=toy", "backbone.width=16",
        "method.proj_hidden_dim=128", "method.proj_dim=64", "views.augment.crop_scale=[0.3, 1.0]",
        "views.augment.jitter=[0.4, 0.4, 0.0, 0.0]", "train.batch_size=128", "train.epochs=3",
        "train.knn_bank_size=2048", "train.knn_test_size=1000", "optim.warmup_epochs=0.5", "train.log_every=1",
    ]))
    pretrain(config, tmp_path, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stream"] == "step"]
    knn = [r["knn_top1"] for r in rows if r["stream"] == "epoch"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, "the NT-Xent loss should fall"
    assert knn[-1] > 40, f"kNN top-1 {knn[-1]}% should be far above chance (10%)"
