"""d_LLV bounds representational dissimilarity: d_SVD_f <= 2 t1^2, d_SVD_g <= 2 t2^2, d_fg <= 2 M d_LLV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_repsim import compare_representations
from hf_repsim.constructions import perturbation_pair
from tests.conftest import REFERENCE

#: Room for rounding in a bound that can be tight.
SLACK = 1e-12


def assert_bounds(out: dict, hidden: int) -> None:
    assert out["d_svd_f"] <= 2 * out["t1"] ** 2 + SLACK
    assert out["d_svd_g"] <= 2 * out["t2"] ** 2 + SLACK
    if out["d_llv"] < 1 / (2 * hidden):
        assert out["d_fg"] <= 2 * hidden * out["d_llv"] + SLACK
        assert out["bound_holds"] is True and out["bound"] == pytest.approx(2 * hidden * out["d_llv"])


def test_bound_on_every_reference_pair():
    rows = json.loads((REFERENCE / "reference_K4.json").read_text())["pairs"]
    for row in rows:
        a = np.load(REFERENCE / f"reps_K4_w{row['width']}_seed{row['seed_a']}.npz")
        b = np.load(REFERENCE / f"reps_K4_w{row['width']}_seed{row['seed_b']}.npz")
        out = compare_representations(
            a["f"], a["g"], b["f"], b["g"], pivot_label=row["pivot_label"], left_out_label=row["left_out_label"],
            input_set=row["input_set"],
        )
        assert_bounds(out, hidden=2)


def test_bound_on_200_random_perturbation_pairs():
    rng = np.random.default_rng(0)
    within = 0
    for seed in range(200):
        hidden = int(rng.integers(2, 5))
        num_labels = int(rng.integers(hidden + 3, 12))
        scale = 10 ** rng.uniform(-4, -0.5)
        pair = perturbation_pair(num_labels, hidden, num_contexts=150, scale=scale, seed=seed)
        out = compare_representations(*pair, num_samples=20, seed=seed)
        assert_bounds(out, hidden)
        within += out["d_llv"] < 1 / (2 * hidden)
    assert within >= 50, "too few pairs inside the regime where the bound says something"
