"""Recipes: functions that fit what the engine trains, and their settings: pretraining a method
(:mod:`selfsup.methods`), fitting a learner (:mod:`selfsup.learners`) on labels (fine-tuning,
distillation, ClusterFit, continual, multi-task, semi-supervised), and evaluating checkpoints.
No model is defined here."""
from .classifier import ClassifierTraining, fit_classifier
from .loading import build_model
from .pretrain import Pretraining, pretrain

__all__ = ["ClassifierTraining", "Pretraining", "build_model", "fit_classifier", "pretrain"]
