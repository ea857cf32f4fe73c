"""The KL counterexample: KL goes to zero while the representations stay unrelated."""

from __future__ import annotations

import pytest

from hf_repsim import compare_representations
from hf_repsim.constructions import kl_counterexample

#: DESIGN.md section 4, with lambda = 1e-5 and 100 input sets.
EXPECTED_KL = {1: 0.788, 2: 1.057, 5: 0.382, 10: 0.0197, 15: 7.7e-4, 20: 2.7e-5}


@pytest.mark.parametrize("rho", sorted(EXPECTED_KL))
def test_kl_vanishes_while_representations_stay_dissimilar(rho):
    out = compare_representations(*kl_counterexample(rho), num_samples=100)
    assert out["kl"] == pytest.approx(EXPECTED_KL[rho], rel=0.15)
    assert out["d_llv"] == pytest.approx(1.317, abs=0.003)
    assert out["m_cca_f"] < 0.01
    assert out["d_svd_f"] > 0.99


def test_counterexample_is_seeded():
    first, again = kl_counterexample(5.0, seed=3), kl_counterexample(5.0, seed=3)
    assert all((a == b).all() for a, b in zip(first, again))
    assert not (kl_counterexample(5.0, seed=4)[0] == first[0]).all()
