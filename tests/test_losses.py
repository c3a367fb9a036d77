import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import nce_loss, nt_xent


def naive_nt_xent(z_a, z_b, temperature):
    """SimCLR's eq. (1) written as the paper's loop over the 2N anchors."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[j]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("batch, dim, temperature", [(2, 3, 0.5), (5, 8, 0.1), (8, 4, 1.0)])
def test_matches_naive_reference(batch, dim, temperature):
    g = torch.Generator().manual_seed(batch)
    z_a, z_b = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
    assert nt_xent(z_a, z_b, temperature).item() == pytest.approx(naive_nt_xent(z_a, z_b, temperature), rel=1e-5)


def test_collapsed_embeddings_give_log_2n_minus_1():
    z = torch.ones(6, 4)
    assert nt_xent(z, z, 0.5).item() == pytest.approx(math.log(2 * 6 - 1), rel=1e-6)


def test_perfectly_separated_pairs_approach_zero():
    basis = torch.eye(4)
    assert nt_xent(basis, basis, 0.05).item() < 1e-6


def test_hand_computed_two_pair_case():
    # Two orthogonal images, views identical: each anchor sees s=1 (positive) and two s=0 negatives.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0)))
    assert nt_xent(z, z, t).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariance_and_gradient():
    z_a = torch.randn(4, 3, requires_grad=True)
    z_b = torch.randn(4, 3)
    loss = nt_xent(z_a, z_b, 0.2)
    assert loss.item() == pytest.approx(nt_xent(z_a * 7, z_b * 0.1, 0.2).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(z_a.grad).all() and z_a.grad.abs().sum() > 0


# ---------------------------------------------------------------- NCE (NPID, PIRL)

def _naive_nce(positive, negative, num_data, z):
    total = 0.0
    k = negative.shape[1]
    for b in range(positive.shape[0]):
        p = math.exp(positive[b].item()) / z
        h = p / (p + k / num_data)
        total -= math.log(h)
        for j in range(k):
            q = math.exp(negative[b, j].item()) / z
            total -= math.log(1 - q / (q + k / num_data))
    return total / positive.shape[0]


def test_nce_matches_the_naive_formula():
    g = torch.Generator().manual_seed(0)
    positive, negative = torch.randn(5, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    z = 40.0
    assert nce_loss(positive, negative, 100, math.log(z)).item() == pytest.approx(_naive_nce(positive, negative, 100, z),
                                                                                rel=1e-5)


def test_nce_is_k_plus_1_log_2_when_model_and_noise_agree():
    # P(i|v) = exp(s) / Z = K / N = K * P_n for every sample: each of the K + 1 binary terms is log 2.
    k, n, z = 4, 64, 10.0
    s = math.log(z * k / n)
    loss = nce_loss(torch.full((3,), s), torch.full((3, k), s), n, math.log(z))
    assert loss.item() == pytest.approx((k + 1) * math.log(2), rel=1e-6)


def test_nce_ignores_masked_negatives():
    # s = 0, Z = 1: P = 1 for every entry. Of K = 3 drawn of N = 10, one is masked (a sample's own
    # entry): 2 noise samples remain, so K * P_n = 0.2, h = 1 / 1.2, and each noise term is log 6.
    masked = torch.zeros(2, 3)
    masked[:, 2] = float("-inf")
    loss = nce_loss(torch.zeros(2), masked, 10, 0.0)
    assert loss.item() == pytest.approx(math.log(1.2) + 2 * math.log(6.0), rel=1e-6)
    assert nce_loss(torch.zeros(2), masked[:, :2], 10, 0.0).item() == pytest.approx(loss.item())  # = never drawn
