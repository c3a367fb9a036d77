"""A classifier learning a sequence of tasks: one linear layer over all classes, its outputs masked by
the scenario (van de Ven & Tolias 2019, "Three scenarios for continual learning"):

- ``task`` (task-incremental): a head per task, and the task of a test image is known: the
  prediction is among its task's classes (the rows of a task are its head).
- ``class`` (class-incremental): one head, and the prediction is among every class seen so far.

Learning without Forgetting (Li & Hoiem 2016, Sec. 3) is part of the learner: a frozen copy of the
network before the new task gives the old heads' targets on the very batch the new task trains on,
and the old heads' rows are held fixed during the new head's warm-up. The strategies and the
sequence are :mod:`selfsup.recipes.continual`'s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks.ema import frozen_copy
from ..data import ImageDataset
from ..engine import Batch
from ..eval.continual import task_index
from ..losses import distillation
from .classifier import Classifier, classify_all

SCENARIOS = ("task", "class")


class ContinualLearner(Classifier):
    """A trunk and one linear layer over all classes, its outputs masked by task (see the module's
    docstring). ``current`` is the task being learnt (or just learnt, when testing). LwF:
    :meth:`keep_old_network` before a task; the old heads' rows do not move while ``progress`` is
    below ``rows_frozen_until`` (the warm-up)."""

    def __init__(self, encoder: nn.Module, views: nn.Module, tasks: list[list[int]], num_classes: int,
                 scenario: str = "class", lwf_weight: float = 1.0, lwf_temperature: float = 2.0) -> None:
        super().__init__(encoder, num_classes, views)
        self.tasks, self.scenario = tasks, scenario
        self.lwf_weight, self.lwf_temperature = lwf_weight, lwf_temperature
        task_of_class = torch.full((num_classes,), -1, dtype=torch.long)
        for task, classes in enumerate(tasks):
            task_of_class[classes] = task
        self.register_buffer("task_of_class", task_of_class, persistent=False)
        self.current = 0
        self.old_network: nn.Module | None = None
        self.rows_frozen_until = 0.0
        self._kept_rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def allowed(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, K) mask of the outputs an image may be classified among: its task's classes (task
        scenario) or every class of tasks 0..current (class scenario)."""
        if self.scenario == "task":
            return self.task_of_class[None, :] == self.task_of_class[targets][:, None]
        seen = (self.task_of_class >= 0) & (self.task_of_class <= self.current)
        return seen[None, :].expand(len(targets), -1)

    def restricted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.allowed(targets), float("-inf"))

    def old_heads(self) -> list[list[int]]:
        """The outputs LwF keeps: each old task's classes (task scenario), or all old classes as one head."""
        old = self.tasks[:self.current]
        return [list(c) for c in old] if self.scenario == "task" else [[c for task in old for c in task]]

    def old_rows(self) -> torch.Tensor:
        """The head's rows (classes) of the tasks before the current one."""
        return torch.tensor([c for task in self.tasks[:self.current] for c in task], dtype=torch.long)

    def keep_old_network(self) -> None:
        """LwF: a frozen copy of the network as it is now, before the new task, whose outputs on each
        training batch are the old heads' targets. Held outside the module's children, so that it
        stays in evaluation mode, takes no part in the optimiser or DDP, and adds nothing to the
        checkpoint (a resumed task rebuilds it from the previous task's weights)."""
        old = frozen_copy(nn.ModuleDict({"encoder": self.encoder, "head": self.head})).eval()
        object.__setattr__(self, "old_network", old)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        features = self.encoder(batch.views[0])
        if progress < self.rows_frozen_until:  # LwF's warm-up: theta_o fixed, its rows take no gradient
            rows = self.old_rows().to(features.device)
            old = torch.zeros(self.head.out_features, dtype=torch.bool, device=features.device)
            old[rows] = True
            weight = torch.where(old[:, None], self.head.weight.detach(), self.head.weight)
            bias = torch.where(old, self.head.bias.detach(), self.head.bias)
            self._kept_rows = (self.head.weight[rows].detach().clone(), self.head.bias[rows].detach().clone())
            logits = F.linear(features, weight, bias).float()
        else:
            self._kept_rows = None
            logits = self.head(features).float()
        restricted = self.restricted(logits, batch.targets)
        new = F.cross_entropy(restricted, batch.targets)
        out = {"accuracy": (restricted.argmax(1) == batch.targets).float().mean()}
        if self.old_network is None:
            return {"loss": new, **out}
        with torch.no_grad():
            old_network = self.old_network.to(logits.device)
            responses = old_network["head"](old_network["encoder"](batch.views[0])).float()
        old = sum(distillation(logits[:, head], responses[:, head], self.lwf_temperature) for head in self.old_heads())
        return {"loss": new + self.lwf_weight * old, "loss_new": new, "loss_old": old, **out}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # Weight decay moved them in the step: put them back (their momentum holds only that decay
        # term, which fades within a few steps of the warm-up's end).
        if self._kept_rows is not None:
            rows = self.old_rows().to(self.head.weight.device)
            self.head.weight[rows], self.head.bias[rows] = self._kept_rows
            self._kept_rows = None

    @torch.no_grad()
    def task_accuracies(self, test: ImageDataset, view: nn.Module, after: int) -> list[float]:
        """Test accuracy (%) on each task 0..after, the network having learnt tasks 0..after."""
        self.current = after
        logits = classify_all(self, test.images, view)
        correct = self.restricted(logits, test.targets).argmax(1) == test.targets
        return [100.0 * correct[task_index(test.targets, self.tasks[j])].float().mean().item()
                for j in range(after + 1)]
