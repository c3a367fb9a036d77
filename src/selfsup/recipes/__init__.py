"""Recipes: what the engine fits, built from a config. Pretraining, the classifier-training recipe
(fine-tuning, and the base of distillation, continual and semi-supervised learning), and the
evaluation of checkpoints."""
from .classifier import Classifier, ClassifierTraining, classifier_views, fit_classifier
from .pretrain import Pretraining, build_model, pretrain

__all__ = ["Classifier", "ClassifierTraining", "Pretraining", "build_model", "classifier_views", "fit_classifier",
           "pretrain"]
