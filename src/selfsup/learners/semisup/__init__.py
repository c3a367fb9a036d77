"""Semi-supervised learners: classifiers that learn from a few labels and many unlabelled images
(SPEC 8), one method per file; fitted by :mod:`selfsup.recipes.semisup`."""
from .base import Common, LabelsOnly, SemiSupervised, SemiViews, sigmoid_rampup, squared_error
from .entropy_minimization import EntropyMinimization
from .fixmatch import FixMatch
from .mean_teacher import MeanTeacher
from .mixmatch import MixMatch, sharpen
from .pi_model import PiModel
from .pseudo_label import PseudoLabel
from .temporal_ensembling import TemporalEnsembling
from .uda import UDA

METHODS: dict[str, type[SemiSupervised]] = {
    "labels-only": LabelsOnly,
    "pseudo-label": PseudoLabel,
    "entropy-min": EntropyMinimization,
    "pi-model": PiModel,
    "temporal-ensembling": TemporalEnsembling,
    "mean-teacher": MeanTeacher,
    "fixmatch": FixMatch,
    "uda": UDA,
    "mixmatch": MixMatch,
}

__all__ = ["METHODS", "Common", "EntropyMinimization", "FixMatch", "LabelsOnly", "MeanTeacher", "MixMatch", "PiModel",
           "PseudoLabel", "SemiSupervised", "SemiViews", "TemporalEnsembling", "UDA", "sharpen", "sigmoid_rampup",
           "squared_error"]
