"""Models that learn from labels, siblings of :mod:`selfsup.methods` (which learn without): a
classifier on an encoder, and the classifiers with another loss (a distillation student, a
continual learner, a multi-task learner, the semi-supervised learners). They import nothing above
``eval``; :mod:`selfsup.recipes` fits them."""
from .classifier import FINE_TUNE_AUGMENT, Classifier, classifier_views, classify_all
from .continual import ContinualLearner
from .distiller import Distiller
from .multitask import MultiTaskLearner

__all__ = ["FINE_TUNE_AUGMENT", "Classifier", "ContinualLearner", "Distiller", "MultiTaskLearner", "classifier_views",
           "classify_all"]
