"""Continual learning: one network trained on a sequence of tasks, tested on all of them after each.

The sequence is a split of a labelled dataset into tasks of a few classes (split Fashion-MNIST:
five tasks of two classes, :func:`~selfsup.eval.continual.split_classes`). Two scenarios
(van de Ven & Tolias 2019, "Three scenarios for continual learning"):

- ``task`` (task-incremental): a head per task, and the task of a test image is known: the
  prediction is among its task's classes.
- ``class`` (class-incremental): one head, and the prediction is among every class seen so far.

Both are one linear layer over all classes whose outputs are masked: in the task scenario to
the image's task's classes (the rows of a task are its head), in the class scenario to the
classes seen so far. Strategies:

- ``feature-extraction``: the trunk learns the first task with its head (LwF's theta_s, trained on
  the "old task"), then stays frozen: later tasks train only their heads.
- ``finetune``: trunk and head train on each new task (the forgetting baseline).
- ``lwf``: Learning without Forgetting (Li & Hoiem 2016, Sec. 3): the old heads' responses
  Y_o = CNN(X_n; theta_s, theta_o) come from a frozen copy of the network as it was before the
  new task, run (in evaluation mode) on the very batch the new task trains on, augmentation
  included; the new head is warmed up with the trunk and the old heads' rows frozen (theta_o
  fixed, as the paper), then everything trains on ``L_new + lambda_o * L_old`` (+ weight
  decay), L_old the distillation of each old head towards those responses (temperature T = 2,
  lambda_o = 1 as in the paper; our distillation carries Hinton's T^2, an effective lambda_o of
  4 against the paper's form). In the class scenario the old "head" is the outputs of the old classes.
- ``rehearsal``: a memory of ``buffer_size`` training images, class-balanced over the classes
  seen so far, is replayed with each new task; its images are repeated to match the new task's
  count so that about half of every batch is replayed (experience replay, Chaudhry et al. 2019).
  The memory is one buffer kept over the sequence: to make room for new classes it drops images
  of the old ones and never takes new old-class images back, so it holds at most
  ``buffer_size`` distinct images at any time.
- ``joint``: every image of the tasks seen so far (the upper bound).

Each task is a run of the classifier recipe (:func:`~.classifier.fit_classifier`) in
``out_dir/<scenario>-<strategy>/task-<t>``; the accuracy matrix is filled after every task and
saved, so a killed run resumes at the task it was in.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import figures
from ..data import ImageDataset
from ..engine import checkpoint, dist
from ..errors import SelfsupError
from ..eval.continual import AccuracyMatrix, split_classes, task_index
from ..learners import ContinualLearner, classifier_views
from ..learners.continual import SCENARIOS
from ..files import write_json
from ..tables import markdown_table
from ..views import ImageInfo
from .classifier import ClassifierTraining, fit_classifier
from .loading import StartingPoint, classifier_meta

STRATEGIES = ("feature-extraction", "finetune", "lwf", "rehearsal", "joint")


@dataclass
class ContinualSettings:
    strategy: str = "finetune"
    scenario: str = "class"
    classes_per_task: int = 2
    order: list[int] | None = None
    """The class order the tasks are cut from (default 0..K-1)."""
    buffer_size: int = 200
    """Rehearsal: images kept over all classes seen so far."""
    lwf_weight: float = 1.0
    """lambda_o of LwF."""
    lwf_temperature: float = 2.0
    lwf_warmup_epochs: float = 1.0
    """LwF: epochs of each new task (after the first) in which only the new head trains."""

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SelfsupError(f"unknown continual strategy '{self.strategy}'; use one of {', '.join(STRATEGIES)}")
        if self.scenario not in SCENARIOS:
            raise SelfsupError(f"unknown scenario '{self.scenario}'; use task (a head per task) or class (one head)")
        if self.strategy == "rehearsal" and self.buffer_size < 1:
            raise SelfsupError(f"rehearsal needs a buffer of at least one image, got {self.buffer_size}")
        if self.lwf_weight < 0 or self.lwf_temperature <= 0:
            raise SelfsupError("LwF needs lambda_o >= 0 and a temperature > 0")


def task_sequence(train: ImageDataset, settings: ContinualSettings) -> list[list[int]]:
    """The classes of each task: the classes present in ``train`` (or ``settings.order``, a permutation
    of them) cut into consecutive groups of ``classes_per_task``."""
    present = sorted(train.targets[train.targets >= 0].unique().tolist())
    order = list(settings.order) if settings.order else present
    if sorted(order) != present:
        raise SelfsupError(f"the class order must be a permutation of the training classes {present}, got {order}")
    tasks = [[order[i] for i in task] for task in split_classes(len(order), settings.classes_per_task)]
    if len(tasks) < 2:
        raise SelfsupError(f"{len(order)} classes in tasks of {settings.classes_per_task} make one task: nothing to "
                           "continue to; use fewer classes per task")
    return tasks


def task_training_set(train: ImageDataset, tasks: list[list[int]], task: int, settings: ContinualSettings,
                      seed: int) -> ImageDataset:
    """What the strategy trains on in task ``task``: its images, plus the replayed or joint ones."""
    new = task_index(train.targets, tasks[task])
    if task == 0 or settings.strategy not in ("rehearsal", "joint"):
        return train.select(new)
    if settings.strategy == "joint":
        old = task_index(train.targets, [c for classes in tasks[:task] for c in classes])
        return train.select(torch.cat([old, new]))
    buffer = rehearsal_buffer(train, tasks, task, settings.buffer_size, seed)
    repeats = max(1, len(new) // len(buffer))
    return train.select(torch.cat([new, buffer.repeat(repeats)]))


def rehearsal_buffer(train: ImageDataset, tasks: list[list[int]], task: int, size: int, seed: int) -> torch.Tensor:
    """Indices of the memory replayed in task ``task``: at most ``size`` images, as evenly spread over
    the classes of tasks 0..task-1 as possible. Built as a memory kept over the sequence is: after
    each task its classes take their share of the room, drawn (seeded) from their training images,
    and each older class keeps the first images of its share of the previous memory, so the memory
    of task t + 1 holds, of the older classes, only images the memory of task t held."""
    memory: dict[int, torch.Tensor] = {}
    for finished in range(task):
        for label in tasks[finished]:
            of_class = task_index(train.targets, [label])
            generator = torch.Generator().manual_seed(seed * 1000 + label)
            memory[label] = of_class[torch.randperm(len(of_class), generator=generator)]
        classes = sorted(memory)
        share, extra = divmod(size, len(classes))
        for rank, label in enumerate(classes):  # the first ``extra`` classes keep one image more
            memory[label] = memory[label][:share + (rank < extra)]
    return torch.cat([memory[label] for label in sorted(memory)])


def run_sequence(start: StartingPoint, out_dir: str | Path, training: ClassifierTraining,
                 settings: ContinualSettings, *, resume: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train a copy of ``start``'s encoder on the task sequence with ``settings``' strategy; the accuracy
    matrix, average accuracy and forgetting in ``out_dir/continual.json`` (+ ``.md``, ``.png``)."""
    settings.check()
    if training.label_smoothing:
        raise SelfsupError("label smoothing is not part of the continual strategies; leave it at 0")
    out_dir = Path(out_dir)
    train, test = start.splits.train, start.splits.test
    classes = len(start.data.classes)
    tasks = task_sequence(train, settings)
    torch.manual_seed(training.seed)  # the heads' initialisation: a process's own seed is random
    learner = ContinualLearner(start.fresh_encoder(), classifier_views(ImageInfo.of(start.data)), tasks, classes,
                               settings.scenario, settings.lwf_weight, settings.lwf_temperature)
    view = start.eval_view()
    progress_file = out_dir / "continual.json"
    done = _finished_rows(progress_file, tasks, settings, training) if resume else {}
    matrix = AccuracyMatrix(len(tasks))
    for task in range(len(tasks)):
        run_dir = out_dir / f"task-{task}"
        if task in done:
            if task + 1 not in done:  # the last finished task: its weights are where training goes on
                checkpoint.load_weights(learner, checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"],
                                        str(run_dir))
            row = done[task]
        else:
            learner.current = task
            task_train = task_training_set(train, tasks, task, settings, training.seed)
            task_settings = _task_training(training, settings, task)
            object.__setattr__(learner, "old_network", None)
            learner.rows_frozen_until = 0.0
            if settings.strategy == "lwf" and task > 0:
                learner.keep_old_network()
                steps_per_epoch = max(1, len(task_train) // (task_settings.batch_size // dist.world_size()))
                total = task_settings.steps or task_settings.epochs * steps_per_epoch
                learner.rows_frozen_until = round(task_settings.head_warmup_epochs * steps_per_epoch) / total
            meta = classifier_meta(start.config, start.data, origin=f"continual {settings.strategy} "
                                   f"({settings.scenario}-incremental, after task {task})", classes=classes,
                                   stage="continual", task=task, tasks=tasks, source=start.source)
            fit_classifier(learner, task_train, None, run_dir, task_settings, meta=meta,
                           resume=resume and (run_dir / "checkpoints" / "last.pt").is_file(), quiet=quiet)
            object.__setattr__(learner, "old_network", None)
            learner.rows_frozen_until = 0.0
            row = learner.task_accuracies(test, view, task)
        for j, accuracy in enumerate(row):
            matrix.record(task, j, accuracy)
        done[task] = row
        _save_progress(progress_file, tasks, settings, training, done, start.source)
    report = {**json.loads(progress_file.read_text()), **matrix.to_dict()}
    write_json(progress_file, report)
    title = f"{settings.strategy}, {settings.scenario}-incremental: average {matrix.average_accuracy():.1f}%"
    (out_dir / "accuracy.md").write_text(f"{title}\n\n{matrix.markdown()}\n")
    matrix.plot(out_dir / "accuracy.png", title)
    return report


def _task_training(training: ClassifierTraining, settings: ContinualSettings, task: int) -> ClassifierTraining:
    """The classifier recipe's settings for one task: feature extraction trains the trunk on the first
    task and freezes it after, LwF warms the head up with the trunk frozen (not on the first task:
    there is nothing to keep)."""
    if settings.strategy == "feature-extraction" and task > 0:
        return dataclasses.replace(training, backbone_lr_scale=0.0)
    if settings.strategy == "lwf" and task > 0:
        return dataclasses.replace(training, head_warmup_epochs=settings.lwf_warmup_epochs)
    return training


def _identity(tasks: list[list[int]], settings: ContinualSettings, training: ClassifierTraining) -> dict[str, Any]:
    return {"tasks": tasks, "settings": dataclasses.asdict(settings), "training": dataclasses.asdict(training)}


def _finished_rows(progress_file: Path, tasks: list[list[int]], settings: ContinualSettings,
                   training: ClassifierTraining) -> dict[int, list[float]]:
    if not progress_file.is_file():
        return {}
    saved = json.loads(progress_file.read_text())
    identity = json.loads(json.dumps(_identity(tasks, settings, training)))
    if {key: saved.get(key) for key in identity} != identity:
        raise SelfsupError(f"{progress_file} was written by another task sequence or other settings; "
                           "give a new output folder (or delete this one)")
    return {int(task): row for task, row in saved["rows"].items()}


def _save_progress(progress_file: Path, tasks: list[list[int]], settings: ContinualSettings,
                   training: ClassifierTraining, rows: dict[int, list[float]], source: str) -> None:
    write_json(progress_file, {**_identity(tasks, settings, training), "source": source,
                               "rows": {str(task): row for task, row in sorted(rows.items())}})


def continual(start: StartingPoint, out_dir: str | Path, training: ClassifierTraining, *,
              strategies: list[str], scenarios: list[str], settings: ContinualSettings = ContinualSettings(),
              quiet: bool = False) -> dict[str, Any]:
    """:func:`run_sequence` for every scenario and strategy (each from the same starting weights) in
    ``out_dir/<scenario>-<strategy>``; a comparison table in ``out_dir/continual.md`` / ``.json``."""
    out_dir = Path(out_dir)
    for name in strategies:
        dataclasses.replace(settings, strategy=name).check()
    for name in scenarios:
        dataclasses.replace(settings, scenario=name).check()
    rows, reports, matrices = [], {}, {}
    for scenario in scenarios:
        for strategy in strategies:
            chosen = dataclasses.replace(settings, strategy=strategy, scenario=scenario)
            report = run_sequence(start, out_dir / f"{scenario}-{strategy}", training, chosen, quiet=quiet)
            reports[f"{scenario}-{strategy}"] = report
            matrices[f"{scenario}-IL {strategy}: {report['average_accuracy']:.1f}%"] = AccuracyMatrix.from_dict(report)
            rows.append({"scenario": f"{scenario}-incremental", "strategy": strategy,
                         "average accuracy (%)": report["average_accuracy"],
                         "forgetting": report["forgetting"], "backward transfer": report["backward_transfer"],
                         "final row": " / ".join(f"{v:.1f}" for v in report["matrix"][-1])})
    columns = ["scenario", "strategy", "average accuracy (%)", "forgetting", "backward transfer", "final row"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "continual.json", {"source": start.source, "runs": reports, "summary": rows})
    (out_dir / "continual.md").write_text(markdown_table(rows, columns) + "\n")
    figures.accuracy_matrices(out_dir / "continual.png", {title: m.values.numpy() for title, m in matrices.items()},
                              columns=len(strategies))
    return {"summary": rows, "runs": reports}
