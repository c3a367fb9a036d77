"""A classifier: an encoder (pretrained or random) plus a linear head, trained with cross-entropy.

Its parameter groups are ``backbone`` and ``head`` so the trunk can train at a fraction of the
head's rate (fine-tuning protocols: 1/10) and can be frozen for a warm-up of the head (LwF's
first phase) in the same fit. The distiller, the continual learner and the semi-supervised
learners are classifiers with another loss; :func:`selfsup.recipes.fit_classifier` fits any of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Batch
from ..errors import SelfsupError
from ..losses import distillation
from ..views import AugmentSpec, ImageInfo, OneView

FINE_TUNE_AUGMENT = AugmentSpec(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)
"""Crop and flip: the usual augmentation of supervised fine-tuning on small images."""


class Classifier(nn.Module):
    """``head(encoder(x))`` trained with cross-entropy on the labelled images of a batch.

    ``label_smoothing`` eps is distillation from a uniform teacher (SPEC 8): eps of the loss is
    KL(uniform || softmax(s)), the rest cross-entropy with the label, i.e. cross-entropy with
    targets (1 - eps) one-hot + eps / K (Szegedy et al. 2016), less the constant eps * log K.
    """

    encoder_prefix = "encoder"

    def __init__(self, encoder: nn.Module, num_classes: int, views: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise SelfsupError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.encoder, self.views, self.label_smoothing = encoder, views, label_smoothing
        self.head = nn.Linear(encoder.num_features, num_classes)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.encoder(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the network evaluation reads: the trained one (a learner that evaluates a moving
        average of its weights overrides this)."""
        return self.classify(x)

    def param_groups(self) -> list[dict]:
        return [{"name": "backbone", "params": list(self.encoder.parameters())},
                {"name": "head", "params": list(self.head.parameters())}]

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        logits = self.classify(batch.views[0]).float()
        labelled = batch.targets >= 0
        if self.label_smoothing:
            uniform = torch.zeros_like(logits[labelled])
            loss = distillation(logits[labelled], uniform, 1.0, batch.targets[labelled], self.label_smoothing)
        else:
            loss = F.cross_entropy(logits[labelled], batch.targets[labelled])
        accuracy = (logits[labelled].argmax(1) == batch.targets[labelled]).float().mean()
        return {"loss": loss, "accuracy": accuracy}


@torch.no_grad()
def classify_all(model: nn.Module, images: torch.Tensor, view: nn.Module, batch_size: int = 512,
                 raw: bool = False) -> torch.Tensor:
    """``model.predict`` (the evaluated network; ``raw``: ``model.classify``, the trained one) of uint8
    ``images`` in the deterministic ``view``, in evaluation mode, batched on the model's device: fp32
    logits on the CPU (the model's mode is put back)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    view = view.to(device)
    network = model.classify if raw or not hasattr(model, "predict") else model.predict
    logits = [network(view(chunk.to(device))).float().cpu() for chunk in images.split(batch_size)]
    model.train(was_training)
    return torch.cat(logits)


def classifier_views(image: ImageInfo, augment: AugmentSpec = FINE_TUNE_AUGMENT) -> OneView:
    """The training view of a classifier: one mildly augmented view."""
    return OneView(image, augment=augment)
