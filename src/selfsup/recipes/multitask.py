"""Multi-task learning: training :class:`~selfsup.learners.MultiTaskLearner` (several supervised tasks
on the same images, three ways of sharing a trunk, fixed or DWA task weights: see
:mod:`selfsup.learners.multitask`) with the classifier recipe, one run or a comparison of every
sharing and weighting against each task alone."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import figures
from ..errors import SelfsupError
from ..learners import MultiTaskLearner, classifier_views
from ..learners.multitask import build_tasks
from ..files import write_json
from ..tables import markdown_table
from ..views import ImageInfo
from .classifier import ClassifierTraining, fit_classifier
from .loading import StartingPoint, classifier_meta
from .sweep import run_or_read


@dataclass
class MultiTaskSettings:
    tasks: list[str] = field(default_factory=lambda: ["class", "coarse"])
    sharing: str = "hard"
    weighting: str = "fixed"
    weights: dict[str, float] = field(default_factory=dict)
    soft_weight: float = 0.01
    coarse: list[list[int]] | None = None


def multitask(start: StartingPoint, run_dir: str | Path, training: ClassifierTraining, settings: MultiTaskSettings,
              *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train a copy of ``start``'s encoder on ``settings.tasks`` with one sharing mode and weighting."""
    if training.label_smoothing:
        raise SelfsupError("label smoothing is not part of multi-task training; leave it at 0")
    tasks = build_tasks(settings.tasks, start.data, settings.coarse)
    torch.manual_seed(training.seed)
    learner = MultiTaskLearner(start.fresh_encoder(), tasks, classifier_views(ImageInfo.of(start.data)),
                               sharing=settings.sharing, weighting=settings.weighting, weights=settings.weights,
                               soft_weight=settings.soft_weight, epochs=_epochs(training, len(start.splits.train)))
    meta = classifier_meta(start.config, start.data, origin=f"multi-task {'+'.join(settings.tasks)} "
                           f"({settings.sharing}, {settings.weighting})", classes=tasks[0].outputs,
                           stage="multi-task", source=start.source, multitask=dataclasses.asdict(settings))
    meta["encoder"]["prefix"] = MultiTaskLearner.encoder_prefix
    return fit_classifier(learner, start.splits.train, start.splits.test, run_dir, training, meta=meta,
                          resume=resume, quiet=quiet)


def _epochs(training: ClassifierTraining, images: int) -> int:
    """The epochs of a run (DWA's time unit), also when it is given in steps."""
    if training.steps is None:
        return training.epochs
    return max(1, training.steps * training.batch_size // images)


def multitask_comparison(start: StartingPoint, out_dir: str | Path, training: ClassifierTraining,
                         settings: MultiTaskSettings, *, sharings: list[str], weightings: list[str],
                         single_task: bool = True, quiet: bool = False) -> dict[str, Any]:
    """:func:`multitask` for every sharing and weighting (and each task alone: the single-task baselines),
    each from the same starting weights, in ``out_dir/<name>``; ``multitask.md`` / ``.json`` / ``.png``.
    Finished runs are read back, interrupted ones resumed."""
    out_dir = Path(out_dir)
    runs: list[tuple[str, MultiTaskSettings]] = []
    if single_task and len(settings.tasks) > 1:
        runs += [(f"single-{task}", dataclasses.replace(settings, tasks=[task], sharing="hard", weighting="fixed"))
                 for task in settings.tasks]
    runs += [(f"{sharing}-{weighting}", dataclasses.replace(settings, sharing=sharing, weighting=weighting))
             for sharing in sharings for weighting in weightings]
    rows = []
    for name, chosen in runs:
        run_dir = out_dir / name
        stamp = {"source": start.source, "multitask": dataclasses.asdict(chosen),
                 "training": dataclasses.asdict(training)}
        summary = run_or_read(run_dir, stamp, lambda resume: multitask(start, run_dir, training, chosen, resume=resume,
                                                                       quiet=quiet),
                              finished="test_top1")
        row = {"run": name, "sharing": chosen.sharing, "weighting": chosen.weighting}
        row.update({f"{task} top-1": summary.get(f"test_top1_{task}") for task in settings.tasks})
        rows.append(row)
    columns = ["run", "sharing", "weighting"] + [f"{task} top-1" for task in settings.tasks]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "multitask.json", {"source": start.source, "settings": dataclasses.asdict(settings),
                                             "training": dataclasses.asdict(training), "rows": rows})
    shown = [{key: "-" if value is None else value for key, value in row.items()} for row in rows]
    (out_dir / "multitask.md").write_text(markdown_table(shown, columns) + "\n")
    figures.task_accuracies(out_dir / "multitask.png", rows, settings.tasks)
    return {"rows": rows}
