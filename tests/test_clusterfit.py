"""ClusterFit (`selfsup cluster`): every stage end to end on tiny data, the pseudo-labels reaching
N_cf's training, a killed run continuing at the stage it reached, and the layer choice."""
import json

import pytest
import torch

from selfsup.cli import main
from selfsup.recipes import cluster as cluster_module
from selfsup.recipes.cluster import ClusterFitSettings, cluster_features
from selfsup.recipes.loading import load_classifier, load_encoder


ARGS = ["--clusters", "4", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]


def test_cluster_runs_every_stage_and_evaluates_both_networks(pretrained_run, tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["cluster", str(pretrained_run), "--run-dir", str(out), "--student", "backbone.width=4"] + ARGS) == 0
    printed = capsys.readouterr().out
    assert "N_pre: kNN top-1" in printed and "N_cf: kNN top-1" in printed
    report = json.loads((out / "clusterfit.json").read_text())
    assert set(report["results"]) == {"N_pre", "N_cf"}
    assert all(0 <= v <= 100 for r in report["results"].values() for v in r.values())
    clusters = json.loads((out / "clusters.json").read_text())
    assert sum(clusters["sizes"]) == 80 and clusters["smallest"] >= 1 and len(clusters["sizes"]) == 4
    ncf, meta = load_classifier(out / "ncf")
    assert ncf.head.out_features == 4 and meta.classifier["stage"] == "clusterfit"
    assert meta.method == "ClusterFit N_cf (4 clusters)"  # what evaluations call it
    assert load_encoder(out / "ncf")[0].num_features == 4 * 4  # the student's width, not N_pre's 8


def test_pseudo_labels_reach_ncf_and_a_killed_run_continues_at_its_stage(pretrained_run, tmp_path, monkeypatch,
                                                                         capsys):
    out = tmp_path / "cf"
    original, seen = cluster_module.fit_classifier, []

    def interrupted(model, train, *args, **kwargs):
        seen.append(train.targets.clone())
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster_module, "fit_classifier", interrupted)
    assert main(["cluster", str(pretrained_run), "--run-dir", str(out)] + ARGS) == 130
    assignments = torch.load(out / "clusters.pt", weights_only=True)["assignments"]
    assert torch.equal(seen[0], assignments)  # N_cf learns the clusters, not the dataset's labels
    kept = {name: (out / name).stat().st_mtime_ns for name in ("features.pt", "clusters.pt")}

    monkeypatch.setattr(cluster_module, "fit_classifier", original)
    monkeypatch.setattr(cluster_module, "kmeans", lambda *a, **k: pytest.fail("clustered again"))
    assert main(["cluster", str(pretrained_run), "--run-dir", str(out)] + ARGS) == 0
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())
    assert (out / "ncf" / "summary.json").is_file()
    # A damaged cache is a cache: set aside, computed again, and said so (a cut file used to crash every later run).
    features = (out / "features.pt").read_bytes()
    (out / "features.pt").write_bytes(features[:len(features) // 2])
    monkeypatch.undo()  # clustering allowed again
    capsys.readouterr()
    assert main(["cluster", str(pretrained_run), "--run-dir", str(out)] + ARGS) == 0
    assert "features.pt was damaged" in capsys.readouterr().err and len(list(out.glob("features.pt.damaged-*"))) == 1
    assert torch.load(out / "features.pt", weights_only=True)["features"].shape[0] == 80
    # N_cf is read back only for the settings that made it.
    assert main(["cluster", str(pretrained_run), "--run-dir", str(out)] + ARGS + ["--epochs", "2"]) == 2
    assert "ncf was made with other settings (training.epochs: then 1, now 2)" in capsys.readouterr().err


def test_features_of_a_stage_and_bad_layers(pretrained_run):
    output, info = cluster_features(pretrained_run, ClusterFitSettings(layer="output"), quiet=True)
    res2, _ = cluster_features(pretrained_run, ClusterFitSettings(layer="res2", layer_dim=64), quiet=True)
    assert info["images"] == 80 and output.shape == (80, 32) and res2.shape[0] == 80
    assert res2.shape[1] != output.shape[1] and torch.allclose(res2.norm(dim=1), torch.ones(80), atol=1e-5)
    with pytest.raises(Exception, match="unknown layer 'fc7'; use output or one of conv1, res2"):
        cluster_features(pretrained_run, ClusterFitSettings(layer="fc7"), quiet=True)
