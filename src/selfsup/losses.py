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
