"""Multi-task learning: several supervised tasks on the same images, with three ways of sharing a trunk.

Tasks (built from the labels here): ``class`` (the dataset's classes), ``coarse`` (a grouping
of them: Fashion-MNIST's tops / trousers and dresses / footwear / bags by default) and
``rotation`` (which of 0, 90, 180, 270 degrees an image was turned by; Gidaris et al. 2018 as
an auxiliary task). Sharing (Ruder 2017, "An Overview of Multi-Task Learning in Deep Neural
Networks"):

- ``hard``: one trunk, a head per task (Caruana 1997).
- ``soft``: a trunk per task, kept close by an L2 penalty between their weights,
  ``soft_weight * sum over pairs ||theta_a - theta_b||^2`` (Duong et al. 2015).
- ``cross-stitch`` (Misra et al. 2016, "Cross-stitch Networks for Multi-task Learning"): a
  trunk per task run stage by stage; after each stage the feature maps of the tasks are mixed
  by a learnt T x T matrix, initialised to 0.9 on the diagonal and 0.1 spread over the rest
  (the paper's (0.9, 0.1)), trained at the network's rate. (The paper raises the units' rate
  by 10^2-10^3 over a small base rate; at 10x our SGD 0.1 the first steps diverged: coarse loss
  35, test accuracy 31%, RESULTS section 18.)

Task weights: ``fixed`` (w_i as given) or ``dwa``, time-varying Dynamic Weight Average (Liu
et al. 2019, "End-to-End Multi-Task Learning with Attention", eq. 7): w_i(t) = T_tasks *
softmax_i(r_i(t - 1) / 2), r_i the ratio of task i's mean loss in the last two epochs; tasks
that stopped improving get more weight; 1 in the first two epochs.

Every task's input is the image itself except rotation's (its rotated copy); every trunk
processes every input the tasks need (one batch), each task reads its own rows. Fitted by
:func:`selfsup.recipes.multitask` (the classifier recipe), test accuracy of every task each epoch.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataFacts, ImageDataset
from ..engine import Batch
from ..errors import SelfsupError
from ..models import StagedBackbone
from ..views.pretext import rotate_all, rotate_each
from .classifier import classify_all

SHARING = ("hard", "soft", "cross-stitch")
WEIGHTING = ("fixed", "dwa")
TASKS = ("class", "coarse", "rotation")

COARSE_GROUPS = {
    "fashion_mnist": [[0, 2, 4, 6], [1, 3], [5, 7, 9], [8]],  # tops; trouser, dress; footwear; bag
    "cifar10": [[0, 1, 8, 9], [2, 3, 4, 5, 6, 7]],  # vehicles; animals
}


@dataclass
class Task:
    """A classification task on the images: its name, number of outputs, and targets from the labels."""

    name: str
    outputs: int
    rotated: bool = False
    class_to_target: torch.Tensor | None = None

    def targets(self, labels: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        if self.rotated:
            return turns
        if self.class_to_target is None:
            return labels
        return self.class_to_target.to(labels.device)[labels]


def build_tasks(names: list[str], data: DataFacts, coarse: list[list[int]] | None = None) -> list[Task]:
    classes = len(data.classes)
    unknown = [n for n in names if n not in TASKS]
    if unknown or len(set(names)) != len(names) or len(names) < 1:
        raise SelfsupError(f"tasks must be distinct names among {', '.join(TASKS)}, got {names}")
    tasks = []
    for name in names:
        if name == "class":
            tasks.append(Task("class", classes))
        elif name == "rotation":
            tasks.append(Task("rotation", 4, rotated=True))
        else:
            groups = coarse or COARSE_GROUPS.get(data.dataset)
            if groups is None:
                raise SelfsupError(f"no coarse grouping is known for {data.dataset}; give one with --coarse "
                                   "(class indices per group, e.g. --coarse 0,1 2,3)")
            if sorted(c for g in groups for c in g) != list(range(classes)):
                raise SelfsupError(f"the coarse groups must cover each of the {classes} classes once, got {groups}")
            mapping = torch.empty(classes, dtype=torch.long)
            for group, members in enumerate(groups):
                mapping[members] = group
            tasks.append(Task("coarse", len(groups), class_to_target=mapping))
    return tasks


class CrossStitch(nn.Module):
    """Mixes the tasks' feature maps after a stage: x~_a = sum_b alpha[a, b] x_b."""

    def __init__(self, tasks: int, diagonal: float = 0.9) -> None:
        super().__init__()
        off = (1.0 - diagonal) / (tasks - 1) if tasks > 1 else 0.0
        self.alpha = nn.Parameter(torch.full((tasks, tasks), off) + torch.eye(tasks) * (diagonal - off))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(maps)  # (T, B, C, H, W)
        return list(torch.einsum("ab,b...->a...", self.alpha.to(stacked.dtype), stacked).unbind(0))


class SharedTrunks(nn.Module):
    """The trunk(s) of a sharing mode: ``forward(x)`` -> one feature vector per task."""

    def __init__(self, encoder: nn.Module, tasks: int, sharing: str) -> None:
        super().__init__()
        if sharing not in SHARING:
            raise SelfsupError(f"unknown sharing '{sharing}'; use one of {', '.join(SHARING)}")
        self.sharing, self.tasks = sharing, tasks
        copies = 1 if sharing == "hard" else tasks
        self.trunks = nn.ModuleList([encoder] + [copy.deepcopy(encoder) for _ in range(copies - 1)])
        self.num_features = encoder.num_features
        self.stitches = nn.ModuleList()
        if sharing == "cross-stitch":
            if not isinstance(encoder, StagedBackbone):
                raise SelfsupError(f"cross-stitch units need a trunk that runs stage by stage (a ResNet); "
                                   f"{type(encoder).__name__} does not")
            self.stitches = nn.ModuleList(CrossStitch(tasks) for _ in encoder.stage_functions())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.sharing == "hard":
            return [self.trunks[0](x)] * self.tasks
        if self.sharing == "soft":
            return [trunk(x) for trunk in self.trunks]
        maps = [x] * self.tasks
        columns = [trunk.stage_functions() for trunk in self.trunks]
        for stage, stitch in enumerate(self.stitches):
            maps = stitch([column[stage][1](m) for column, m in zip(columns, maps)])
        return [trunk.pool(m) for trunk, m in zip(self.trunks, maps)]

    def soft_penalty(self) -> torch.Tensor:
        """sum over pairs of trunks of ||theta_a - theta_b||^2 (0 with one trunk)."""
        total = torch.zeros((), device=next(self.parameters()).device)
        for a, b in itertools.combinations(self.trunks, 2):
            for pa, pb in zip(a.parameters(), b.parameters()):
                total = total + (pa - pb).pow(2).sum()
        return total


class MultiTaskLearner(nn.Module):
    """Shared trunk(s) + a linear head per task, trained on the weighted sum of the tasks' cross-entropies.

    ``classify`` is the first task's prediction (what single-task tools read); :meth:`test_accuracies`
    measures every task.
    """

    encoder_prefix = "encoder.trunks.0"

    def __init__(self, encoder: nn.Module, tasks: list[Task], views: nn.Module, *, sharing: str = "hard",
                 weighting: str = "fixed", weights: dict[str, float] | None = None, soft_weight: float = 0.01,
                 epochs: int = 1, dwa_temperature: float = 2.0) -> None:
        super().__init__()
        if weighting not in WEIGHTING:
            raise SelfsupError(f"unknown task weighting '{weighting}'; use fixed or dwa")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - {t.name for t in tasks})
        if unknown:
            raise SelfsupError(f"task weights for tasks that are not trained: {', '.join(unknown)}")
        self.tasks, self.views, self.sharing, self.weighting = tasks, views, sharing, weighting
        self.encoder = SharedTrunks(encoder, len(tasks), sharing)
        self.heads = nn.ModuleList(nn.Linear(encoder.num_features, task.outputs) for task in tasks)
        self.fixed_weights = torch.tensor([weights.get(task.name, 1.0) for task in tasks])
        self.soft_weight, self.epochs, self.dwa_temperature = soft_weight, max(epochs, 1), dwa_temperature
        # DWA's memory: the mean loss of each task in the last two finished epochs, and the running epoch's sums.
        self.register_buffer("epoch_losses", torch.zeros(2, len(tasks)))
        self.register_buffer("running", torch.zeros(len(tasks) + 2))  # sums per task, count, epoch index

    def param_groups(self) -> list[dict]:
        groups = [{"name": "backbone", "params": list(self.encoder.trunks.parameters())},
                  {"name": "head", "params": list(self.heads.parameters())}]
        if len(self.encoder.stitches):
            groups.append({"name": "stitch", "params": list(self.encoder.stitches.parameters())})
        return groups

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch every trunk processes: the images, then (if a task needs it) their rotated copies."""
        turns = torch.randint(4, (len(x),), device=x.device)
        if any(task.rotated for task in self.tasks):
            return torch.cat([x, rotate_each(x, turns)]), turns
        return x, turns

    def task_logits(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        inputs, turns = self._inputs(x)
        features = self.encoder(inputs)
        n = len(x)
        return [head(f[n:] if task.rotated else f[:n]).float()
                for task, head, f in zip(self.tasks, self.heads, features)], turns

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[0](self.encoder(x)[0])

    def task_weights(self, progress: float) -> torch.Tensor:
        if self.weighting == "fixed":
            return self.fixed_weights
        epoch = int(progress * self.epochs)
        if epoch < 2 or (self.epoch_losses == 0).any():
            return torch.ones(len(self.tasks))
        ratios = self.epoch_losses[1] / self.epoch_losses[0]
        return len(self.tasks) * torch.softmax(ratios.cpu() / self.dwa_temperature, 0)

    @torch.no_grad()
    def _track(self, losses: torch.Tensor, progress: float) -> None:
        epoch = int(progress * self.epochs)
        if epoch != int(self.running[-1]) and self.running[-2] > 0:  # an epoch ended: shift the memory
            self.epoch_losses[0] = self.epoch_losses[1]
            self.epoch_losses[1] = self.running[:-2] / self.running[-2]
            self.running.zero_()
        self.running[:-2] += losses
        self.running[-2] += 1
        self.running[-1] = epoch

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        logits, turns = self.task_logits(batch.views[0])
        losses = torch.stack([F.cross_entropy(out, task.targets(batch.targets, turns))
                              for task, out in zip(self.tasks, logits)])
        self._track(losses.detach(), progress)
        weights = self.task_weights(progress).to(losses.device)
        loss = (weights * losses).sum()
        logged = {f"loss_{task.name}": value.detach() for task, value in zip(self.tasks, losses)}
        logged.update({f"weight_{task.name}": w for task, w in zip(self.tasks, weights)})
        if self.sharing == "soft" and self.soft_weight:
            penalty = self.encoder.soft_penalty()
            loss = loss + self.soft_weight * penalty
            logged["soft_penalty"] = penalty.detach()
        return {"loss": loss, **logged}

    @torch.no_grad()
    def test_accuracies(self, test: ImageDataset, view: nn.Module) -> dict[str, float]:
        """Top-1 (%) of every task on the test images (rotation: each image at all four turns). The
        trunks run once per input (upright, rotated), every task's head reads its own features."""
        out = {}
        for rotated in (False, True):
            tasks = [(i, task) for i, task in enumerate(self.tasks) if task.rotated == rotated]
            if not tasks:
                continue
            images, turns = rotate_all(test.images) if rotated else (test.images, torch.zeros_like(test.targets))
            labels = test.targets.repeat(4) if rotated else test.targets
            logits = classify_all(_AllHeads(self), images, view).split([t.outputs for t in self.tasks], dim=1)
            for index, task in tasks:
                correct = logits[index].argmax(1) == task.targets(labels, turns)
                out[f"test_top1_{task.name}"] = 100.0 * correct.float().mean().item()
        out["test_top1"] = out[f"test_top1_{self.tasks[0].name}"]
        return out


class _AllHeads(nn.Module):
    """Every task's head on its trunk's features, concatenated, as a module with ``classify``."""

    def __init__(self, learner: MultiTaskLearner) -> None:
        super().__init__()
        self.learner = learner

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        features = self.learner.encoder(x)
        return torch.cat([head(f) for head, f in zip(self.learner.heads, features)], dim=1)
