import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import barlow_twins, dino_loss, info_nce, nce_loss, negative_cosine, nt_xent


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


# ---------------------------------------------------------------- InfoNCE (MoCo)

def test_info_nce_matches_a_per_sample_reference():
    g = torch.Generator().manual_seed(3)
    query, key, queue = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(11, 8, generator=g)
    queue = F.normalize(queue, dim=1)
    total = 0.0
    for b in range(5):
        q, k = F.normalize(query[b], dim=0), F.normalize(key[b], dim=0)
        logits = [float(q @ k) / 0.2] + [float(q @ n) / 0.2 for n in queue]
        total -= logits[0] - math.log(sum(math.exp(v) for v in logits))
    assert info_nce(query, key, queue, 0.2).item() == pytest.approx(total / 5, rel=1e-5)


def test_info_nce_of_a_query_equal_to_its_key_and_orthogonal_to_the_queue():
    basis = torch.eye(6)
    query, queue = basis[:2] * 3, basis[2:]  # K = 4 negatives, all orthogonal to the queries
    assert info_nce(query, query, queue, 0.5).item() == pytest.approx(math.log(1 + 4 * math.exp(-2)), rel=1e-6)


# ---------------------------------------------------------------- BYOL / SimSiam

def test_negative_cosine_is_minus_the_cosine_and_sends_no_gradient_to_the_target():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    z = torch.tensor([[5.0, 0.0], [0.0, -1.0], [0.0, 1.0]], requires_grad=True)
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx((-1 + 1 + 0) / 3)
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_byol_regression_loss_is_two_minus_two_cosine_between_zero_and_four():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    byol = 2 + 2 * negative_cosine(p, z)
    direct = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1).mean()
    assert byol.item() == pytest.approx(direct.item(), rel=1e-5)
    assert 2 + 2 * negative_cosine(p, p).item() == pytest.approx(0, abs=1e-6)
    assert 2 + 2 * negative_cosine(p, -p).item() == pytest.approx(4, abs=1e-6)


# ---------------------------------------------------------------- Barlow Twins

def _naive_barlow(z_a, z_b, weight, eps=1e-5):
    n, d = z_a.shape
    norm_a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + eps)
    norm_b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(norm_a[b, i] * norm_b[b, j]) for b in range(n)) / n
            total += (1 - c) ** 2 if i == j else weight * c ** 2
    return total


def test_barlow_twins_matches_the_formula_element_by_element():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * 3 + 1
    assert barlow_twins(z_a, z_b, 0.1).item() == pytest.approx(_naive_barlow(z_a, z_b, 0.1), rel=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_views_and_four_per_dimension_when_anticorrelated():
    # Two centred, orthogonal columns of unit variance: C is the identity (up to the eps of the variance).
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 2 + 5
    assert barlow_twins(z, z).item() < 1e-8
    assert barlow_twins(z, -z).item() == pytest.approx(2 * 4, rel=1e-4)  # C = -I: (1 - (-1))^2 per dimension
    # Redundant dimensions (both columns equal) are charged lambda per off-diagonal pair.
    twin = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert barlow_twins(twin, twin, 0.25).item() == pytest.approx(0.25 * 2, rel=1e-4)


# ---------------------------------------------------------------- losses that gather across ranks

ROWS, DIM, WORLD = 4, 3, 2


def _embeddings():
    g = torch.Generator().manual_seed(5)
    return torch.randn(ROWS * WORLD, DIM, generator=g), torch.randn(ROWS * WORLD, DIM, generator=g) + 0.5


GATHERING_LOSSES = {"barlow_twins": lambda a, b: barlow_twins(a, b, 0.3), "nt_xent": lambda a, b: nt_xent(a, b, 0.5)}


def _gathering_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.engine import dist

    dist.init_from_env("cpu")
    results = {}
    for name, loss_fn in GATHERING_LOSSES.items():
        z_a, z_b = (z[rank * ROWS:(rank + 1) * ROWS].clone().requires_grad_() for z in _embeddings())
        loss = loss_fn(z_a, z_b)
        loss.backward()
        # DDP divides every parameter gradient by the world size; so must this comparison.
        results[name] = {"loss": loss.item(), "grad_a": z_a.grad / world, "grad_b": z_b.grad / world}
    everything = dist.gather_objects(results)
    if rank == 0:
        torch.save(everything, f"{out}/gathering.pt")
    dist.destroy()


@pytest.mark.slow
def test_losses_that_gather_give_two_processes_the_loss_and_gradients_of_one(tmp_path):
    import torch.multiprocessing as mp

    from conftest import free_port

    mp.spawn(_gathering_worker, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = torch.load(tmp_path / "gathering.pt", weights_only=False)
    for name, loss_fn in GATHERING_LOSSES.items():
        z_a, z_b = (z.clone().requires_grad_() for z in _embeddings())
        loss = loss_fn(z_a, z_b)
        loss.backward()
        # The logged loss: averaged over ranks (Barlow Twins: every rank already holds the global one).
        assert sum(r[name]["loss"] for r in ranks) / WORLD == pytest.approx(loss.item(), rel=1e-5), name
        for rank, result in enumerate(ranks):
            rows = slice(rank * ROWS, (rank + 1) * ROWS)
            assert torch.allclose(result[name]["grad_a"], z_a.grad[rows], atol=1e-6), (name, rank)
            assert torch.allclose(result[name]["grad_b"], z_b.grad[rows], atol=1e-6), (name, rank)
    # The per-process statistics a naive loss would use differ: the test can tell them apart.
    local = barlow_twins(*(z[:ROWS] for z in _embeddings()), 0.3).item()
    assert abs(local - barlow_twins(*_embeddings(), 0.3).item()) > 1e-2


# ---------------------------------------------------------------- DINO

def test_dino_loss_with_uniform_teacher_and_student_is_log_k():
    k = 8
    teacher = [torch.zeros(3, k)] * 2
    student = [torch.zeros(3, k)] * 4
    assert dino_loss(student, teacher, torch.zeros(k)).item() == pytest.approx(math.log(k), rel=1e-6)


def test_dino_loss_pairs_every_teacher_global_with_every_other_student_crop():
    g = torch.Generator().manual_seed(4)
    teacher = [torch.randn(2, 5, generator=g) for _ in range(2)]
    student = [torch.randn(2, 5, generator=g) for _ in range(4)]
    center = torch.randn(5, generator=g) * 0.1
    terms = []
    for i in range(2):
        for v in range(4):
            if v == i:
                continue  # a crop is never its own target
            for b in range(2):
                p_t = torch.softmax((teacher[i][b] - center) / 0.04, 0)
                log_p_s = torch.log_softmax(student[v][b] / 0.1, 0)
                terms.append(-(p_t * log_p_s).sum().item() / 2)
    expected = sum(terms) / 6  # 2 x 3 pairs, each the batch mean
    assert dino_loss(student, teacher, center, 0.1, 0.04).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_with_a_uniform_teacher_is_the_students_cross_entropy_to_uniform():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    uniform = [torch.zeros(1, 4)] * 2
    expected = -torch.log_softmax(logits / 0.1, 1).mean().item()
    assert dino_loss([logits, logits], uniform, torch.zeros(4)).item() == pytest.approx(expected, rel=1e-6)
    # A centered teacher: subtracting its own (constant) logits leaves it uniform.
    assert dino_loss([logits, logits], [torch.full((1, 4), 3.0)] * 2, torch.full((4,), 3.0)).item() == \
        pytest.approx(expected, rel=1e-6)
