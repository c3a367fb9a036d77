"""``selfsup report`` and ``selfsup runs``: the page and markdown, the pieces they are drawn from,
the statuses of run directories, and the pages as a real browser shows them."""
import base64
import importlib.util
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pytest
import torch

from conftest import open_in_browser, requires_chromium
from selfsup.cli import main
from selfsup.eval.linear import linear_probe
from selfsup.eval import cosine_topk
from selfsup.explore.inspect import project_2d, spread_queries
from selfsup.report import find_runs, read_run
from selfsup.report.document import Document
from selfsup.figures import curves


def test_document_renders_one_list_of_parts_as_html_and_markdown(tmp_path):
    figure = curves(tmp_path / "out" / "plot.png", [([0, 1, 2], [3.0, 2.0, 1.5], "a")], "step", "loss", "Loss")
    doc = Document("Run <x>")
    doc.bullets(["status: finished"])
    doc.table([{"name": "a & b", "top-1": 12.345}], ["name", "top-1"])
    doc.figure(figure, "Loss curve")
    doc.code("config", "lr: 0.1\n<script>alert(1)</script>")
    doc.write(tmp_path / "out" / "page.html", tmp_path / "out" / "page.md")
    page = (tmp_path / "out" / "page.html").read_text()
    inlined = base64.b64encode(figure.read_bytes()).decode()
    assert f'src="data:image/png;base64,{inlined}"' in page  # self-contained: the PNG's bytes in the page
    assert "<script>" not in page and "&lt;script&gt;" in page  # text is escaped, never markup
    assert "<title>Run &lt;x&gt;</title>" in page and "<td>a &amp; b</td><td>12.35</td>" in page
    markdown = (tmp_path / "out" / "page.md").read_text()
    assert "![Loss curve](plot.png)" in markdown and "| a & b | 12.35 |" in markdown
    assert markdown.startswith("# Run <x>") and "- status: finished" in markdown


def test_linear_probe_counts_its_test_predictions_in_a_confusion_matrix():
    torch.manual_seed(0)
    centers = torch.eye(3) * 4
    train_y, test_y = torch.arange(3).repeat(20), torch.tensor([0, 0, 1, 1, 2, 2])
    train_x = centers[train_y] + 0.3 * torch.randn(60, 3)
    test_x = centers[test_y].clone()
    test_x[1] = centers[2]  # one image of class 0 that looks like class 2
    result = linear_probe(train_x, train_y, test_x, test_y, 3, (0.0,))
    confusion = np.array(result["confusion"])
    assert confusion.tolist() == [[1, 0, 1], [0, 2, 0], [0, 0, 2]]
    assert result["top1"] == pytest.approx(100 * np.trace(confusion) / confusion.sum())


def test_queries_take_the_classes_in_turn_and_neighbours_are_by_cosine():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    chosen = spread_queries(labels, 5, seed=0)
    assert labels[chosen].tolist() == [0, 1, 2, 0, 1]
    assert len(set(chosen.tolist())) == 5
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    similarity, index = cosine_topk(torch.tensor([[3.0, 0.1]]), bank, k=2)
    assert index.tolist() == [[0, 2]]
    assert similarity[0, 1].item() == pytest.approx((3.0 + 0.1) / (np.hypot(3.0, 0.1) * np.sqrt(2)), rel=1e-5)


@pytest.mark.parametrize("method, name", [("tsne", "t-SNE"), ("umap", "UMAP")])
def test_the_2d_map_keeps_well_separated_classes_apart(method, name):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    features = torch.eye(8)[labels] * 5 + 0.2 * torch.randn(60, 8, generator=generator)
    if method == "umap" and importlib.util.find_spec("umap") is None:  # the map says how to get it
        with pytest.raises(Exception, match="pip install umap-learn"):
            project_2d(features, "umap")
        return
    coords, used = project_2d(features, method, seed=0)
    assert used == name and coords.shape == (60, 2)
    distances = torch.cdist(torch.from_numpy(coords).float(), torch.from_numpy(coords).float())
    distances.fill_diagonal_(float("inf"))
    assert (labels[distances.argmin(1)] == labels).all()  # every point's nearest neighbour on the map: same class
    with pytest.raises(Exception, match="at least 5 images"):
        project_2d(features[:3], method)


def _fake_run(folder, summary=True, checkpoint="whole", total_steps=40):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(
        json.dumps({"stream": "step", "step": 10, "epoch": 0, "loss": 2.0, "img_per_s": 100.0}) + "\n"
        + json.dumps({"stream": "epoch", "step": 10, "epoch": 1, "loss": 2.0, "knn_top1": 41.5, "minutes": 0.1})
        + "\n")
    (folder / "config.yaml").write_text("method: {name: byol}\ndata: {name: cifar10}\n"
                                        "backbone: {name: resnet18, width: 32}\ntrain: {epochs: 4}\n")
    (folder / "meta.json").write_text(json.dumps({"total_steps": total_steps, "steps_per_epoch": 10}))
    if checkpoint:
        (folder / "checkpoints").mkdir()
        torch.save({"format": "selfsup-checkpoint", "step": 10, "epoch": 1, "total_steps": total_steps,
                    "steps_per_epoch": 10, "optimizer": {}}, folder / "checkpoints" / "last.pt")
        if checkpoint == "cut":  # killed while writing: the archive's end is missing
            data = (folder / "checkpoints" / "last.pt").read_bytes()
            (folder / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    if summary:
        (folder / "summary.json").write_text(json.dumps({"steps": total_steps, "img_per_s": 120.0,
                                                         "train_minutes": 0.5}))


def test_runs_table_tells_finished_resumable_and_interrupted_runs_apart(tmp_path, capsys):
    _fake_run(tmp_path / "runs" / "done")
    _fake_run(tmp_path / "runs" / "sweep" / "killed", summary=False)
    _fake_run(tmp_path / "runs" / "sweep" / "cut", summary=False, checkpoint="cut")
    _fake_run(tmp_path / "runs" / "early", summary=False, checkpoint=None)
    (tmp_path / "runs" / "notes").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(tmp_path / "runs" / "done")  # listed once
    assert [p.name for p in find_runs(tmp_path / "runs")] == ["done", "early", "cut", "killed"]
    done = read_run(tmp_path / "runs" / "done")
    assert (done.status, done.method, done.data, done.backbone, done.knn) == ("finished", "byol", "cifar10",
                                                                              "resnet18 w32", 41.5)
    assert done.epochs == "4/4"
    assert read_run(tmp_path / "runs" / "sweep" / "killed").epochs == "1/4"
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    for name, status in (("done", "finished"), ("sweep/killed", "resumable"), ("sweep/cut", "interrupted"),
                         ("early", "interrupted")):
        assert f"| {name} | byol | cifar10 |" in out and any(
            line.startswith(f"| {name} ") and line.rstrip().endswith(f"| {status} |") for line in out.splitlines())
    assert "1 finished, 1 resumable, 2 interrupted" in out
    assert main(["runs", str(tmp_path / "runs"), "--status", "resumable", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in rows] == ["sweep/killed"]
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_run_records_read_their_own_results_and_planned_steps(tmp_path, monkeypatch):
    _fake_run(tmp_path / "capped", total_steps=20)  # train.epochs 4 but train.max_steps 20 = 2 epochs of 10
    assert read_run(tmp_path / "capped").epochs == "2/2"
    (tmp_path / "capped" / "eval").mkdir()
    def about(stem, step, features="backbone"):
        return {"method": "byol", "stem": stem, "step": step, "network": "student", "features": features}

    (tmp_path / "capped" / "eval" / "results.json").write_text(json.dumps({
        "raw pixels": {"linear": {"top1": 90.0}, "knn": {"top1": 88.0}},  # the demo's baseline, not the run's
        "byol (best, step 5)": {"linear": {"top1": 60.0}, "about": about("best", 5)},
        "renamed for a slide": {"linear": {"top1": 55.0}, "knn": {"top1": 44.0}, "about": about("last", 20)},
        "byol (last, step 20, embedding)": {"knn": {"top1": 47.0}, "about": about("last", 20, "embedding")}}))
    record = read_run(tmp_path / "capped")
    # The latest step's, never the pixels': found by the entries' fields, whatever their display names.
    assert (record.linear, record.knn) == (55.0, 47.0)
    monkeypatch.chdir(tmp_path / "capped")
    assert read_run(".").name == "capped"

    imported = tmp_path / "imported" / "checkpoints"
    imported.mkdir(parents=True)
    torch.save({"format": "selfsup-checkpoint", "step": 0, "epoch": 0, "imported": {"weights": "r18.pth"},
                "encoder": {"method": "torchvision resnet18"}, "config": {"method": "simclr"}}, imported / "last.pt")
    record = read_run(tmp_path / "imported")
    assert (record.status, record.kind, record.method) == ("finished", "imported", "imported (torchvision resnet18)")
    _fake_run(tmp_path / "odd", summary=False)
    (tmp_path / "odd" / "config.yaml").write_text("- just\n- a list\n")
    assert read_run(tmp_path / "odd").method == "-"


def _browser_check(page, screenshot, expected_images):
    seen = open_in_browser(page, screenshot)
    assert seen["errors"] == []
    assert len(seen["images"]) == expected_images
    assert all(image["complete"] and image["width"] > 100 for image in seen["images"]), seen["images"]
    assert all(url.startswith(("file:", "data:")) for url in seen["requests"])  # nothing fetched from anywhere
    assert screenshot.stat().st_size > 10_000
    return seen


@requires_chromium
@pytest.mark.slow
def test_report_of_a_run_and_a_comparison_in_a_real_browser(pretrained_run, tmp_path, capsys):
    shutil.copy(pretrained_run / "report" / "loss.png", pretrained_run / "eval-layers.png")
    (pretrained_run / "eval").mkdir(exist_ok=True)
    (pretrained_run / "eval-layers.png").rename(pretrained_run / "eval" / "layers.png")  # as selfsup eval layers
    assert main(["report", str(pretrained_run), "--points", "24", "--queries", "4", "--neighbours", "3",
                 "--map", "tsne", "--quiet"]) == 0
    assert "report.html" in capsys.readouterr().out
    out = pretrained_run / "report"
    markdown = (out / "summary.md").read_text()
    best = re.search(r"best (\S+) = (\S+)", markdown)
    assert best and len(best.group(2).strip("-.").replace(".", "")) <= 4  # a number for a person, not 17 digits
    for section in ("## Training", "## Embeddings", "## Layer-wise linear probe", "## Configuration and environment",
                    "](embedding_map.png)", "](retrievals.png)", "](confusion.png)", "](loss.png)"):
        assert section in markdown
    entry = next(iter(json.loads((pretrained_run / "eval" / "results.json").read_text()).values()))
    assert np.array(entry["linear"]["confusion"]).sum() == 32  # the probe ran on the 32 test images
    seen = _browser_check(out / "report.html", tmp_path / "report.png", expected_images=8)
    assert seen["title"] == f"Run {pretrained_run.name}"
    alts = " ".join(image["alt"] for image in seen["images"])
    assert "t-SNE map" in alts and "Confusion matrix" in alts and "retrievals" in alts
    assert "Online linear probe" in alts  # its curve beside the kNN monitor's

    other = tmp_path / "other" / "simclr"
    shutil.copytree(pretrained_run, other)
    (other / "summary.json").unlink()  # the copy looks killed after its last checkpoint
    compare = tmp_path / "compare"
    assert main(["report", str(pretrained_run), str(other), "--no-inspect", "--out", str(compare), "--quiet"]) == 0
    rows = json.loads((compare / "comparison.json").read_text())
    assert [(row["run"], row["status"]) for row in rows] == [(f"{pretrained_run.parent.name}/simclr", "finished"),
                                                             ("other/simclr", "resumable")]
    table = (compare / "comparison.md").read_text()
    assert "| run | method | data |" in table and "[other/simclr](" in table
    seen = _browser_check(compare / "comparison.html", tmp_path / "comparison.png", expected_images=5)
    assert len(seen["links"]) == 2 and all(Path(url2pathname(urlparse(link).path)).is_file()
                                           for link in seen["links"])  # the links open each run's page


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_of_a_run_without_a_usable_checkpoint_shows_its_curves_and_says_why(tmp_path, capsys):
    _fake_run(tmp_path / "early", summary=False, checkpoint=None)
    _fake_run(tmp_path / "cut", summary=False, checkpoint="cut")
    assert main(["report", str(tmp_path / "early"), str(tmp_path / "cut"), "--out", str(tmp_path / "both")]) == 0
    assert capsys.readouterr().err.count("No usable checkpoint") == 2
    for name in ("early", "cut"):
        markdown = (tmp_path / name / "report" / "summary.md").read_text()
        assert "status: interrupted" in markdown and "](loss.png)" in markdown and "## Embeddings" not in markdown
        assert "> No usable checkpoint in" in markdown
    assert (tmp_path / "both" / "comparison.html").is_file()
    imported = tmp_path / "imported" / "checkpoints"
    imported.mkdir(parents=True)
    shutil.copy(tmp_path / "cut" / "checkpoints" / "last.pt", imported / "last.pt")
    assert main(["report", str(tmp_path / "early"), str(tmp_path / "imported")]) == 2  # refused before any work
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def test_report_of_a_fine_tuned_run_draws_its_own_heads_confusion_matrix(pretrained_run, tmp_path, capsys):
    from selfsup.learners import classify_all
    from selfsup.recipes.evaluate import checkpoint_evaluator
    from selfsup.recipes.loading import load_classifier

    run = tmp_path / "tuned"
    assert main(["eval", "finetune", str(pretrained_run), "--steps", "3", "--batch-size", "8", "--run-dir", str(run),
                 "--quiet"]) == 0
    assert main(["report", str(run), "--points", "20", "--queries", "2", "--neighbours", "2", "--map", "tsne",
                 "--quiet"]) == 0
    markdown = (run / "report" / "summary.md").read_text()
    assert "fine-tuned classifier on the test split" in markdown and "](confusion.png)" in markdown
    # A downstream run says how it was made, as a pretraining run does.
    assert "How it was trained (settings.yaml)" in markdown and "backbone_lr_scale: 0.1" in markdown
    assert (run / "config.yaml").is_file() and "eval finetune" in " ".join(json.loads((run / "meta.json").read_text())
                                                                           ["command"])
    assert not (run / "eval" / "results.json").exists()  # no linear probe was fitted for it
    from selfsup.explore.inspect import _classifier_confusion

    evaluator, _ = checkpoint_evaluator(run / "checkpoints" / "last.pt", quiet=True)
    classes = len(evaluator.test.classes)
    confusion, top1 = _classifier_confusion(run / "checkpoints" / "last.pt", evaluator, classes)
    model, _ = load_classifier(run / "checkpoints" / "last.pt")
    predicted = classify_all(model, evaluator.test.images, evaluator.view).argmax(1)
    assert confusion.sum() == 32 and np.trace(confusion) == (predicted == evaluator.test.targets).sum().item()
    assert top1 == pytest.approx(100 * np.trace(confusion) / 32, abs=0.01)
    assert _classifier_confusion(pretrained_run / "checkpoints" / "last.pt", evaluator, classes) is None
    assert _classifier_confusion(run / "checkpoints" / "last.pt", evaluator, classes + 1) is None  # other classes


def test_numbers_are_written_for_people():
    from selfsup.tables import human

    assert human(3.371088986561216) == "3.371" and human(4.285842244514591) == "4.286"
    assert human(444.49) == "444.5" and human(0.000123456) == "0.0001235"
    assert human(12) == "12" and human(float("nan")) == "nan" and human(None) == "None" and human(True) == "True"
    from selfsup.tables import human_bytes

    assert [human_bytes(n) for n in (5, 1536, 3 * 2**30, 3 * 2**40)] == ["5 B", "1.5 KiB", "3.0 GiB", "3.0 TiB"]
