"""ClusterFit (Yan, Misra, Gupta, Ghadiyaram, Mahajan. "ClusterFit: Improving Generalization of
Visual Representations", CVPR 2020): cluster a pretrained network's features, train a fresh
network to predict the clusters, use that network downstream.

Stages, each written to the run directory and skipped when already there (a killed run
continues at the stage it reached; the training stage resumes from its last checkpoint):

1. ``features.pt``: features of the training images from N_pre, at its output or a pooled
   stage (``layer``: ``conv1``, ``res2`` .. ``res5``), L2-normalised.
2. ``clusters.pt`` (+ ``clusters.json``): k-means into K clusters (faiss when installed, torch
   otherwise; :func:`selfsup.eval.kmeans`): centroids, assignments, cluster sizes.
3. ``ncf/``: N_cf trained from scratch on the cluster indices as labels, with the classifier
   recipe (every parameter at the full rate).
4. ``clusterfit.json``: kNN and linear probe, on the real labels, of N_pre and of N_cf.

The paper's defaults scale with ImageNet (K = 16,000 clusters of res5 features of 1M
images); for 60,000 Fashion-MNIST images K = 100-500 keeps clusters populated.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import load_splits
from ..engine.lock import writing_into
from ..errors import SelfsupError
from ..eval import extract_features, kmeans
from ..eval.layers import stage_features
from ..learners import Classifier, classifier_views
from ..models import STAGES, trunk_of
from ..files import load_cached_tensors, save_tensors, write_json
from ..views import EvalView, ImageInfo
from .classifier import ClassifierTraining, fit_classifier
from .evaluate import checkpoint_evaluator
from .loading import backbone_changes, classifier_meta, fresh_network, load_encoder
from .meta import RunMeta
from .sweep import run_or_read


@dataclass
class ClusterFitSettings:
    clusters: int = 200
    """K, the number of pseudo-classes."""
    layer: str = "output"
    """Features N_pre is clustered on: its output, or a stage pooled to about ``layer_dim`` features."""
    layer_dim: int = 2048
    iterations: int = 50
    backend: str = "auto"
    training: ClassifierTraining = field(default_factory=lambda: ClassifierTraining.for_strategy("cluster"))
    """How N_cf is trained on the pseudo-labels (from scratch: the trunk at the head's rate)."""


def cluster_features(path: str | Path, settings: ClusterFitSettings, overrides: list[str] = (),
                     quiet: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """L2-normalised features of the training images from the encoder of checkpoint ``path``."""
    return encoder_features(*load_encoder(path, overrides), settings, quiet)


def encoder_features(encoder: torch.nn.Module, config: RunConfig, meta: RunMeta,
                     settings: ClusterFitSettings, quiet: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """:func:`cluster_features` of an encoder already loaded from its checkpoint."""
    train = load_splits(config.data, seed=config.train.seed, labeled=False, quiet=quiet).train
    view = EvalView.of(meta.data)
    options = {"batch_size": config.eval.batch_size, "desc": f"features of N_pre ({settings.layer})" if not quiet
               else None}
    if settings.layer == "output":
        features = extract_features(encoder, train.images, view, **options)
    elif settings.layer in STAGES:
        trunk = trunk_of(encoder)
        features = stage_features(trunk, train.images, view, dims=(settings.layer_dim,),
                                  **options)[f"{settings.layer}@{settings.layer_dim}"]
    else:
        raise SelfsupError(f"unknown layer '{settings.layer}'; use output or one of {', '.join(STAGES)}")
    return F.normalize(features.float(), dim=1), {"images": len(train), "layer": settings.layer}


def clusterfit(path: str | Path, run_dir: str | Path, settings: ClusterFitSettings, *, student: list[str] = (),
               overrides: list[str] = (), evaluation: list[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or continue) every stage of ClusterFit from the checkpoint ``path`` into ``run_dir``
    (locked against other writers while it runs). ``overrides`` change the config of N_pre's run
    (D_cf: the images clustered and N_cf learns from); ``evaluation`` the config both networks are
    scored on (default: the same), e.g. ``["data.classes=[5, 6, 7, 8, 9]"]`` for the paper's
    measure, transfer to classes N_pre never saw."""
    with writing_into(own=run_dir):
        return _clusterfit(path, Path(run_dir), settings, student, overrides,
                           list(overrides) if evaluation is None else list(evaluation), quiet)


def _clusterfit(path: str | Path, run_dir: Path, settings: ClusterFitSettings, student: list[str],
                overrides: list[str], evaluation: list[str], quiet: bool) -> dict[str, Any]:
    student = backbone_changes(student)
    encoder, config, meta = load_encoder(path, overrides)  # once, for every stage
    source = meta.source
    stamp = {"source": source, "layer": settings.layer, "layer_dim": settings.layer_dim}

    features_file = run_dir / "features.pt"
    saved = load_cached_tensors(features_file)
    if saved is None or saved.get("stamp") != json.dumps(stamp):
        features, info = encoder_features(encoder, config, meta, settings, quiet)
        save_tensors({"features": features, "stamp": json.dumps(stamp), **info}, features_file)
    else:
        features = saved["features"]

    clusters_file = run_dir / "clusters.pt"
    wanted = json.dumps({**stamp, "clusters": settings.clusters, "iterations": settings.iterations,
                         "seed": settings.training.seed})
    saved = load_cached_tensors(clusters_file)
    if saved is None or saved.get("stamp") != wanted:
        result = kmeans(features, settings.clusters, iterations=settings.iterations, seed=settings.training.seed,
                        backend=settings.backend, spherical=True)
        sizes = torch.bincount(result.assignments, minlength=settings.clusters)
        save_tensors({"centroids": result.centroids, "assignments": result.assignments, "stamp": wanted},
                     clusters_file)
        write_json(run_dir / "clusters.json", {
            "clusters": settings.clusters, "backend": result.backend, "iterations": result.iterations,
            "inertia": result.inertia, "smallest": int(sizes.min()), "largest": int(sizes.max()),
            "sizes": sizes.tolist()})
        assignments = result.assignments
    else:
        assignments = saved["assignments"]

    ncf_dir = run_dir / "ncf"
    ncf_stamp = {**json.loads(wanted), "backend": settings.backend, "student": list(student),
                 "training": dataclasses.asdict(settings.training)}
    run_or_read(ncf_dir, ncf_stamp, lambda resume: train_ncf(config, meta, ncf_dir, assignments, settings,
                                                             student=student, resume=resume, quiet=quiet))

    results = {}
    for name, checkpoint_path in (("N_pre", path), ("N_cf", ncf_dir)):
        evaluator, config = checkpoint_evaluator(checkpoint_path, evaluation, run_dir / "eval", quiet)
        evaluator.name = name
        measured = evaluator.run(["knn", "linear"], config.eval, config.train.seed)[name]
        results[name] = {protocol: round(measured[protocol]["top1"], 2) for protocol in ("knn", "linear")}
    report = {"source": source, "settings": dataclasses.asdict(settings), "results": results,
              "evaluated_with": evaluation,
              "clusters": json.loads((run_dir / "clusters.json").read_text())["clusters"]}
    write_json(run_dir / "clusterfit.json", report)
    return report


def train_ncf(config: RunConfig, n_pre: RunMeta, run_dir: Path, assignments: torch.Tensor,
              settings: ClusterFitSettings, *, student: list[str] = (), resume: bool = False,
              quiet: bool = False) -> dict[str, Any]:
    """N_cf: a fresh network (N_pre's backbone of ``config``, or ``student`` changes to it) on the
    cluster labels of N_pre's checkpoint ``n_pre``."""
    data = n_pre.data
    config, encoder = fresh_network(config, student, data, settings.training.seed)
    train = load_splits(config.data, seed=config.train.seed, labeled=False, quiet=quiet).train
    if len(assignments) != len(train):
        raise SelfsupError(f"{len(assignments)} cluster assignments for {len(train)} training images: the "
                           "dataset changed since the clustering; delete features.pt and clusters.pt")
    pseudo = dataclasses.replace(train, targets=assignments.long(),
                                 classes=[f"cluster {i}" for i in range(settings.clusters)])
    torch.manual_seed(settings.training.seed)  # the head's initialisation: a process's own seed is random
    model = Classifier(encoder, settings.clusters, classifier_views(ImageInfo.of(data)), settings.training.label_smoothing)
    meta = classifier_meta(config, data, origin=f"ClusterFit N_cf ({settings.clusters} clusters)",
                           classes=settings.clusters, stage="clusterfit", source=n_pre.source)
    return fit_classifier(model, pseudo, None, run_dir, settings.training, meta=meta, resume=resume, quiet=quiet)
