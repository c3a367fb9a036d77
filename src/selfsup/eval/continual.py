"""Continual-learning bookkeeping: task splits and the accuracy matrix.

The accuracy matrix R (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual
Learning"): R[i, j] is the test accuracy on task j after training on tasks 0..i. From it,
average accuracy (the last row's mean), backward transfer BWT = mean over j < T-1 of
R[T-1, j] - R[j, j], and forgetting (Chaudhry et al. 2018, "Riemannian Walk"): for every task
but the last, the best accuracy it ever had before the end minus its final accuracy, averaged.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import figures
from ..errors import SelfsupError
from ..tables import markdown_table
def split_classes(classes: int, per_task: int = 2, order: list[int] | None = None) -> list[list[int]]:
    """Class indices 0..classes-1 (or ``order``, a permutation of them) cut into consecutive tasks
    of ``per_task`` classes: split Fashion-MNIST is ``split_classes(10, 2)`` = 5 tasks."""
    order = list(range(classes)) if order is None else list(order)
    if sorted(order) != list(range(classes)):
        raise SelfsupError(f"the class order must be a permutation of 0..{classes - 1}, got {order}")
    if per_task < 1 or classes % per_task:
        raise SelfsupError(f"{classes} classes do not split into tasks of {per_task}")
    return [order[i:i + per_task] for i in range(0, classes, per_task)]


def task_index(targets: torch.Tensor, task_classes: list[int]) -> torch.Tensor:
    """Indices of the images whose label is one of ``task_classes``."""
    return torch.isin(targets, torch.tensor(task_classes)).nonzero().squeeze(1)


class AccuracyMatrix:
    """R[i, j]: accuracy (%) on task j after training task i; NaN until measured."""

    def __init__(self, tasks: int) -> None:
        if tasks < 1:
            raise SelfsupError(f"a task sequence needs at least one task, got {tasks}")
        self.values = torch.full((tasks, tasks), float("nan"))

    @property
    def tasks(self) -> int:
        return len(self.values)

    def record(self, after_task: int, task: int, accuracy: float) -> None:
        self.values[after_task, task] = accuracy

    def _final_row(self) -> torch.Tensor:
        last = self.values[-1]
        if torch.isnan(last).any():
            raise SelfsupError("the accuracy matrix is incomplete: every task must be tested after the last one")
        return last

    def average_accuracy(self) -> float:
        """Mean accuracy over all tasks after the last one."""
        return self._final_row().mean().item()

    def backward_transfer(self) -> float:
        """Mean of R[T-1, j] - R[j, j] over the tasks before the last (negative: forgetting)."""
        if self.tasks < 2:
            return 0.0
        final = self._final_row()
        return torch.stack([final[j] - self.values[j, j] for j in range(self.tasks - 1)]).mean().item()

    def forgetting(self) -> float:
        """Mean over the tasks before the last of (best accuracy before the end) - (final accuracy)."""
        if self.tasks < 2:
            return 0.0
        final = self._final_row()
        drops = [torch.nan_to_num(self.values[j:-1, j], nan=float("-inf")).max() - final[j]
                 for j in range(self.tasks - 1)]
        return torch.stack(drops).mean().item()

    def to_dict(self) -> dict:
        return {"matrix": [[None if v != v else round(v, 2) for v in row.tolist()] for row in self.values],
                "average_accuracy": round(self.average_accuracy(), 2),
                "backward_transfer": round(self.backward_transfer(), 2), "forgetting": round(self.forgetting(), 2)}

    @classmethod
    def from_dict(cls, saved: dict) -> AccuracyMatrix:
        """The matrix of a :meth:`to_dict`."""
        matrix = cls(len(saved["matrix"]))
        matrix.values = torch.tensor([[float("nan") if v is None else v for v in row] for row in saved["matrix"]])
        return matrix

    def markdown(self) -> str:
        rows = [{"after task": i} for i in range(self.tasks)]
        for (i, j), value in _cells(self.values):
            rows[i][f"task {j}"] = value
        return markdown_table(rows, ["after task"] + [f"task {j}" for j in range(self.tasks)])

    def plot(self, path: Path, title: str) -> None:
        figures.accuracy_matrices(path, {title: self.values.numpy()})


def _cells(values: torch.Tensor) -> list[tuple[tuple[int, int], float]]:
    """((row, column), value) of every measured entry."""
    return [((i, j), values[i, j].item()) for i in range(len(values)) for j in range(values.shape[1])
            if values[i, j] == values[i, j]]
