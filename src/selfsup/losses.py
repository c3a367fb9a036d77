"""Losses as pure functions of tensors (state such as banks and queues lives on methods)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .engine import dist


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1).

    Args:
        z_a, z_b: (B, D) projections of two views of the same B images on this process.
        temperature: tau; logits are cosine similarities / tau.

    Every one of the 2B local projections is classified against the 2N - 1 other projections
    of the global batch (N = B x world size, gathered *with* gradient): its positive is the other
    view of its image, the remaining 2N - 2 are negatives. Returns the mean over the 2B rows;
    averaged over processes (DDP) this is the loss of the global batch.
    For identical (collapsed) embeddings the loss is log(2N - 1).
    """
    batch = z_a.shape[0]
    local = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)                     # (2B, D)
    every = torch.cat([dist.gather_with_grad(local[:batch]), dist.gather_with_grad(local[batch:])])  # (2N, D)
    total = every.shape[0] // 2
    logits = local @ every.T / temperature                                         # (2B, 2N)
    # Row i of view a is column offset + i of `every`; its positive is the same image in view b.
    own = torch.arange(batch, device=local.device) + dist.rank() * batch
    self_columns = torch.cat([own, own + total])
    positive_columns = torch.cat([own + total, own])
    rows = torch.arange(2 * batch, device=local.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_columns] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive_columns)


def nce_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor, num_data: int,
             log_z: torch.Tensor | float) -> torch.Tensor:
    """Noise-contrastive estimation of the non-parametric softmax (Wu et al. 2018, eqs. 3-6).

    Args:
        positive_logits: (B,) s = v . m_i / tau of each sample with its own memory entry.
        negative_logits: (B, K) the same for K noise samples drawn uniformly (P_n = 1 / N); entries of
            -inf are masked out (a sample drawn as its own noise), so that row has one noise sample less.
        num_data: N, the number of instances (memory entries).
        log_z: log of the normalising constant Z of P(i | v) = exp(s) / Z.

    Each sample is a binary problem: "data" with probability h = P / (P + K P_n) for its
    positive, "noise" with probability 1 - h for each negative. Returns
    mean_b [ -log h(pos) - sum_k log(1 - h(neg_k)) ]. Where P = K P_n every term is log 2.
    """
    drawn = torch.isfinite(negative_logits).sum(1, keepdim=True).clamp_min(1).float()   # (B, 1)
    log_noise = torch.log(drawn / num_data)                                             # log(K P_n) per row
    log_p_pos = positive_logits.float() - log_z
    log_p_neg = negative_logits.float() - log_z
    log_h_pos = log_p_pos - torch.logaddexp(log_p_pos, log_noise.squeeze(1))
    log_not_h_neg = log_noise - torch.logaddexp(log_p_neg, log_noise)
    return -(log_h_pos + log_not_h_neg.sum(1)).mean()


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of MoCo (He et al. 2020, eq. 1): each query against its own key and K queued keys.

    Args:
        query, key: (B, D) the two encoders' outputs for two views of the same B images
            (L2-normalised here).
        queue: (K, D) unit-length keys of earlier batches, the negatives.
        temperature: tau (MoCo v1: 0.07; v2: 0.2).

    logits = [q . k+, q . queue] / tau, cross-entropy with the positive as class 0, mean over B.
    For a query equal to its key and orthogonal to every queued key the loss is
    log(1 + K exp(-1 / tau)).
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.float().T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-cos(p, stopgrad(z)), the mean over rows: SimSiam's D (Chen & He 2021, eq. 1), in [-1, 1].

    BYOL's regression loss ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z) (Grill et al. 2020, eq. 2) is
    ``2 + 2 * negative_cosine(p, z)``. The target never receives a gradient.
    """
    return -F.cosine_similarity(prediction.float(), target.detach().float(), dim=1).mean()


def barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, off_diagonal_weight: float = 5e-3,
                 eps: float = 1e-5) -> torch.Tensor:
    """The Barlow Twins loss (Zbontar et al. 2021, eqs. 1-2) over the global batch.

    Args:
        z_a, z_b: (B, D) embeddings of two views of the same B images on this process.
        off_diagonal_weight: lambda (5e-3 in the paper).
        eps: added to the variance, as the paper's BatchNorm does.

    Each embedding dimension is normalised to zero mean and unit variance over the N images of
    the *global* batch (gathered with gradient), C = z_a_n^T z_b_n / N is the D x D
    cross-correlation, and the loss is sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2. Every
    process computes the same loss of the global batch; the gathered embeddings' backward sums
    the processes' gradients and DDP divides them by the world size, so two processes give the
    gradient of one process on the concatenated batch (tested). Normalising per process and
    averaging the per-process C instead would be a different, batch-size-dependent loss.
    For identical views with unit-variance, uncorrelated dimensions the loss is ~0.
    """
    every_a = dist.gather_with_grad(z_a.float())
    every_b = dist.gather_with_grad(z_b.float())

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    correlation = standardise(every_a).T @ standardise(every_b) / len(every_a)
    diagonal = torch.diagonal(correlation)
    on_diagonal = (1 - diagonal).pow(2).sum()
    off_diagonal = correlation.pow(2).sum() - diagonal.pow(2).sum()
    return on_diagonal + off_diagonal_weight * off_diagonal


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temperature: float = 0.1, teacher_temperature: float = 0.04) -> torch.Tensor:
    """DINO's cross-entropy between a centred, sharpened teacher and the student (Caron et al. 2021, eq. 1 and Alg. 1).

    Args:
        student: per crop (globals first, then locals), the student head's (B, K) logits.
        teacher: per global crop, the teacher head's (B, K) logits (no gradient flows into them).
        center: (K,) running mean of the teacher's logits, subtracted before the softmax.

    P_t = softmax((t - center) / tau_t), log P_s = log_softmax(s / tau_s); the loss is the mean
    over every pair (teacher crop i, student crop v) with v != i of -sum_k P_t log P_s, each
    averaged over the batch. With a uniform teacher it is the cross-entropy of the uniform
    distribution against the student: log K for a uniform student.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temperature, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student]
    terms = [-(target * log_probs[v]).sum(-1).mean()
             for i, target in enumerate(targets) for v in range(len(log_probs)) if v != i]
    return torch.stack(terms).mean()


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 targets: torch.Tensor | None = None, teacher_weight: float = 1.0) -> torch.Tensor:
    """Knowledge distillation (Hinton, Vinyals, Dean 2015), as SimCLR v2's third stage uses it.

    ``teacher_weight * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - teacher_weight) * CE(y, s)``,
    both terms means over the batch (the label term over the images with a target >= 0).
    The T^2 keeps the soft term's gradient at the scale of the label term's when T changes
    (Hinton et al., Sec. 2). KL differs from SimCLR v2's cross-entropy with the teacher's
    probabilities (Chen et al. 2020b, eq. 2) by the teacher's entropy, a constant: same gradient,
    and 0 when the student matches the teacher. ``teacher_weight=1`` needs no labels.
    """
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher_log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    soft = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True) * temperature ** 2
    if teacher_weight == 1.0:
        return soft
    labelled = targets >= 0 if targets is not None else torch.zeros(len(student_logits), dtype=torch.bool)
    hard = (F.cross_entropy(student_logits[labelled].float(), targets[labelled]) if labelled.any()
            else student_logits.sum() * 0.0)
    return teacher_weight * soft + (1.0 - teacher_weight) * hard


def candidate_nce(queries: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE as a choice among candidates: CPC (Oord et al. 2018, eq. 4; Henaff et al. 2019)
    and Selfie (Trinh et al. 2019, Sec. 2.1).

    Args:
        queries: (G, Q, D) predictions, in G groups (Selfie: one per image, the distractors
            being the other masked patches of that image; CPC: one group, the whole batch).
        candidates: (G, C, D) the patch embeddings a query chooses among, in its own group.
        targets: (G, Q) the index in ``candidates`` of each query's true patch.

    logits = queries . candidates (plain dot products, no temperature, as both papers),
    cross-entropy with the true patch as the class, mean over all G x Q queries. Returns the
    loss and the share of queries whose largest logit is their true patch.
    """
    logits = (queries.float() @ candidates.float().transpose(1, 2)).flatten(0, 1)   # (G * Q, C)
    targets = targets.flatten()
    return F.cross_entropy(logits, targets), (logits.argmax(1) == targets).float().mean()
