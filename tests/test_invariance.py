"""Each invariance the measures claim, and the non-invariances that make the baselines a contrast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_repsim import compare_representations
from hf_repsim.constructions import perturbation_pair
from hf_repsim.measures import m_svd

#: float64, with transforms of condition number up to 1e3: rounding is amplified by at most ~cond^2.
INVARIANCE_RTOL = 1e-8
INVARIANT = ("kl", "kl_reverse", "js", "d_llv", "t1", "t2", "t3", "t4", "d_logit_sq", "d_svd_f", "d_svd_g",
             "m_cca_f", "m_cca_g")
SHAPES = [(4, 2), (50, 2), (50, 16), (1000, 2), (1000, 16), (1000, 64)]  # (K, M) with K >= M + 2


def random_transform(hidden: int, cond: float, rng: np.random.Generator) -> np.ndarray:
    """A random invertible (hidden, hidden) matrix with the given condition number."""
    q1, _ = np.linalg.qr(rng.normal(size=(hidden, hidden)))
    q2, _ = np.linalg.qr(rng.normal(size=(hidden, hidden)))
    return q1 @ np.diag(np.geomspace(1, cond, hidden)) @ q2 * rng.uniform(0.5, 2)


def paired(f, g, a, shift):
    """f -> A f, g -> A^{-T} g + c: the same distributions in other coordinates."""
    return f @ a.T, g @ np.linalg.inv(a) + shift


def model_pair(num_labels, hidden, seed):
    # A perturbation large enough that every measure is far from its identity value.
    return perturbation_pair(num_labels, hidden, num_contexts=max(400, 4 * hidden), scale=0.5, seed=seed)


def assert_same(a: dict, b: dict, keys) -> None:
    for key in keys:
        assert b[key] == pytest.approx(a[key], rel=INVARIANCE_RTOL, abs=1e-13), key


@pytest.mark.parametrize(("num_labels", "hidden"), SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_transform_of_either_model_changes_nothing_but_procrustes(num_labels, hidden, seed):
    rng = np.random.default_rng(seed)
    f1, g1, f2, g2 = model_pair(num_labels, hidden, seed)
    base = compare_representations(f1, g1, f2, g2, num_samples=20)
    cond = 10.0 ** rng.uniform(1, 3)

    a, shift = random_transform(hidden, cond, rng), rng.normal(size=hidden)
    moved2 = compare_representations(f1, g1, *paired(f2, g2, a, shift), num_samples=20)
    assert_same(base, moved2, INVARIANT + ("d_rep_sq",))
    assert (moved2["pivot_label"], moved2["left_out_label"], moved2["input_set"]) == (
        base["pivot_label"], base["left_out_label"], base["input_set"]
    )

    moved1 = compare_representations(*paired(f1, g1, a, shift), f2, g2, num_samples=20)
    assert_same(base, moved1, INVARIANT)
    # d_rep is measured in the first model's coordinates: moving model 1 changes it.
    assert abs(moved1["d_rep_sq"] - base["d_rep_sq"]) > 1e-3 * base["d_rep_sq"]
    assert abs(moved2["procrustes"] - base["procrustes"]) > 1e-3
    assert abs(moved2["cka"] - base["cka"]) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_models_are_identical(seed):
    f, g, _, _ = model_pair(20, 4, seed)
    out = compare_representations(f, g, f, g)
    assert out["kl"] == 0 and out["d_logit_sq"] == 0 and abs(out["js"]) < 1e-15  # JS: log(2) rounding
    assert out["d_llv"] < 1e-12 and out["d_svd_f"] < 1e-12 and out["d_svd_g"] < 1e-12
    assert out["m_cca_f"] == pytest.approx(1, abs=1e-12) and out["cka"] == pytest.approx(1, abs=1e-12)
    assert out["procrustes"] == pytest.approx(0, abs=1e-12) and out["d_rep_sq"] == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_measures_are_symmetric(seed):
    f1, g1, f2, g2 = model_pair(20, 4, seed)
    ab, ba = compare_representations(f1, g1, f2, g2), compare_representations(f2, g2, f1, g1)
    assert ab["kl"] == pytest.approx(ba["kl_reverse"], rel=1e-12)
    for key in ("js", "d_logit_sq", "t1", "t3", "d_svd_f", "m_cca_f", "m_cca_g", "cka", "procrustes"):
        assert ab[key] == pytest.approx(ba[key], rel=1e-9), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opposite_rotations_fool_cca_but_not_the_distributions(seed):
    rng = np.random.default_rng(seed)
    f, g, _, _ = model_pair(10, 2, seed)
    angle = rng.uniform(0.6, 1.2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out = compare_representations(f, g, 3 * f @ rotation.T, 3 * g @ rotation)  # f rotated one way, g the other
    assert out["m_cca_f"] == pytest.approx(1, abs=1e-12) and out["m_cca_g"] == pytest.approx(1, abs=1e-12)
    assert out["kl"] > 0.1 and out["d_llv"] > 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cka_claims(seed):
    rng = np.random.default_rng(seed)
    f1, g1, f2, g2 = model_pair(10, 4, seed)
    base = compare_representations(f1, g1, f2, g2)["cka"]
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    # Orthogonal maps and isotropic scaling of f (with g moved to keep the distribution) leave CKA unchanged.
    assert compare_representations(f1, g1, 2.5 * f2 @ q.T, g2 @ q / 2.5)["cka"] == pytest.approx(base, rel=1e-9)
    a = random_transform(4, 100.0, rng)
    assert abs(compare_representations(f1, g1, *paired(f2, g2, a, 0))["cka"] - base) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_procrustes_claims(seed):
    rng = np.random.default_rng(seed)
    f1, g1, f2, g2 = model_pair(10, 4, seed)
    base = compare_representations(f1, g1, f2, g2)["procrustes"]
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    moved = compare_representations(f1, g1, 2.5 * f2 @ q.T, g2 @ q / 2.5)["procrustes"]
    assert moved == pytest.approx(base, rel=1e-9)
    assert 0 <= base <= 2


@pytest.mark.parametrize("scale", [1e-20, 1e-5, 1e5, 1e20, 1e60])
def test_identical_models_stay_identical_at_any_scale_of_f(scale):
    """f -> s f, g -> g / s is a paired transform too: features far from unit size lose no digits."""
    f1, g1, _, _ = model_pair(30, 4, seed=0)
    out = compare_representations(f1 * scale, g1 / scale, f1 * scale, g1 / scale, num_samples=20)
    assert out["d_llv"] < 1e-13 and out["d_svd_f"] < 1e-13 and out["d_svd_g"] < 1e-13
    assert out["m_cca_f"] == pytest.approx(1, abs=1e-12) and out["cka"] == pytest.approx(1, abs=1e-12)
    assert out["procrustes"] == pytest.approx(0, abs=1e-12)


def test_m_svd_of_a_correlation_a_rounding_above_one_is_one():
    """The nuclear norm of a correlation matrix is at most m: d_SVD = 1 - m_SVD is never negative."""
    ones = torch.ones(2, 3, dtype=torch.float64)
    cov = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * torch.tensor([1 + 4e-15, 0.5], dtype=torch.float64)[:, None, None]
    values = m_svd(cov, ones, ones)
    assert values[0] == 1 and values[1] == pytest.approx(0.5)
