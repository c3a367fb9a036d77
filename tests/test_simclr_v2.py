"""SimCLR v2's second and third stages: fine-tuning from the projection head's middle layer, and
distillation of the fine-tuned network into a student on unlabelled images."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from selfsup.cli import main
from selfsup.data import DataConfig, label_index, load_splits
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.learners import Classifier, Distiller, classifier_views
from selfsup.losses import distillation
from selfsup.models import HeadTrunk, build_backbone, mlp
from selfsup.recipes.loading import load_classifier, load_encoder
from selfsup.views import ImageInfo


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


# ---------------------------------------------------------------- the trunk

def test_head_trunk_keeps_the_first_hidden_layers_of_the_projector():
    backbone = build_backbone("toy", 1, 16, width=8)
    projector = mlp(backbone.num_features, 32, 8, num_layers=3)
    trunk = HeadTrunk(backbone, projector, 1)
    assert [type(m).__name__ for m in trunk.head] == ["Linear", "BatchNorm1d", "ReLU"]
    assert trunk.num_features == 32 and trunk.head[0] is projector[0]  # shared, not copied
    x = torch.randn(4, 1, 16, 16)
    trunk.eval(), projector.eval()
    assert torch.equal(trunk(x), projector[:3](backbone(x)))
    assert len(HeadTrunk(backbone, projector, 2).head) == 6
    with pytest.raises(ValueError, match="has 2 hidden layer"):
        HeadTrunk(backbone, projector, 3)


# ---------------------------------------------------------------- the loss

def test_distillation_loss_against_its_formula():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1])
    assert distillation(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)  # matches its teacher
    # lambda = 0: plain cross-entropy on the labels, whatever T
    assert torch.allclose(distillation(student, teacher, 4.0, targets, teacher_weight=0.0),
                          F.cross_entropy(student, targets))
    # the KL term by hand at T = 2, times T^2
    temperature = 2.0
    p_t = (teacher / temperature).softmax(1)
    log_p_s = (student / temperature).log_softmax(1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    expected = 0.3 * temperature ** 2 * kl + 0.7 * F.cross_entropy(student, targets)
    assert torch.allclose(distillation(student, teacher, temperature, targets, teacher_weight=0.3), expected)
    # gradient: T^2 * d KL / ds = T * (p_s - p_t) / B, so the soft term keeps its scale as T grows
    leaf = student.clone().requires_grad_(True)
    distillation(leaf, teacher, temperature).backward()
    assert torch.allclose(leaf.grad, temperature * ((student / temperature).softmax(1) - p_t) / 2, atol=1e-6)


def test_distillation_label_term_uses_only_labelled_images():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    targets = torch.tensor([2, -1, 0, -1])
    expected = 0.5 * distillation(student, teacher) + 0.5 * F.cross_entropy(student[[0, 2]], targets[[0, 2]])
    assert torch.allclose(distillation(student, teacher, 1.0, targets, 0.5), expected)
    unlabelled = torch.full((4,), -1)
    assert torch.allclose(distillation(student, teacher, 1.0, unlabelled, 0.5), 0.5 * distillation(student, teacher))


# ---------------------------------------------------------------- the student

def _distiller(teacher_weight=1.0):
    image = ImageInfo(16, 1, (0.5,), (0.25,))
    teacher = Classifier(build_backbone("toy", 1, 16, width=8), 4, classifier_views(image))
    student = build_backbone("toy", 1, 16, width=4)
    return Distiller(student, 4, classifier_views(image), teacher, temperature=2.0, teacher_weight=teacher_weight)


def test_distiller_trains_the_student_towards_a_frozen_teacher():
    model = _distiller()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert all(not p.requires_grad for p in model.teacher.parameters())
    grouped = {id(p) for group in model.param_groups() for p in group["params"]}
    assert not grouped & {id(p) for p in model.teacher.parameters()}  # never in the optimiser
    model.train()
    assert not model.teacher.training  # its BN statistics stay the fine-tuned ones
    optimizer = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=0.5)
    batch = Batch([torch.randn(16, 1, 16, 16)], torch.full((16,), -1), torch.arange(16))
    losses = []
    for _ in range(15):
        out = model(batch, 0.0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(p.grad is None for p in model.teacher.parameters())


def test_distiller_refuses_bad_settings():
    with pytest.raises(SelfsupError, match=r"teacher's weight must be in \[0, 1\]"):
        _distiller(teacher_weight=1.5)


# ---------------------------------------------------------------- label fractions

def test_label_fraction_is_class_balanced_and_reproducible(mnist_root):
    train = load_splits(DataConfig(root=str(mnist_root)), labeled=True, quiet=True).train
    chosen = label_index(train, 0.25, seed=3)
    assert len(chosen) == 20 and torch.equal(chosen, label_index(train, 0.25, seed=3))
    assert torch.bincount(train.targets[chosen], minlength=4).tolist() == [5, 5, 5, 5]
    assert not torch.equal(chosen, label_index(train, 0.25, seed=4))
    assert len(label_index(train, 0.001, seed=0)) == 4  # at least one image per class
    with pytest.raises(SelfsupError, match=r"label fraction must be in \(0, 1\]"):
        label_index(train, 1.5, seed=0)


# ---------------------------------------------------------------- the three stages from the CLI

@pytest.fixture
def simclr3_run(mnist_root, tmp_path):
    run = tmp_path / "simclr3"
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + _sets(tiny_overrides(
        mnist_root, method__proj_layers=3, train__epochs=1))) == 0
    return run


def test_pretrain_finetune_from_the_head_then_distill(simclr3_run, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    assert main(["eval", "finetune", str(simclr3_run), "--labels", "0.5", "--head-layers", "1", "--epochs", "2",
                 "--batch-size", "16", "--run-dir", str(tuned), "--device", "cpu", "--quiet"]) == 0
    assert "fine-tuned on 50% of the labels from 1 head layer(s): test top-1" in capsys.readouterr().out
    summary = json.loads((tuned / "summary.json").read_text())
    assert 0 <= summary["test_top1"] <= 100 and summary["steps"] == 2 * 2  # 40 labelled images: 2 batches of 16

    encoder, _, meta = load_encoder(tuned)
    assert isinstance(encoder, HeadTrunk) and encoder.num_features == 32  # the head's hidden width
    assert meta.classifier["labelled_images"] == 40 and meta.encoder.head_layers == 1
    pretrained, _, _ = load_encoder(simclr3_run, head_layers=1)
    assert not torch.equal(encoder.head[0].weight, pretrained.head[0].weight)  # it did train
    teacher, _ = load_classifier(tuned)
    teacher.eval()
    assert teacher.classify(torch.randn(2, 1, 16, 16)).shape == (2, 10)  # the dataset's 10 classes
    assert main(["eval", "knn", str(tuned), "--quiet"]) == 0  # a fine-tuned run evaluates like any other
    capsys.readouterr()
    assert main(["export", str(tuned), "--out", str(tmp_path / "trunk.safetensors")]) == 2
    assert "1 projection-head layer(s) on its trunk, which a plain torchvision model has no place for" in \
        capsys.readouterr().err

    student = tmp_path / "student"
    assert main(["distill", str(tuned), "--student", "backbone.width=4", "--epochs", "1", "--batch-size", "16",
                 "--run-dir", str(student), "--device", "cpu", "--quiet"]) == 0
    assert "student test top-1" in capsys.readouterr().out
    student_encoder, _, student_meta = load_encoder(student)
    assert student_meta.classifier["stage"] == "distilled"
    assert student_encoder.num_features == 4 * 4  # toy width 4, not the teacher's width 8 + head layer
    assert json.loads((student / "summary.json").read_text())["steps"] == 80 // 16  # every training image, no labels
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert any("teacher_agreement" in row for row in rows)
    pool = tmp_path / "pool"  # data.subset draws the images the student learns from
    assert main(["distill", str(tuned), "--set", "data.subset=48", "--epochs", "1", "--batch-size", "16",
                 "--run-dir", str(pool), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((pool / "summary.json").read_text())["steps"] == 48 // 16


def test_finetune_and_distill_refuse_what_cannot_work(simclr3_run, tmp_path, capsys):
    for args, message in (
        (["eval", "finetune", str(simclr3_run), "--head-layers", "3"], "has 2 hidden layer(s); cannot keep 3"),
        (["distill", str(simclr3_run)], "holds no classifier (it is a pretraining checkpoint)"),
        (["distill", str(simclr3_run), "--teacher-weight", "0.5"], "needs labels"),
        (["distill", str(simclr3_run), "--student", "method.proj_dim=3"], "student settings are backbone keys"),
    ):
        assert main(args + ["--run-dir", str(tmp_path / "x"), "--quiet"]) == 2
        assert message in capsys.readouterr().err
