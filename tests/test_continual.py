"""Continual-learning bookkeeping: task splits and the accuracy matrix on a hand-made sequence."""
import json

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.eval.continual import AccuracyMatrix, split_classes, task_index


def test_split_fashion_mnist_into_five_tasks_of_two_classes():
    assert split_classes(10, 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert split_classes(4, 2, order=[3, 1, 0, 2]) == [[3, 1], [0, 2]]
    with pytest.raises(SelfsupError, match="do not split"):
        split_classes(10, 3)
    with pytest.raises(SelfsupError, match="permutation"):
        split_classes(4, 2, order=[0, 0, 1, 2])
    targets = torch.tensor([0, 3, 1, 2, 3, 0])
    assert task_index(targets, [3, 1]).tolist() == [1, 2, 4]


def test_accuracy_matrix_metrics_by_hand(tmp_path):
    """Three tasks. After task 0: 90 on it. After task 1: 60, 80. After task 2: 50, 70, 95.
    Average = (50 + 70 + 95) / 3; BWT = ((50 - 90) + (70 - 80)) / 2 = -25;
    forgetting = ((max(90, 60) - 50) + (80 - 70)) / 2 = 25."""
    matrix = AccuracyMatrix(3)
    for (i, j), value in {(0, 0): 90, (1, 0): 60, (1, 1): 80, (2, 0): 50, (2, 1): 70, (2, 2): 95}.items():
        matrix.record(i, j, value)
    assert matrix.average_accuracy() == pytest.approx(215 / 3)
    assert matrix.backward_transfer() == pytest.approx(-25.0)
    assert matrix.forgetting() == pytest.approx(25.0)
    # Forgetting takes the best accuracy before the end, not the first: a task that improved
    # later and then dropped counts from its peak.
    matrix.record(1, 0, 95)
    assert matrix.forgetting() == pytest.approx(((95 - 50) + (80 - 70)) / 2)
    report = matrix.to_dict()
    assert report["matrix"][0] == [90.0, None, None] and report["average_accuracy"] == pytest.approx(71.67)
    json.dumps(report)  # serialisable: NaN became None
    assert "| 2 | 50.00 | 70.00 | 95.00 |" in matrix.markdown()
    matrix.plot(tmp_path / "matrix.png", "hand-made")
    assert (tmp_path / "matrix.png").stat().st_size > 1000


def test_an_incomplete_matrix_refuses_final_metrics():
    matrix = AccuracyMatrix(2)
    matrix.record(0, 0, 80)
    with pytest.raises(SelfsupError, match="incomplete"):
        matrix.average_accuracy()
    single = AccuracyMatrix(1)
    single.record(0, 0, 70)
    assert single.forgetting() == 0.0 and single.backward_transfer() == 0.0 and single.average_accuracy() == 70


# ---------------------------------------------------------------- the continual command

from selfsup.cli import main  # noqa: E402
from selfsup.engine import Batch, OptimConfig  # noqa: E402
from selfsup.losses import distillation  # noqa: E402
from selfsup.recipes import continual as continual_module  # noqa: E402
from selfsup.recipes.classifier import ClassifierTraining  # noqa: E402
from selfsup.recipes.loading import StartingPoint  # noqa: E402
from selfsup.learners import ContinualLearner  # noqa: E402
from selfsup.recipes.continual import ContinualSettings, run_sequence, task_sequence, task_training_set  # noqa: E402

from conftest import killed_then_finished, tiny_cli_sets, tiny_config  # noqa: E402


def _start(root):
    return StartingPoint.load(None, tiny_config(root), seed=0, quiet=True)


def _training(**changes):
    return ClassifierTraining(**{**dict(epochs=2, batch_size=8, device="cpu", precision="fp32", log_every=1,
                                        optim=OptimConfig(lr=0.1, weight_decay=0.0, warmup_epochs=0.0)),
                                 **changes})


def _learner(scenario, current=1):
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    encoder.num_features = 3
    learner = ContinualLearner(encoder, torch.nn.Identity(), [[0, 1], [2, 3]], 4, scenario)
    learner.current = current
    return learner


def test_heads_are_masked_by_task_or_by_the_classes_seen():
    task, cls = _learner("task"), _learner("class", current=0)
    targets = torch.tensor([0, 3])
    assert task.allowed(targets).tolist() == [[True, True, False, False], [False, False, True, True]]
    assert cls.allowed(targets).tolist() == [[True, True, False, False]] * 2
    cls.current = 1
    assert cls.allowed(targets).all()
    assert task.old_heads() == [[0, 1]] and _learner("class").old_heads() == [[0, 1]]


def test_lwf_loss_is_new_cross_entropy_plus_distillation_of_the_old_network_on_the_same_batch():
    learner = _learner("task")
    learner.lwf_weight, learner.lwf_temperature = 0.5, 2.0
    learner.keep_old_network()  # the network before the task
    with torch.no_grad():
        learner.head.weight.add_(0.3)  # training has moved it since
    images, targets = torch.randn(3, 1, 2, 2), torch.tensor([2, 3, 2])
    out = learner(Batch([images], targets, torch.tensor([4, 0, 2])), 0.0)
    logits = learner.classify(images)
    with torch.no_grad():
        responses = learner.old_network["head"](learner.old_network["encoder"](images))
    new = torch.nn.functional.cross_entropy(logits[:, 2:], targets - 2)
    old = distillation(logits[:, :2], responses[:, :2], 2.0)  # Y_o of these very (augmented) inputs
    assert out["loss_new"].item() == pytest.approx(new.item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx((new + 0.5 * old).item(), abs=1e-6)
    assert "old_network" not in dict(learner.named_children()) and not any(
        k.startswith("old_network") for k in learner.state_dict())  # not trained, not checkpointed
    learner.train()
    assert not learner.old_network.training  # evaluation mode, whatever the learner's


def test_lwf_warm_up_keeps_the_old_heads_rows_while_the_new_ones_learn():
    learner = _learner("class")
    learner.rows_frozen_until = 0.5
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    images, targets = torch.randn(4, 1, 2, 2), torch.tensor([2, 3, 2, 3])
    weight, bias = learner.head.weight.detach().clone(), learner.head.bias.detach().clone()
    for progress in (0.1, 0.3):  # warm-up
        out = learner(Batch([images], targets, torch.arange(4)), progress)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        learner.after_step(progress)
    assert torch.equal(learner.head.weight[:2], weight[:2]) and torch.equal(learner.head.bias[:2], bias[:2])
    assert not torch.equal(learner.head.weight[2:], weight[2:])
    out = learner(Batch([images], targets, torch.arange(4)), 0.6)  # after the warm-up, joint training
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    learner.after_step(0.6)
    assert not torch.equal(learner.head.weight[:2], weight[:2])


def test_lwf_warm_up_keeps_each_old_row_in_place_whatever_the_class_order():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    encoder.num_features = 3
    learner = ContinualLearner(encoder, torch.nn.Identity(), [[3, 1], [0, 2]], 4, "class")  # not ascending
    learner.current, learner.rows_frozen_until = 1, 1.0
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5, weight_decay=0.1)
    weight = learner.head.weight.detach().clone()
    out = learner(Batch([torch.randn(4, 1, 2, 2)], torch.tensor([0, 2, 0, 2]), torch.arange(4)), 0.0)
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    learner.after_step(0.0)
    assert torch.equal(learner.head.weight[[3, 1]], weight[[3, 1]])  # row 3 is still row 3, row 1 still row 1
    assert not torch.equal(learner.head.weight[[0, 2]], weight[[0, 2]])


def test_lwf_keeps_the_network_from_before_each_task_and_warms_up(mnist_root, tmp_path, monkeypatch):
    start = _start(mnist_root)
    original, seen = continual_module.fit_classifier, []

    def checked_fit(model, train, test, run_dir, settings, **kwargs):
        kept = model.old_network
        if kept is not None:  # the network as it is now, before this task's first step
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.state_dict().items())
            assert settings.head_warmup_epochs == 1.0 and model.rows_frozen_until == pytest.approx(0.5)
            frozen = {k: v.clone() for k, v in kept.state_dict().items()}
        before = {k: v.clone() for k, v in model.state_dict().items()}
        summary = original(model, train, test, run_dir, settings, **kwargs)
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        if kept is not None:
            assert all(torch.equal(v, frozen[k]) for k, v in kept.state_dict().items())  # never trained
        seen.append(kept is not None)
        return summary

    monkeypatch.setattr(continual_module, "fit_classifier", checked_fit)
    report = run_sequence(start, tmp_path / "lwf", _training(), ContinualSettings(strategy="lwf", scenario="task"),
                          quiet=True)
    assert seen == [False, True]
    assert report["matrix"][0][1] is None and len(report["matrix"][1]) == 2


def test_rehearsal_replays_a_balanced_buffer_and_joint_keeps_everything(mnist_root):
    train = _start(mnist_root).splits.train
    tasks = task_sequence(train, ContinualSettings())
    assert tasks == [[0, 1], [2, 3]]
    rehearsal = task_training_set(train, tasks, 1, ContinualSettings(strategy="rehearsal", buffer_size=6), 0)
    new = (rehearsal.targets >= 2).sum().item()
    assert new == 40 and len(rehearsal) == 40 + 6 * (40 // 6)
    old = rehearsal.targets[rehearsal.targets < 2]
    assert (old == 0).sum() == (old == 1).sum()  # balanced over the old classes
    assert len(torch.unique(rehearsal.images[rehearsal.targets < 2], dim=0)) == 6  # 6 images, repeated
    joint = task_training_set(train, tasks, 1, ContinualSettings(strategy="joint"), 0)
    assert len(joint) == 80
    assert len(task_training_set(train, tasks, 0, ContinualSettings(strategy="joint"), 0)) == 40
    with pytest.raises(SelfsupError, match="permutation"):
        task_sequence(train, ContinualSettings(order=[0, 1, 2, 5]))
    with pytest.raises(SelfsupError, match="one task"):
        task_sequence(train, ContinualSettings(classes_per_task=4))


def test_rehearsal_memory_is_nested_and_never_holds_more_than_its_size(mnist_root):
    train = _start(mnist_root).splits.train
    tasks = [[0], [1], [2], [3]]
    memories = [set(continual_module.rehearsal_buffer(train, tasks, task, 6, seed=0).tolist()) for task in (1, 2, 3)]
    assert [len(m) for m in memories] == [6, 6, 6]  # 6, then 3 + 3, then 2 + 2 + 2
    for earlier, later in zip(memories, memories[1:]):
        kept_classes = {int(train.targets[i]) for i in earlier}
        assert {i for i in later if int(train.targets[i]) in kept_classes} <= earlier  # room made by dropping only
    replayed = set().union(*memories)
    assert len({i for i in replayed if train.targets[i] == 0}) == 6  # class 0: only what the first memory held
    counts = torch.bincount(train.targets[list(memories[-1])], minlength=4)
    assert counts.tolist() == [2, 2, 2, 0]


def test_feature_extraction_trains_the_trunk_on_the_first_task_then_freezes_it(mnist_root, tmp_path):
    start = _start(mnist_root)
    trunk = {k: v.clone() for k, v in start.encoder.state_dict().items()}
    run_sequence(start, tmp_path / "fe", _training(), ContinualSettings(strategy="feature-extraction"), quiet=True)
    first = continual_module.checkpoint.load(tmp_path / "fe" / "task-0" / "checkpoints" / "last.pt")["model"]
    final = continual_module.checkpoint.load(tmp_path / "fe" / "task-1" / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(first[f"encoder.{k}"], v) for k, v in trunk.items())  # learnt the first task
    assert all(torch.equal(final[f"encoder.{k}"], first[f"encoder.{k}"]) for k in trunk)  # then frozen
    assert not torch.equal(final["head.weight"], first["head.weight"])


CONTINUAL = ["--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet", "--buffer-size", "6",
             "--lwf-warmup-epochs", "0.5"]


def test_continual_command_end_to_end_and_resumes_after_a_kill(mnist_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cl"
    command = ["continual", "--run-dir", str(out), "--strategies", "finetune", "rehearsal", "--scenarios", "task",
               "class"] + CONTINUAL + tiny_cli_sets(mnist_root)
    trained = killed_then_finished(command, monkeypatch, "task-rehearsal/task-1", 3)
    # Finished tasks are read back, the killed one continues from its checkpoint.
    assert not any(s.endswith(("task-finetune/task-0", "task-finetune/task-1", "task-rehearsal/task-0"))
                   for s in trained)
    assert any(s.endswith("task-rehearsal/task-1") for s in trained)
    printed = capsys.readouterr().out
    assert "class-incremental  rehearsal" in printed
    table = (out / "continual.md").read_text()
    assert table.count("| task-incremental |") == 2 and table.count("| class-incremental |") == 2
    report = json.loads((out / "class-finetune" / "continual.json").read_text())
    assert len(report["matrix"]) == 2 and report["matrix"][1][1] is not None and "forgetting" in report
    assert (out / "class-finetune" / "accuracy.png").stat().st_size > 1000
    assert (out / "continual.png").stat().st_size > 5000
    # A continual checkpoint reads back like a fine-tuned one.
    assert main(["eval", "knn", str(out / "class-finetune" / "task-1"), "--quiet"]) == 0


def test_continual_refuses_bad_input(pretrained_run, mnist_root, tmp_path, capsys):
    base = ["continual", "--run-dir", str(tmp_path / "x")] + CONTINUAL
    assert main(base + ["--strategies", "ewc"] + tiny_cli_sets(mnist_root)) == 2
    assert "unknown continual strategy 'ewc'" in capsys.readouterr().err
    assert main(base + ["--classes-per-task", "3"] + tiny_cli_sets(mnist_root)) == 2
    assert "do not split" in capsys.readouterr().err
    assert main(base + [str(pretrained_run), "-c", "simclr_fashion_mnist"]) == 2
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SelfsupError, match="label smoothing"):
        run_sequence(_start(mnist_root), tmp_path / "ls", _training(label_smoothing=0.1), ContinualSettings())


def test_the_trunk_rate_follows_the_starting_point(pretrained_run, mnist_root):
    """Pretrained weights are fine-tuned at a tenth of the head's rate; a random trunk at its rate."""
    assert _start(mnist_root).backbone_lr_scale == 1.0
    assert StartingPoint.load(pretrained_run, None, quiet=True).backbone_lr_scale == 0.1
    assert ClassifierTraining.for_strategy("continual", start_lr_scale=0.1).backbone_lr_scale == 0.1
