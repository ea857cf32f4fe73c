"""Bad input to the measures gets an error that says what was expected and what was got."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_repsim import Head, MeasureConfig, RepSimState, compare_representations, compute_measures
from hf_repsim.constructions import perturbation_pair


@pytest.fixture
def pair():
    return perturbation_pair(8, 3, num_contexts=50, scale=0.3, seed=0)


def test_mismatched_numbers_of_contexts(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"same contexts, got 50 and 49 rows"):
        compare_representations(f1, g1, f2[:49], g2)


def test_fewer_contexts_than_m_plus_one(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"at least M \+ 1 = 4 contexts .* got 3"):
        compare_representations(f1[:3], g1, f2[:3], g2)


def test_fewer_labels_than_needed(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"Expected at least 5 labels .* got 4"):
        compare_representations(f1, g1[:4], f2, g2[:4])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(pair, bad):
    f1, g1, f2, g2 = pair
    f2 = f2.copy()
    f2[3, 1] = bad
    with pytest.raises(ValueError, match=r"Expected finite values in f2, got 1 NaN or infinite"):
        compare_representations(f1, g1, f2, g2)


def test_pivot_label_out_of_range(pair):
    with pytest.raises(ValueError, match=r"Expected pivot_label in \[0, 8\), got 8"):
        compare_representations(*pair, pivot_label=8)


def test_input_set_of_the_wrong_size(pair):
    with pytest.raises(ValueError, match=r"Expected input_set to hold 4 distinct context ids"):
        compare_representations(*pair, input_set=[0, 1])


def test_hidden_size_mismatch_between_f_and_g(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"Expected g2 with the hidden size of f2 \(3\)"):
        compare_representations(f1, g1, f2, g2[:, :2])


def test_not_an_array(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(TypeError, match=r"Expected f1 as a numpy array or torch tensor, got list"):
        compare_representations(f1.tolist(), g1, f2, g2)


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"Expected num_samples >= 1, got 0"):
        MeasureConfig(num_samples=0)


def test_different_hidden_sizes_give_distributional_measures_and_no_bound():
    f1, g1, _, _ = perturbation_pair(10, 4, 200, 0.1, seed=0)
    f2, g2, _, _ = perturbation_pair(10, 3, 200, 0.1, seed=1)
    out = compare_representations(f1, g1, f2, g2)
    assert out["kl"] > 0 and 0 <= out["d_svd_f"] <= 1
    assert out["bound"] is None and out["bound_holds"] is None and out["d_rep_sq"] is None
    assert len(out["input_set"]) == 4  # min(M1, M2) + 1


def test_repeated_label_rows_are_excluded_counted_and_keep_the_label_sets_diverse():
    f1, g1, f2, g2 = perturbation_pair(30, 3, num_contexts=300, scale=0.2, seed=0)
    for g in (g1, g2):
        g[[5, 7]] = g[4]  # never-trained rows often share one value
    state = RepSimState([3, 3], 30, reservoir_size=300)
    f1, g1, f2, g2 = (torch.from_numpy(a) for a in (f1, g1, f2, g2))
    state.update([f1, f2], [f1 @ g1.T, f2 @ g2.T])
    out = compute_measures(state, [Head(g1), Head(g2)], config=MeasureConfig(num_samples=20))
    assert {5, 7} <= set(out.details["degenerate_label_ids"]) and 4 not in out.details["degenerate_label_ids"]
    assert out.details["diversity"]["holds"] is True
    assert out.values["d_rep_sq"] is not None and np.isfinite(out.values["d_rep_sq"])


def test_a_single_label_is_refused_with_the_number_needed(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"Expected at least 5 labels .* got 1"):
        compare_representations(f1, g1[:1], f2, g2[:1])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pivot_label": 3.0}, r"pivot_label to be a label id or None \(integers\), got 3.0 of type float"),
        ({"left_out_label": True}, r"left_out_label to be a label id or None \(integers\), got True"),
        ({"input_set": [0.5, 1, 2, 3]}, r"input_set to be a list of context ids \(integers\), got 0.5"),
        ({"seed": None}, r"seed to be an integer \(integers\), got None"),
    ],
)
def test_settings_that_must_be_integers(pair, settings, message):
    with pytest.raises(TypeError, match=message):
        compare_representations(*pair, **settings)


def test_integer_settings_of_numpy_types_are_accepted(pair):
    plain = compare_representations(*pair, pivot_label=2, input_set=[0, 1, 2, 3])
    numpy = compare_representations(*pair, pivot_label=np.int64(2), input_set=np.arange(4))
    assert numpy == plain and type(numpy["pivot_label"]) is int


@pytest.mark.parametrize("which", [0, 1])
def test_a_model_whose_features_do_not_vary(pair, which):
    arrays = list(pair)
    arrays[2 * which] = np.zeros_like(arrays[0]) + [0.1, 0.7, 1 / 3]  # the same f for every context
    model = ("first", "second")[which]
    with pytest.raises(ValueError, match=rf"features f of the {model} model to vary over the contexts"):
        compare_representations(*arrays)


def test_a_model_whose_label_vectors_are_all_the_same(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"label vectors g of the second model to differ between labels"):
        compare_representations(f1, g1, f2, np.zeros_like(g2) + [0.1, 0.7, 1 / 3])


def test_features_whose_second_moments_overflow(pair):
    f1, g1, f2, g2 = pair
    with pytest.raises(ValueError, match=r"second moments fit in float64, got an overflowing covariance"):
        compare_representations(f1 * 1e160, g1 / 1e160, f2, g2)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ma.masked_array(np.ones((50, 3)), mask=False), r"f1 as a plain array, got a numpy masked array"),
        (np.ones((50, 3), dtype=bool), r"f1 with a real \(float or integer\) dtype, got bool"),
        (torch.ones(50, 3, dtype=torch.complex64), r"f1 with a real \(float or integer\) dtype, got torch.complex64"),
    ],
)
def test_arrays_that_are_not_real_numbers(pair, array, message):
    _, g1, f2, g2 = pair
    with pytest.raises(TypeError, match=message):
        compare_representations(array, g1, f2, g2)


def test_any_real_dtype_layout_and_byte_order_is_read_as_float64(pair):
    f1, g1, f2, g2 = pair
    plain = compare_representations(f1, g1, f2, g2)
    reversed_rows = compare_representations(f1[::-1].copy()[::-1], g1, f2, g2)  # a negative-stride view
    big_endian = compare_representations(f1.astype(">f8"), g1, f2, g2)
    long_double = compare_representations(f1.astype(np.longdouble), g1, f2, g2)
    assert reversed_rows == plain and big_endian == plain and long_double == plain
    counts = np.random.default_rng(0).integers(0, 11, size=(50, 3))  # every dtype below holds them
    for dtype in (np.int8, np.uint8, np.int32, np.int64):
        assert compare_representations(counts.astype(dtype), g1, f2, g2) == compare_representations(
            counts.astype(np.float64), g1, f2, g2
        )


def test_rank_deficient_features_warn_that_identifiability_does_not_hold(pair):
    f1, g1, f2, g2 = pair
    f1 = f1.copy()
    f1[:, 2] = 0.0  # one direction of f never used
    with pytest.warns(UserWarning, match=r"diversity condition fails on the input side"):
        out = compare_representations(f1, g1, f2, g2)
    assert out["m_cca_f"] < 0.7  # the dead direction counts as uncorrelated


def test_a_row_repeated_in_one_model_only_counts_in_d_llv_but_stays_out_of_the_label_sets():
    """The base model's never-trained rows, moved apart by a fine-tune: a difference d_LLV must see."""
    f1, g1, f2, g2 = perturbation_pair(30, 3, num_contexts=300, scale=0.2, seed=0)
    g1[[5, 7]] = g1[4]  # repeated in the first model only
    state = RepSimState([3, 3], 30, reservoir_size=300)
    f1, g1, f2, g2 = (torch.from_numpy(a) for a in (f1, g1, f2, g2))
    state.update([f1, f2], [f1 @ g1.T, f2 @ g2.T])
    out = compute_measures(state, [Head(g1), Head(g2)], config=MeasureConfig(num_samples=20))
    assert not {5, 7} & set(out.details["degenerate_label_ids"])
    assert out.details["labels_repeated_in_one_model"] == 2
    assert {5, 7} <= set(out.details["worst_labels"]) | set(out.details["left_out_labels"])  # they differ most
    assert out.details["diversity"]["holds"] is True
