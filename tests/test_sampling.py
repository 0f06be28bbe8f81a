"""Batching of in-memory splits: epoch length and per-task batch sizes under each policy."""

import math

import pytest
import torch

from mtl_bench.errors import UserError
from mtl_bench.task import (
    Split,
    epoch_quotas,
    iterate_batches,
    spread,
    steps_per_epoch,
    task_batch_sizes,
)


def _separate(*sizes):
    """Per-task split whose targets are the row indices, so batches show what was drawn."""
    return Split(tuple(torch.randn(n, 3) for n in sizes),
                 tuple(torch.arange(n) for n in sizes))


def _epoch(split, batch_size, policy, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return list(iterate_batches(split, batch_size, gen, policy))


def test_quotas_by_policy():
    # sizes 1000 and 100, b = 100: S = 10 steps.
    # proportional: each set once; equal: the small one 10 times; temperature t=2:
    # 1000 * (100/1000)^(1/2) = 316.2 -> 316
    assert epoch_quotas([1000, 100], 100, "proportional") == [1000, 100]
    assert epoch_quotas([1000, 100], 100, "equal") == [1000, 1000]
    assert epoch_quotas([1000, 100], 100, "temperature") == [1000, 316]
    assert epoch_quotas([1000, 100], 100, "temperature", temperature=1.0) == [1000, 100]
    assert task_batch_sizes([1000, 100], 100, "proportional") == [100, 10]
    assert task_batch_sizes([1000, 100], 100, "equal") == [100, 100]
    assert task_batch_sizes([1000, 100], 100, "temperature") == [100, 32]  # ceil(316 / 10)


def test_quotas_are_clipped_to_one_sample_per_step_and_the_set_size_per_step():
    # 5 rows, 10 steps: proportional would give 5 samples, i.e. empty batches -> 10 (one per
    # step); equal would give 100 per step from a set of 5 -> 5 per step, 50 per epoch
    assert epoch_quotas([1000, 5], 100, "proportional") == [1000, 10]
    assert epoch_quotas([1000, 5], 100, "equal") == [1000, 50]


def test_spread_is_even():
    assert spread(10, 4) == [3, 3, 2, 2]
    assert sum(spread(316, 10)) == 316 and max(spread(316, 10)) - min(spread(316, 10)) == 1


@pytest.mark.parametrize("policy", ["proportional", "equal", "temperature"])
def test_separate_epoch_length_and_batch_sizes(policy):
    split = _separate(1000, 100)
    batches = _epoch(split, 100, policy)
    assert len(batches) == steps_per_epoch(split, 100) == 10
    quotas = epoch_quotas([1000, 100], 100, policy)
    for task in range(2):
        sizes = [len(ys[task]) for _, ys in batches]
        assert sum(sizes) == quotas[task]
        assert max(sizes) - min(sizes) <= 1
        assert all(len(xs[task]) == len(ys[task]) for xs, ys in batches)
    # the largest set is passed exactly once per epoch under every policy
    seen = torch.cat([ys[0] for _, ys in batches])
    assert sorted(seen.tolist()) == list(range(1000))


def test_proportional_passes_each_set_once_and_equal_recycles_the_small_one():
    split = _separate(1000, 100)
    small = torch.cat([ys[1] for _, ys in _epoch(split, 100, "proportional")])
    assert sorted(small.tolist()) == list(range(100))
    small = torch.cat([ys[1] for _, ys in _epoch(split, 100, "equal")])
    assert torch.bincount(small, minlength=100).tolist() == [10] * 100


def test_wrap_around_skips_no_sample():
    # 30 rows drawn 100 times in one epoch: 3 full passes + 10 rows of a fourth; a pass that
    # runs out mid-batch continues into a fresh permutation, so counts are 3 or 4, never 2
    split = _separate(100, 30)
    small = torch.cat([ys[1] for _, ys in _epoch(split, 10, "equal")])
    counts = torch.bincount(small, minlength=30)
    assert counts.sum() == 100 and counts.min() >= 3 and counts.max() <= 4


def test_shared_inputs_one_pass_with_a_short_last_batch():
    split = Split((torch.randn(105, 3),), (torch.arange(105), torch.arange(105) * 2))
    batches = _epoch(split, 50, "equal")  # the policy does not apply to shared inputs
    assert [len(xs[0]) for xs, _ in batches] == [50, 50, 5]
    assert steps_per_epoch(split, 50) == math.ceil(105 / 50)
    seen = torch.cat([ys[0] for _, ys in batches])
    assert sorted(seen.tolist()) == list(range(105))
    assert all(torch.equal(ys[1], ys[0] * 2) for _, ys in batches)  # targets stay aligned


def test_batches_are_deterministic_given_the_generator():
    split = _separate(200, 20)
    a = [ys for _, ys in _epoch(split, 32, "temperature", seed=3)]
    b = [ys for _, ys in _epoch(split, 32, "temperature", seed=3)]
    c = [ys for _, ys in _epoch(split, 32, "temperature", seed=4)]
    assert all(torch.equal(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    assert not all(torch.equal(x, y) for ra, rc in zip(a, c) for x, y in zip(ra, rc))


def test_bad_policy_and_temperature_are_user_errors():
    with pytest.raises(UserError, match="unknown sampling policy 'uniform'; choose from"):
        epoch_quotas([10, 5], 4, "uniform")
    with pytest.raises(UserError, match="temperature must be positive"):
        epoch_quotas([10, 5], 4, "temperature", temperature=0)


@pytest.mark.parametrize("shared", [True, False])
def test_indices_reach_the_device_once_per_epoch_not_once_per_step(monkeypatch, shared):
    # a host-to-device copy of the indices at every step would make the host wait for the
    # device at every step; count the copies the batching makes in one epoch
    split = (Split((torch.randn(300, 3),), (torch.arange(300), torch.arange(300))) if shared
             else _separate(1000, 100))
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.append(self.shape)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    batches = _epoch(split, 32, "proportional")
    assert len(batches) > 3
    assert len(copies) == (1 if shared else 2)  # one per epoch (per task with separate sets)
