"""The statistics do not depend on how the contexts are batched, split over states and merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_repsim import Head, MeasureConfig, RepSimState, compute_measures
from hf_repsim.constructions import perturbation_pair

#: Batching changes only the order of float64 additions.
STREAMING_RTOL = 1e-10


def make_models(seed: int):
    f1, g1, f2, g2 = (torch.from_numpy(a) for a in perturbation_pair(40, 4, 1000, scale=0.4, seed=seed))
    bias = torch.from_numpy(np.random.default_rng(seed).normal(size=40))
    return (f1, f2), (Head(g1, bias), Head(g2))


def fed(features, heads, batch: int, reservoir: int, ranges=None) -> RepSimState:
    """A state fed the given context ranges (default: all) in batches of ``batch``."""
    state = RepSimState([4, 4], num_labels=40, reservoir_size=reservoir, seed=3)
    for start, stop in ranges or [(0, features[0].shape[0])]:
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            state.update(
                [f[lo:hi] for f in features],
                [h.logits(f[lo:hi]) for f, h in zip(features, heads)],
                context_ids=torch.arange(lo, hi),
            )
    return state


def assert_equal_measures(a, b) -> None:
    for key, value in a.values.items():
        if isinstance(value, float):
            assert b.values[key] == pytest.approx(value, rel=STREAMING_RTOL, abs=1e-15), key
        else:
            assert b.values[key] == value, key


@pytest.mark.parametrize("reservoir", [1000, 300])  # every context kept, or a sample of 300
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batches_and_merges_give_the_one_batch_result(seed, reservoir):
    features, heads = make_models(seed)
    config = MeasureConfig(num_samples=50)
    whole = fed(features, heads, batch=1000, reservoir=reservoir)
    expected = compute_measures(whole, heads, config=config)
    for batch in (1, 7, 500):
        assert_equal_measures(expected, compute_measures(fed(features, heads, batch, reservoir), heads, config=config))
    first = fed(features, heads, 7, reservoir, ranges=[(0, 313), (800, 1000)])
    second = fed(features, heads, 500, reservoir, ranges=[(313, 800)])
    merged = first.merge(second)
    assert merged.count == 1000
    assert torch.equal(merged.reservoir_ids, whole.reservoir_ids)
    assert_equal_measures(expected, compute_measures(merged, heads, config=config))


def test_state_round_trips_through_its_state_dict():
    features, heads = make_models(0)
    state = fed(features, heads, 100, 200)
    tensors, meta = state.state_dict()
    again = RepSimState.from_state_dict(tensors, meta)
    assert again.count == state.count and torch.equal(again.comoment, state.comoment)
    assert compute_measures(again, heads).values == compute_measures(state, heads).values


def test_merge_refuses_a_state_of_other_models():
    with pytest.raises(ValueError, match="same configuration"):
        RepSimState([4, 4], 40).merge(RepSimState([4, 5], 40))


def snapshot(state: RepSimState) -> tuple:
    tensors, meta = state.state_dict()
    return meta, {name: t.clone() for name, t in tensors.items()}


def assert_unchanged(state: RepSimState, before: tuple) -> None:
    meta, tensors = snapshot(state)
    assert meta == before[0]
    assert all(torch.equal(tensors[name], before[1][name]) for name in tensors)


def test_merge_refuses_repeated_context_ids_and_leaves_the_state_unchanged():
    features, heads = make_models(0)
    state = fed(features, heads, 100, 200)
    before = snapshot(state)
    with pytest.raises(ValueError, match="unique context ids .*this state is unchanged"):
        state.merge(fed(features, heads, 100, 200))
    assert_unchanged(state, before)
    with pytest.raises(ValueError, match="this state itself"):
        state.merge(state)
    assert_unchanged(state, before)


def test_update_refuses_repeated_context_ids_and_leaves_the_state_unchanged():
    features, heads = make_models(0)
    state = fed(features, heads, 100, 200, ranges=[(0, 100)])
    before = snapshot(state)
    batch = [f[100:110] for f in features]
    for ids in (torch.arange(95, 105), torch.tensor([100, 101, 102, 103, 104, 105, 106, 107, 108, 100])):
        with pytest.raises(ValueError, match="unique context ids"):
            state.update(batch, [h.logits(f) for f, h in zip(batch, heads)], context_ids=ids)
        assert_unchanged(state, before)


def test_memory_does_not_grow_with_the_number_of_contexts():
    features, heads = make_models(0)
    small, large = fed(features, heads, 100, 64, ranges=[(0, 100)]), fed(features, heads, 100, 64)
    size = lambda s: sum(t.numel() for t in s.state_dict()[0].values())  # noqa: E731
    assert size(small) == size(large)
