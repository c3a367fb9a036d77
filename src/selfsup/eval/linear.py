"""Linear probe on frozen, cached features: multinomial logistic regression.

Features are standardised with the training set's mean and std (a BatchNorm without affine
parameters, frozen: the "BN" option of the probing protocols). The L2 penalty is chosen on a
held-out, class-balanced 10% of the training set, then the probe is refit on all of it and
scored once on the test set.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return features.mean(0), features.std(0).clamp_min(1e-6)


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    *,
    solver: str = "lbfgs",
    max_iter: int = 500,
    epochs: int = 100,
    batch_size: int = 1024,
    seed: int = 0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, D) and bias (C,) minimising cross-entropy + weight_decay / 2 * ||W||^2.

    ``lbfgs``: full-batch L-BFGS with strong-Wolfe line search (exact and fast up to a few
    hundred thousand samples). ``sgd``: mini-batch SGD with momentum 0.9 and a cosine schedule
    from lr 0.1 over ``epochs`` passes (for feature sets too large for full batches).
    ``init`` warm-starts from another solution (the sweep over penalties uses it).
    """
    generator = torch.Generator().manual_seed(seed)
    # (C, D) so that the weight gradient is grad.T @ x: several times faster than x.T @ grad for C << D.
    weight = torch.zeros(num_classes, features.shape[1]) if init is None else init[0].clone()
    bias = torch.zeros(num_classes) if init is None else init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(x, weight, bias), y) + 0.5 * weight_decay * weight.square().sum()

    if solver == "lbfgs":
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective(features, labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    elif solver == "sgd":
        optimizer = torch.optim.SGD([weight, bias], lr=0.1, momentum=0.9)
        steps_per_epoch = math.ceil(len(features) / batch_size)
        total = epochs * steps_per_epoch
        for step in range(total):
            if step % steps_per_epoch == 0:
                order = torch.randperm(len(features), generator=generator)
            index = order[(step % steps_per_epoch) * batch_size:(step % steps_per_epoch + 1) * batch_size]
            optimizer.param_groups[0]["lr"] = 0.05 * (1 + math.cos(math.pi * step / total))
            optimizer.zero_grad()
            objective(features[index], labels[index]).backward()
            optimizer.step()
    else:
        raise ValueError(f"unknown solver '{solver}'; choose lbfgs or sgd")
    return weight.detach(), bias.detach()


def accuracy(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    return 100.0 * (F.linear(features, weight, bias).argmax(1) == labels).float().mean().item()


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: entry [i, j] is the images of class i predicted as j."""
    cells = labels.long() * num_classes + predicted.long()
    return torch.bincount(cells, minlength=num_classes * num_classes).view(num_classes, num_classes)


def balanced_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held-out) with ``fraction`` of every class held out, chosen by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[:max(1, round(fraction * len(members)))])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    weight_decays: list[float] = (0.0, 1e-5, 1e-4, 1e-3),
    *,
    solver: str = "lbfgs",
    max_iter: int = 500,
    epochs: int = 100,
    seed: int = 0,
) -> dict:
    """Choose the L2 penalty on a held-out 10%, refit on the whole training set, score on test.

    ``confusion[i][j]`` counts the test images of class i predicted as j (the report draws it)."""
    mean, std = standardizer(train_features)
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    fit_index, val_index = balanced_holdout(train_labels, 0.1, seed)
    options = dict(solver=solver, max_iter=max_iter, epochs=epochs, seed=seed)
    validation, solutions, previous = {}, {}, None
    for decay in sorted(weight_decays, reverse=True):  # strong to weak penalty, each from the last
        previous = fit_logistic(train_x[fit_index], train_labels[fit_index], num_classes, decay,
                                init=previous, **options)
        solutions[decay] = previous
        validation[decay] = accuracy(train_x[val_index], train_labels[val_index], *previous)
    best = max(validation, key=lambda d: (validation[d], d))  # ties: the stronger penalty
    weight, bias = fit_logistic(train_x, train_labels, num_classes, best, init=solutions[best], **options)
    predicted = F.linear(test_x, weight, bias).argmax(1)
    return {
        "top1": accuracy(test_x, test_labels, weight, bias),
        "confusion": confusion_matrix(test_labels, predicted, num_classes).tolist(),
        "train_top1": accuracy(train_x, train_labels, weight, bias),
        "weight_decay": best,
        "validation_top1": {str(d): round(v, 2) for d, v in validation.items()},
        "solver": solver,
    }
