"""Every measure from the streaming statistics equals the same measure computed from the full matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_repsim import RepSimState, compare_representations, measures
from hf_repsim.constructions import perturbation_pair
from tests.conftest import EXACT_RTOL
from tests.direct import all_label_sets, direct_measures, direct_representation_measures, log_probs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_bias", [False, True])
def test_statistics_route_equals_the_log_probability_matrix(seed, with_bias):
    num_labels, hidden = 8, 3
    f1, g1, f2, g2 = perturbation_pair(num_labels, hidden, num_contexts=300, scale=0.3, seed=seed)
    rng = np.random.default_rng(seed + 100)
    b1, b2 = (rng.normal(size=num_labels), rng.normal(size=num_labels)) if with_bias else (None, None)

    out = compare_representations(f1, g1, f2, g2, bias1=b1, bias2=b2, seed=seed)
    pivot, left_out, input_set = out["pivot_label"], out["left_out_label"], out["input_set"]
    # C(6, 3) = 20 label sets <= 32: the library enumerates all of them, as the direct helper does.
    sets = all_label_sets(num_labels, hidden, exclude=(pivot, left_out))
    expected = direct_measures(
        log_probs(f1, g1, b1), log_probs(f2, g2, b2), pivot, left_out, input_set, sets
    )
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=EXACT_RTOL, abs=1e-14), key
    assert out["d_llv"] == pytest.approx(max(out["t1"], out["t2"], 1e-5 * out["t3"], 1e-5 * out["t4"]), rel=1e-15)
    assert out["d_fg"] == max(out["d_svd_f"], out["d_svd_g"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_representation_measures_equal_the_full_matrices(seed):
    num_labels, hidden = 5, 3
    f1, g1, f2, g2 = perturbation_pair(num_labels, hidden, num_contexts=300, scale=0.3, seed=seed)
    out = compare_representations(f1, g1, f2, g2, seed=seed)
    # 5 labels, M = 3: the library averages d_rep over all 5 * C(4, 3) = 20 (pivot, label set) pairs.
    pivot_sets = [(y0, list(s)) for y0 in range(num_labels) for s in all_label_sets(num_labels, hidden, (y0,))]
    expected = direct_representation_measures(f1, g1, f2, g2, pivot_sets)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=EXACT_RTOL), key
    assert out["bound"] == pytest.approx(2 * hidden * out["d_llv"], rel=1e-15)
    assert out["bound_holds"] == (out["d_fg"] <= out["bound"])


def test_work_split_into_small_batches_gives_the_same_measures(monkeypatch):
    """Pivots, input tuples and label sets are processed in memory-bounded batches; the split changes nothing."""
    f1, g1, f2, g2 = perturbation_pair(60, 4, num_contexts=400, scale=0.3, seed=5)
    whole = compare_representations(f1, g1, f2, g2, num_samples=50)
    monkeypatch.setattr(measures, "_BATCH_ELEMENTS", 100)  # a few pivots, tuples or label sets per batch
    assert len(measures._batches(60, 60)) == 60 and len(measures._batches(32, 16)) == 6
    split = compare_representations(f1, g1, f2, g2, num_samples=50)
    for key, value in whole.items():
        if isinstance(value, float):
            assert split[key] == pytest.approx(value, rel=1e-13, abs=1e-15), key
        else:
            assert split[key] == value, key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_label_neither_model_can_predict_adds_nothing_to_js(dtype):
    """p = 0 in both models (a masked token, its probability exp(-1e4) underflows): 0 log 0 = 0, not NaN."""
    f1, g1, f2, g2 = perturbation_pair(8, 3, num_contexts=300, scale=0.3, seed=0)
    z1, z2 = torch.from_numpy(f1 @ g1.T), torch.from_numpy(f2 @ g2.T)
    z1[:, 5] = z2[:, 5] = -1e4
    state = RepSimState([3, 3], num_labels=8)
    state.update([torch.from_numpy(f1), torch.from_numpy(f2)], [z1.to(dtype), z2.to(dtype)])
    keep = [y for y in range(8) if y != 5]
    expected = direct_measures(log_probs(f1, g1[keep], None), log_probs(f2, g2[keep], None), 0, 1, [0, 1, 2, 3],
                               [[2, 3, 4]])
    got = state.pair_means(0, 1)
    for key in ("js", "kl", "kl_reverse"):
        assert getattr(got, key) == pytest.approx(expected[key], rel=1e-9 if dtype == torch.float64 else 1e-4), key


def test_centred_logit_distance_keeps_its_digits_when_one_model_is_much_more_peaked():
    """d = log p_1 - log p_2 then has a mean far above its spread: sum d^2 - (sum d)^2 / V would cancel."""
    rng = np.random.default_rng(0)
    num_labels = 20_000
    logits = torch.from_numpy(rng.normal(size=(200, num_labels)))
    peaked = logits.clone()
    peaked[:, 0] += 40.0  # model 2 puts almost all its mass on label 0
    features = torch.from_numpy(rng.normal(size=(200, 4)))
    results = {}
    for dtype in (torch.float32, torch.float64):
        state = RepSimState([4, 4], num_labels=num_labels)
        state.update([features, features], [logits.to(dtype), peaked.to(dtype)])
        results[dtype] = state.pair_means(0, 1).d_logit_sq
    # The centred logit difference is -40 (1 - 1/V) at label 0 and 40 / V elsewhere.
    assert results[torch.float64] == pytest.approx(1600.0 * (1 - 1 / num_labels), rel=1e-12)
    assert results[torch.float32] == pytest.approx(results[torch.float64], rel=1e-6)
