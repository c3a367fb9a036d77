"""The reusable blocks, each alone: EMA teachers, the feature queue, shuffle-BN, the multi-crop
forward, the multi-crop views and the memory bank's own-entry masking.

Every check compares against a value computed by hand or by a naive reference written here.
The two-process checks (gathered enqueue, shuffle-BN) run in one pair of gloo processes
started once for the module: starting the processes costs far more than the checks.
"""
import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import free_port
from selfsup.blocks import (FeatureQueue, MemoryBank, ema_update, forward_by_resolution, frozen_copy,
                            momentum_schedule, shuffled_forward)
from selfsup.losses import nce_loss

# selfsup.views (kornia) is imported inside the multi-crop tests only: the spawned gloo workers
# import this module, and every second of import is paid twice there.


# ----------------------------------------------------------------------------------------------
# EMA teachers
# ----------------------------------------------------------------------------------------------

def _filled_linear(weight: float, bias: float) -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(weight)
        layer.bias.fill_(bias)
    return layer


def test_ema_update_applies_m_teacher_plus_one_minus_m_student_to_every_parameter():
    teacher = nn.Sequential(_filled_linear(1.0, 0.0), _filled_linear(-2.0, 4.0))
    student = nn.Sequential(_filled_linear(3.0, 2.0), _filled_linear(2.0, 0.0))
    ema_update(teacher, student, momentum=0.75)
    # Hand-computed: 0.75 * 1 + 0.25 * 3 = 1.5, 0.75 * 0 + 0.25 * 2 = 0.5, ...
    expected = {"0.weight": 1.5, "0.bias": 0.5, "1.weight": -1.0, "1.bias": 3.0}
    for name, param in teacher.named_parameters():
        assert torch.equal(param, torch.full_like(param, expected[name])), name
    # The student is only read.
    assert torch.equal(student[0].weight, torch.full((2, 2), 3.0))


def test_ema_update_matches_a_naive_reference_on_random_weights():
    torch.manual_seed(1)
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    ema_update(teacher, student, momentum=0.9)
    for name, param in teacher.named_parameters():
        reference = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name].detach()
        assert torch.allclose(param, reference, atol=1e-7), name


def test_frozen_copy_is_equal_gradient_free_and_independent_of_the_student():
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = frozen_copy(student)
    for (name, t), (_, s) in zip(teacher.state_dict().items(), student.state_dict().items()):
        assert torch.equal(t, s), name
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())  # the student is left trainable
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():  # later changes of the student must not reach the copy (no shared storage)
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.add_(1.0)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, snapshot[name]), name


def _teacher_and_trained_student() -> tuple[nn.Module, nn.Module]:
    """A teacher with BatchNorm statistics (0.25, 2.0, 7 batches) set by hand, and a student whose
    statistics come from three train-mode forwards, so every buffer differs between the two."""
    torch.manual_seed(2)
    student = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    teacher = frozen_copy(student)
    for _ in range(3):
        student(torch.randn(8, 3) * 3 + 1)
    norm = teacher[1]
    norm.running_mean.fill_(0.25)
    norm.running_var.fill_(2.0)
    norm.num_batches_tracked.fill_(7)
    assert int(student[1].num_batches_tracked) == 3
    return teacher, student


def test_buffer_policy_copy_takes_the_students_batchnorm_statistics():
    teacher, student = _teacher_and_trained_student()
    ema_update(teacher, student, momentum=0.5, buffers="copy")
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    assert torch.equal(teacher[1].running_var, student[1].running_var)
    assert int(teacher[1].num_batches_tracked) == 3


def test_buffer_policy_average_averages_floating_buffers_and_copies_counters():
    teacher, student = _teacher_and_trained_student()
    ema_update(teacher, student, momentum=0.5, buffers="average")
    assert torch.allclose(teacher[1].running_mean, 0.5 * 0.25 + 0.5 * student[1].running_mean)
    assert torch.allclose(teacher[1].running_var, 0.5 * 2.0 + 0.5 * student[1].running_var)
    # A counter is not averaged (7 and 3 would give 5): it is the student's.
    assert teacher[1].num_batches_tracked.dtype == torch.long
    assert int(teacher[1].num_batches_tracked) == 3


def test_buffer_policy_keep_leaves_teacher_buffers_alone_but_still_moves_parameters():
    teacher, student = _teacher_and_trained_student()
    weight_before = teacher[0].weight.clone()
    ema_update(teacher, student, momentum=0.5, buffers="keep")
    assert torch.equal(teacher[1].running_mean, torch.full((3,), 0.25))
    assert torch.equal(teacher[1].running_var, torch.full((3,), 2.0))
    assert int(teacher[1].num_batches_tracked) == 7
    assert torch.allclose(teacher[0].weight, 0.5 * weight_before + 0.5 * student[0].weight.detach())


def test_ema_update_rejects_a_teacher_parameter_missing_in_the_student():
    teacher = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    student = nn.Sequential(nn.Linear(2, 2))  # no "1.weight"
    with pytest.raises(ValueError, match="1.weight"):
        ema_update(teacher, student, momentum=0.9)


@pytest.mark.parametrize(("progress", "expected"), [
    (0.0, 0.996), (1.0, 1.0), (0.5, 0.998),  # cos(pi/2) = 0: half way between base and final
    (-0.3, 0.996), (1.7, 1.0),               # progress outside [0, 1] is clamped
    (0.25, 1.0 - 0.004 * (math.cos(math.pi / 4) + 1) / 2),
])
def test_momentum_schedule_rises_from_base_to_one_along_a_cosine(progress, expected):
    assert momentum_schedule(progress, 0.996) == pytest.approx(expected, abs=1e-12)


def test_momentum_schedule_honours_a_final_value():
    assert momentum_schedule(0.5, 0.9, final=0.99) == pytest.approx(0.945)
    assert momentum_schedule(1.0, 0.9, final=0.99) == pytest.approx(0.99)


def test_no_gradient_reaches_the_teacher():
    torch.manual_seed(3)
    student = nn.Linear(3, 2)
    teacher = frozen_copy(student)
    with torch.no_grad():
        student.weight.add_(0.5)  # make teacher and student differ
    ema_update(teacher, student, momentum=0.5)
    x = torch.randn(4, 3)
    online, target = student(x), teacher(x)
    loss = ((online - target) ** 2).sum()  # a BYOL-like regression onto the teacher
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not target.requires_grad
    # The student's gradient is that of a loss whose target is a constant: 2 (online - target)^T x.
    expected = 2 * (online - target).detach().T @ x
    assert torch.allclose(student.weight.grad, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# FeatureQueue
# ----------------------------------------------------------------------------------------------

def _rows(*values: float) -> torch.Tensor:
    """Rows (v, -v): distinct, hand-readable keys (the queue stores keys as given)."""
    return torch.tensor([[v, -v] for v in values])


def test_queue_starts_as_seeded_unit_vectors_independent_of_the_global_rng():
    torch.manual_seed(123)
    first = FeatureQueue(16, 8, seed=5)
    torch.manual_seed(456)  # the initial keys come from the queue's own seed, not the global generator
    second = FeatureQueue(16, 8, seed=5)
    assert torch.allclose(first.keys.norm(dim=1), torch.ones(16), atol=1e-6)
    assert torch.equal(first.keys, second.keys)
    assert not torch.allclose(first.keys, FeatureQueue(16, 8, seed=6).keys)
    assert int(first.pointer) == 0 and int(first.filled) == 0
    with pytest.raises(ValueError):
        FeatureQueue(0, 8)


def test_enqueue_writes_at_the_pointer_in_order_and_wraps_around():
    queue = FeatureQueue(5, 2, seed=0)
    initial = queue.keys.clone()
    queue.enqueue(_rows(1, 2, 3))
    assert torch.equal(queue.keys[:3], _rows(1, 2, 3))
    assert torch.equal(queue.keys[3:], initial[3:])  # not yet overwritten
    assert int(queue.pointer) == 3 and int(queue.filled) == 3
    queue.enqueue(_rows(4, 5, 6))
    # 4 and 5 fill slots 3 and 4, 6 wraps to slot 0 over the oldest key (1).
    assert torch.equal(queue.keys, _rows(6, 2, 3, 4, 5))
    assert int(queue.pointer) == 1 and int(queue.filled) == 5


def test_enqueue_of_more_rows_than_the_queue_keeps_the_newest():
    queue = FeatureQueue(4, 2, seed=0)
    queue.enqueue(_rows(1))  # pointer 1
    queue.enqueue(_rows(10, 11, 12, 13, 14, 15))
    # Only 12..15 fit; written from slot 1 on and wrapping: slots 1, 2, 3, 0.
    assert torch.equal(queue.keys, _rows(15, 12, 13, 14))
    assert int(queue.pointer) == 1 and int(queue.filled) == 4
    queue.enqueue(_rows(20))  # the next key replaces the oldest survivor (12)
    assert torch.equal(queue.keys, _rows(15, 20, 13, 14))


def test_queue_state_survives_a_state_dict_round_trip():
    queue = FeatureQueue(5, 2, seed=0)
    queue.enqueue(_rows(1, 2, 3))
    queue.enqueue(_rows(4, 5, 6))
    fresh = FeatureQueue(5, 2, seed=99)
    fresh.load_state_dict(queue.state_dict())
    assert torch.equal(fresh.keys, queue.keys)
    assert int(fresh.pointer) == 1 and int(fresh.filled) == 5
    # ... and it continues where the original is: the next key goes to slot 1.
    fresh.enqueue(_rows(7))
    assert torch.equal(fresh.keys, _rows(6, 7, 3, 4, 5))


def test_enqueued_keys_are_detached_copies():
    queue = FeatureQueue(4, 2, seed=0)
    source = torch.ones(2, 2, requires_grad=True)
    with torch.enable_grad():
        queue.enqueue(source * 3)
    assert not queue.keys.requires_grad and queue.keys.grad_fn is None
    assert torch.equal(queue.keys[:2], torch.full((2, 2), 3.0))
    with torch.no_grad():
        source.mul_(0)  # the queue holds a copy, not a view of the caller's tensor
    assert torch.equal(queue.keys[:2], torch.full((2, 2), 3.0))


# ----------------------------------------------------------------------------------------------
# shuffled_forward and forward_by_resolution, single process
# ----------------------------------------------------------------------------------------------

class Recording(nn.Module):
    """Wraps a function or module and keeps a copy of every input it is called with."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_shuffled_forward_in_one_process_is_a_plain_forward():
    torch.manual_seed(4)
    encoder = Recording(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    images = torch.randn(6, 3)
    rng_before = torch.get_rng_state()
    out = shuffled_forward(encoder, images)
    expected = encoder.inner(images)  # train-mode BN: the same batch, so the same statistics
    assert torch.allclose(out, expected, atol=1e-6)
    assert len(encoder.seen) == 1 and torch.equal(encoder.seen[0], images)  # unshuffled, one call
    assert torch.equal(torch.get_rng_state(), rng_before)  # and no random draw in one process
    assert not out.requires_grad  # key encoders take no gradient


def test_shuffled_forward_within_one_batch_returns_rows_in_their_order():
    torch.manual_seed(4)
    encoder = Recording(nn.Linear(3, 4))
    images = torch.randn(8, 3)
    out = shuffled_forward(encoder, images, within_batch=True)
    assert torch.allclose(out, encoder.inner(images), atol=1e-6)  # a per-sample network: same rows, same order
    assert not torch.equal(encoder.seen[0], images) and torch.equal(encoder.seen[0].sort(0).values,
                                                                   images.sort(0).values)


# ----------------------------------------------------------------------------------------------
# Split BatchNorm (MoCo's one-process shuffle-BN)
# ----------------------------------------------------------------------------------------------

def test_split_batchnorm_normalises_each_interleaved_group_with_its_own_statistics():
    from selfsup.blocks import SplitBatchNorm2d, split_batch_norm

    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2.0)
        plain.bias.uniform_(-1, 1)
    split = split_batch_norm(nn.Sequential(plain), 4)[0]
    assert isinstance(split, SplitBatchNorm2d) and set(split.state_dict()) == set(nn.BatchNorm2d(3).state_dict())
    x = torch.randn(8, 3, 5, 5) * torch.arange(1, 9).view(8, 1, 1, 1)
    out = split(x)
    reference_means = []
    for group in range(4):
        members = x[group::4]  # samples g, g + 4: the group of the reshape
        norm = nn.BatchNorm2d(3)
        norm.load_state_dict(plain.state_dict())
        assert torch.allclose(out[group::4], norm(members), atol=1e-5)
        reference_means.append(norm.running_mean)
    assert torch.allclose(split.running_mean, torch.stack(reference_means).mean(0), atol=1e-6)
    assert int(split.num_batches_tracked) == 1
    split.eval()  # eval mode: a plain BatchNorm on its running statistics
    plain.load_state_dict(split.state_dict())
    plain.eval()
    assert torch.allclose(split(x), plain(x), atol=1e-6)
    split.train()
    assert split.groups_for(6) == 3 and split.groups_for(4) == 2 and split.groups_for(3) == 1  # >= 2 per group
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert split(channels_last).is_contiguous(memory_format=torch.channels_last)


class CountingHead(nn.Module):
    """A small conv network (eval mode: each sample's output depends on that sample only) that
    records every batch it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.clone())
        return self.net(x)


def _crop(batch: int, side: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _eval_head() -> CountingHead:
    torch.manual_seed(5)
    head = CountingHead().eval()
    with torch.no_grad():  # non-trivial statistics, so that BN does something per sample
        head.net[1].running_mean.uniform_(-1, 1)
        head.net[1].running_var.uniform_(0.5, 2)
    return head


@torch.no_grad()
def test_forward_views_normalises_each_view_alone_or_all_together():
    from selfsup.blocks import forward_views

    norm = torch.nn.BatchNorm1d(3)  # in training mode: the statistics of the batch it is given
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(5, 3, generator=generator), torch.randn(4, 3, generator=generator) + 2]
    alone = forward_views(norm, views, one_pass=False)
    together = forward_views(norm, views, one_pass=True)
    for view, out in zip(views, alone):
        assert torch.allclose(out, (view - view.mean(0)) / (view.var(0, unbiased=False) + norm.eps).sqrt(), atol=1e-5)
    both = torch.cat(views)
    expected = (both - both.mean(0)) / (both.var(0, unbiased=False) + norm.eps).sqrt()
    assert [len(out) for out in together] == [5, 4] and torch.allclose(torch.cat(together), expected, atol=1e-5)
    assert not torch.allclose(alone[1], together[1], atol=0.1)


@torch.no_grad()
def test_forward_by_resolution_makes_one_call_per_run_of_equal_sizes_in_input_order():
    head = _eval_head()
    # Two globals of 8 px and three locals of 4 px, with different batch sizes to check the split.
    crops = [_crop(2, 8, 0), _crop(2, 8, 1), _crop(3, 4, 2), _crop(3, 4, 3), _crop(3, 4, 4)]
    outputs = forward_by_resolution(head, crops)
    assert len(head.calls) == 2
    # Each resolution went through as one concatenated batch (BatchNorm sees it as one batch).
    assert torch.equal(head.calls[0], torch.cat(crops[:2]))
    assert torch.equal(head.calls[1], torch.cat(crops[2:]))
    # Output i is the network's output on crop i alone.
    head.calls.clear()
    assert len(outputs) == len(crops)
    for crop, output in zip(crops, outputs):
        assert torch.allclose(output, head(crop), atol=1e-5)


@torch.no_grad()
def test_forward_by_resolution_does_not_merge_non_consecutive_equal_sizes():
    head = _eval_head()
    crops = [_crop(2, 8, 0), _crop(2, 4, 1), _crop(2, 8, 2)]  # global, local, global
    outputs = forward_by_resolution(head, crops)
    assert [tuple(c.shape) for c in head.calls] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 8, 8)]
    head.calls.clear()
    references = [head(c) for c in crops]
    for output, reference in zip(outputs, references):
        assert torch.allclose(output, reference, atol=1e-5)
    # The two globals give different outputs, so a swapped order would be caught above.
    assert not torch.allclose(references[0], references[2])
    assert forward_by_resolution(head, []) == []


# ----------------------------------------------------------------------------------------------
# MultiCropViews
# ----------------------------------------------------------------------------------------------

def _rgb_info(size: int):  # noqa: ANN202
    from selfsup.views import ImageInfo

    return ImageInfo(size, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _uint8_images(batch: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def test_multicrop_views_return_two_globals_then_the_locals_at_their_sizes():
    from selfsup.views import MultiCropViews

    views = MultiCropViews(_rgb_info(16), num_local=3)
    assert views.num_outputs == 5
    out = views(_uint8_images())
    assert len(out) == views.num_outputs
    # Globals at the dataset's side; locals at round(16 * 3 / 7) = round(6.86) = 7 by default.
    assert [tuple(v.shape) for v in out] == [(4, 3, 16, 16)] * 2 + [(4, 3, 7, 7)] * 3
    assert all(v.dtype == torch.float32 for v in out)


def test_multicrop_views_honour_explicit_sizes_and_a_smallest_local_side():
    from selfsup.views import MultiCropViews

    out = MultiCropViews(_rgb_info(16), num_local=2, global_size=12, local_size=5)(_uint8_images())
    assert [v.shape[-1] for v in out] == [12, 12, 5, 5]
    # round(14 * 3 / 7) = 6; for 7 px images round(3) = 3 is raised to the 4 px floor.
    assert MultiCropViews(_rgb_info(14), num_local=1)(_uint8_images(size=14))[2].shape[-1] == 6
    assert MultiCropViews(_rgb_info(7), num_local=1)(_uint8_images(size=7))[2].shape[-1] == 4


def test_multicrop_global_and_local_crops_are_independent_draws():
    from selfsup.views import MultiCropViews

    out = MultiCropViews(_rgb_info(16), num_local=2)(_uint8_images())
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[2], out[3])


def test_multicrop_crops_come_from_their_own_image():
    from selfsup.views import AugmentSpec, MultiCropViews

    # Images of one flat grey level each, and no colour change: every crop of image b, at any
    # position, scale or flip, is flat at (level_b / 255 - 0.5) / 0.25.
    levels = torch.tensor([0, 51, 153, 255])
    images = levels.view(4, 1, 1, 1).expand(4, 3, 16, 16).to(torch.uint8).contiguous()
    plain = AugmentSpec(jitter_p=0.0, grayscale_p=0.0)
    out = MultiCropViews(_rgb_info(16), num_local=2, global_augment=plain, local_augment=plain)(images)
    expected = (levels.float() / 255 - 0.5) / 0.25
    for view in out:
        assert torch.allclose(view, expected.view(4, 1, 1, 1).expand_as(view), atol=1e-5)


def test_multicrop_views_without_locals_and_with_a_negative_count():
    from selfsup.views import MultiCropViews

    views = MultiCropViews(_rgb_info(16), num_local=0)
    out = views(_uint8_images())
    assert views.num_outputs == 2 and len(out) == 2 and out[0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="num_local"):
        MultiCropViews(_rgb_info(16), num_local=-1)


# ----------------------------------------------------------------------------------------------
# MemoryBank: a sample's own entry is never noise
# ----------------------------------------------------------------------------------------------

def test_memory_bank_nce_drops_the_samples_own_entry_from_the_noise_terms():
    size, num_negatives, log_z = 10, 6, math.log(25.0)
    bank = MemoryBank(size, 4, num_negatives=num_negatives, temperature=0.5, normalizer="fixed", seed=0)
    bank.log_z.fill_(log_z)  # a known Z: "fixed" re-estimates only while log_z is NaN
    features = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(6)), dim=1)
    index = torch.tensor([3, 7])
    # Sample 3 is drawn twice as its own noise, sample 7 once.
    negatives = torch.tensor([3, 1, 7, 3, 5, 9])
    loss = bank.nce(features, index, negatives)
    assert bank.log_z.item() == pytest.approx(log_z)  # Z was not re-estimated

    # Naive reference, sample by sample: NCE with only the other entries drawn as noise (a row that
    # drew itself twice has K - 2 noise samples, and its noise prior K * P_n is that of K - 2).
    per_sample = []
    for b in range(2):
        keep = negatives != index[b]
        positive = (features[b] @ bank.bank[index[b]]) / bank.temperature
        negative = features[b] @ bank.bank[negatives[keep]].T / bank.temperature
        per_sample.append(nce_loss(positive.view(1), negative.view(1, -1), size, log_z))
    reference = torch.stack(per_sample).mean()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)

    # The own-entry terms matter: counted as noise they would change the loss (what the mask prevents).
    unmasked = nce_loss((features * bank.bank[index]).sum(1) / bank.temperature,
                        features @ bank.bank[negatives].T / bank.temperature, size, log_z)
    assert abs(unmasked.item() - reference.item()) > 1e-2


# ----------------------------------------------------------------------------------------------
# Two gloo processes: gathered enqueue and shuffle-BN
# ----------------------------------------------------------------------------------------------

QUEUE_SIZE, SHUFFLE_BATCH, SHUFFLE_CALLS = 8, 4, 5



def _queue_rows(rank: int, call: int) -> torch.Tensor:
    """Three keys per rank and call, named by their values: 100 * rank + 10 * call + i."""
    return _rows(*(100.0 * rank + 10 * call + i for i in range(3)))


def _shuffle_inputs(rank: int, call: int) -> torch.Tensor:
    """(4, 3) rows unique over ranks and calls; the rank a row came from is (row[0] % 1000) // 100."""
    return torch.arange(SHUFFLE_BATCH * 3, dtype=torch.float32).view(SHUFFLE_BATCH, 3) + 100 * rank + 1000 * call


def _two_rank_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.engine import dist

    dist.init_from_env("cpu")
    # A different global seed per rank: if the permutation were not broadcast from rank 0, the
    # ranks would shuffle differently and rows would be lost or duplicated.
    torch.manual_seed(rank)
    results: dict = {}

    queue = FeatureQueue(QUEUE_SIZE, 2, seed=0)
    queue.enqueue(_queue_rows(rank, 0))
    queue.enqueue(_queue_rows(rank, 1))
    results["queue"] = {"keys": queue.keys.clone(), "pointer": int(queue.pointer), "filled": int(queue.filled)}

    # A per-sample encoder: f(x) = 2x + 1; the outputs tell whether unshuffling is exact.
    encoder = Recording(lambda x: x * 2 + 1)
    inputs = [_shuffle_inputs(rank, call) for call in range(SHUFFLE_CALLS)]
    results["affine"] = {"inputs": inputs, "outputs": [shuffled_forward(encoder, x) for x in inputs],
                         "seen": encoder.seen}

    # Train-mode BatchNorm: the ranks' inputs lie far apart, so own-batch statistics and
    # mixed statistics give clearly different outputs.
    norm = Recording(nn.BatchNorm1d(3, affine=False))
    x = torch.randn(SHUFFLE_BATCH, 3, generator=torch.Generator().manual_seed(10 + rank)) + 5.0 * rank
    results["batchnorm"] = {"input": x, "output": shuffled_forward(norm, x), "seen": norm.seen[0],
                            "plain": nn.BatchNorm1d(3, affine=False)(x).detach()}

    everything = dist.gather_objects(results)
    if rank == 0:
        torch.save(everything, Path(out) / "two_ranks.pt")
    dist.destroy()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:  # noqa: ANN001
    """Per rank, what the blocks did in two gloo processes (run once for the module)."""
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_two_rank_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out / "two_ranks.pt", weights_only=False)


@pytest.mark.slow
def test_gathered_enqueue_gives_every_rank_the_same_queue_in_rank_order(two_ranks):
    zero, one = (r["queue"] for r in two_ranks)
    assert torch.equal(zero["keys"], one["keys"])
    # 8 slots; call 0 writes rank 0's 3 keys then rank 1's 3 (slots 0..5), call 1 writes 6 more
    # from slot 6, wrapping: rank 0's to slots 6, 7, 0 and rank 1's to slots 1, 2, 3.
    expected = torch.empty(QUEUE_SIZE, 2)
    expected[[6, 7, 0]] = _queue_rows(0, 1)
    expected[[1, 2, 3]] = _queue_rows(1, 1)
    expected[[4, 5]] = _queue_rows(1, 0)[1:]
    assert torch.equal(zero["keys"], expected)
    assert zero["pointer"] == one["pointer"] == 4 and zero["filled"] == one["filled"] == 8


@pytest.mark.slow
def test_shuffled_forward_returns_each_rank_its_own_rows_in_order(two_ranks):
    for r in two_ranks:
        for x, y in zip(r["affine"]["inputs"], r["affine"]["outputs"]):
            assert torch.equal(y, x * 2 + 1)


@pytest.mark.slow
def test_shuffled_forward_encodes_a_permutation_mixing_both_ranks(two_ranks):
    def key(row: torch.Tensor) -> tuple:
        return tuple(row.tolist())

    mixed = {0: False, 1: False}
    for call in range(SHUFFLE_CALLS):
        given = sorted(key(row) for r in two_ranks for row in r["affine"]["inputs"][call])
        seen = sorted(key(row) for r in two_ranks for row in r["affine"]["seen"][call])
        assert seen == given  # every row of the global batch encoded exactly once
        for rank, r in enumerate(two_ranks):
            assert len(r["affine"]["seen"][call]) == SHUFFLE_BATCH
            origins = {int(row[0]) % 1000 // 100 for row in r["affine"]["seen"][call]}
            mixed[rank] |= (1 - rank) in origins
    assert mixed == {0: True, 1: True}


@pytest.mark.slow
def test_shuffle_bn_normalises_with_the_shuffled_slice_and_unshuffles_exactly(two_ranks):
    slices = [r["batchnorm"]["seen"] for r in two_ranks]
    for r in two_ranks:
        x, y = r["batchnorm"]["input"], r["batchnorm"]["output"]
        # Naive reference: find each input row in the slice a rank encoded, and normalise it
        # with that slice's batch statistics (biased variance, eps 1e-5).
        expected = torch.empty_like(x)
        for i, row in enumerate(x):
            where = [s for s in slices if (s == row).all(dim=1).any()]
            assert len(where) == 1
            s = where[0]
            expected[i] = (row - s.mean(0)) / torch.sqrt(s.var(0, unbiased=False) + 1e-5)
        assert torch.allclose(y, expected, atol=1e-5)
        # Statistics of the own batch alone would give something else.
        assert not torch.allclose(y, r["batchnorm"]["plain"], atol=1e-2)


# ----------------------------------------------------------------------------------------------
# HOG (MaskFeat's targets) against scikit-image
# ----------------------------------------------------------------------------------------------

def test_hog_equals_scikit_image_on_random_and_structured_images():
    skimage_feature = pytest.importorskip("skimage.feature")
    import numpy as np

    from selfsup.blocks import hog

    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 24, dtype=torch.float64)
    images = [torch.rand(24, 32, generator=g, dtype=torch.float64),       # noise: every bin
              ramp.view(24, 1) * ramp.view(1, 24).repeat(1, 2)[:, :32],    # smooth gradients
              (torch.rand(24, 32, generator=g, dtype=torch.float64) > 0.5).double()]  # edges
    for cell, bins in ((8, 9), (4, 6)):
        ours = hog(torch.stack(images).unsqueeze(1), cell=cell, bins=bins)  # (3, 1, h, w, bins)
        for i, image in enumerate(images):
            reference = skimage_feature.hog(image.numpy(), orientations=bins, pixels_per_cell=(cell, cell),
                                            cells_per_block=(1, 1), block_norm="L2", feature_vector=False)
            assert np.allclose(ours[i, 0].numpy(), reference[:, :, 0, 0, :], atol=1e-10), (i, cell, bins)


def test_hog_keeps_channels_apart_and_patch_targets_follow_the_token_order():
    from selfsup.blocks import hog, patch_targets

    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 16, 16, generator=g)
    cells = hog(images, cell=4)
    assert cells.shape == (2, 3, 4, 4, 9)
    assert torch.allclose(cells[:, 1], hog(images[:, 1:2], cell=4)[:, 0])
    assert torch.allclose(cells.pow(2).sum(-1), torch.ones(2, 3, 4, 4), atol=1e-4)  # unit length (non-flat cells)
    targets = patch_targets(images, patch=8, cell=4)
    assert targets.shape == (2, 4, 3 * 4 * 9)  # 2 x 2 patches; 3 channels x 2 x 2 cells x 9 bins
    # Patch 1 (row 0, column 1) of image 0 holds cells (0..1, 2..3) of every channel.
    expected = cells[0, :, 0:2, 2:4].reshape(-1)
    assert torch.allclose(targets[0, 1], expected)
    with pytest.raises(ValueError, match="must divide the patch"):
        patch_targets(images, patch=8, cell=3)
