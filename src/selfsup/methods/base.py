"""What every method is: a module whose forward turns a batch of views into ``{"loss": ...}``."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Batch, default_param_groups
from ..errors import SelfsupError
from ..models.heads import HeadTrunk
from ..views import TwoViews


NETWORKS = ("auto", "student", "teacher")


INJECTED_ARGS = ("backbone", "views", "num_images", "seed")
"""Constructor arguments the builder supplies, never read from a config: the trunk and views it built,
and, to the methods whose constructor takes them, the number of training images (a memory bank's
size) and the run's seed (a sampler's, a queue's)."""


class Method(nn.Module):
    """Base of every method (one level of inheritance, no more).

    The contract, used by the engine, evaluation and export:

    - ``views``: uint8 images -> list of view tensors, run by the engine without gradient;
      ``views_class`` is its generator, whose keyword arguments form the ``views`` config section.
    - ``forward(batch, progress)``: ``batch`` holds ``views``, ``targets`` (-1 where unlabelled;
      self-supervised methods ignore them) and ``index`` (dataset indices, for memory banks);
      ``progress`` in [0, 1) is the share of training done (for schedules). Returns
      ``{"loss": scalar, ...}``; other entries are logged.
    - ``encoder``: the network evaluation and export use: the paper's choice of ``network("student")``
      (the trained backbone, ``encoder_prefix`` in the state dict) or ``network("teacher")`` (the
      EMA teacher's backbone, ``teacher_prefix``; DINO evaluates it). ``eval.network`` overrides the
      choice; a checkpoint's encoder loads by its prefix without building heads and banks.
    - ``param_groups()``: named parameter groups for the optimiser (``backbone`` and ``heads`` by
      default; ``optim.lr_scales`` scales them by name).
    - ``after_step(progress)``: EMA and momentum updates, after every optimiser step.
    - ``frozen_epochs()``: parameter-name prefixes that do not train for the first epochs
      (DINO keeps its last layer fixed in the first epoch); ``optim.freeze`` adds the user's.
    - ``embed(x)``: the method's own embedding (projection head, memory features), for the kNN
      evaluation on it: ``embedding_head`` names the head, or the method overrides ``embed``.

    Heads, teachers, banks and queues are submodules and buffers, so ``state_dict()`` is a
    complete checkpoint.
    """

    views_class: type[nn.Module] = TwoViews
    encoder_prefix = "backbone"
    teacher_prefix: str | None = None
    """The backbone of the method's momentum teacher in the state dict (MoCo's key encoder, BYOL's
    target, DINO's teacher); None: the method has no teacher."""
    evaluated_network: Literal["student", "teacher"] = "student"
    """The network the paper evaluates and exports (``eval.network: auto``)."""
    trains_on_tiles = False
    """True when the trunk trains on tiles or half-size images, so its BatchNorm statistics do not
    describe full images: evaluation recalibrates them first (``eval.bn_recalibration``)."""

    def __init__(self, backbone: nn.Module, views: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.views = views

    @property
    def encoder(self) -> nn.Module:
        return self.network()

    def network(self, which: str = "auto") -> nn.Module:
        """The backbone of the student or the teacher (auto: the one the paper evaluates)."""
        return self.get_submodule(self.network_prefix(which))

    @classmethod
    def network_prefix(cls, which: str = "auto") -> str:
        """State-dict prefix of the network ``which`` (``eval.network``: auto, student or teacher)."""
        if which not in NETWORKS:
            raise SelfsupError(f"eval.network is one of {', '.join(NETWORKS)}, got '{which}'")
        which = cls.evaluated_network if which == "auto" else which
        if which == "student":
            return cls.encoder_prefix
        if cls.teacher_prefix is None:
            raise SelfsupError(f"{cls.__name__} has no teacher network; use eval.network=student (or auto)")
        return cls.teacher_prefix

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        return default_param_groups(self)

    def frozen_epochs(self) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called once after every optimiser step with progress in (0, 1]: EMA and momentum updates."""

    embedding_head: str | None = None
    """The head whose L2-normalised output on the backbone's features is the method's own
    embedding (``projector`` for SimCLR, MoCo, BYOL, SimSiam); None: no embedding, unless the
    method defines ``embed`` itself (NPID's and PIRL's memory features)."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the method's own embedding, for the kNN on it (``eval.features=embedding``)."""
        if self.embedding_head is None:
            raise NotImplementedError(f"{type(self).__name__} has no embedding of its own")
        return F.normalize(getattr(self, self.embedding_head)(self.backbone(x)).float(), dim=1)

    def fine_tune_trunk(self, head_layers: int) -> nn.Module:
        """The network fine-tuning starts from when asked to keep ``head_layers`` of the method's
        head: by default the backbone with the first hidden layers of its projection MLP
        (SimCLR v2's trunk, :class:`~selfsup.models.HeadTrunk`)."""
        head = getattr(self, self.embedding_head or "", None)
        if not isinstance(head, nn.Sequential):
            raise SelfsupError(f"{type(self).__name__} has no MLP projection head to fine-tune from; "
                               "use --head-layers 0 (the backbone's output)")
        try:
            return HeadTrunk(self.backbone, head, head_layers)
        except ValueError as error:
            raise SelfsupError(f"{type(self).__name__}: {error} (--head-layers)") from None

    @classmethod
    def has_embedding(cls) -> bool:
        return cls.embedding_head is not None or cls.embed is not Method.embed


def classification(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy and accuracy of a pretext classifier (rotation, permutation, position, exemplar)."""
    logits = logits.float()
    return {"loss": F.cross_entropy(logits, labels), "accuracy": (logits.argmax(1) == labels).float().mean()}


def tile_features(backbone: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
    """(B, T, C, t, t) tiles through one shared trunk -> (B, T, D)."""
    batch, count = tiles.shape[:2]
    return backbone(tiles.flatten(0, 1)).view(batch, count, -1)

