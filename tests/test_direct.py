"""Every measure from the streaming statistics equals the same measure computed from the full matrices."""

from __future__ import annotations

import numpy as np
import pytest

from hf_repsim import compare_representations
from hf_repsim.constructions import perturbation_pair
from tests.conftest import EXACT_RTOL
from tests.direct import all_label_sets, direct_measures, log_probs


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
