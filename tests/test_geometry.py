"""The second-moment geometry behind d_LLV's scales and terms, against direct float64 computations."""

from __future__ import annotations

import pytest
import torch

from hf_repsim.geometry import all_finite, block_factor, duplicate_rows, label_covariance, psd_factor, row_geometry


def random_cov(dim: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, dim, generator=gen, dtype=torch.float64)
    return a.T @ a / rank


@pytest.mark.parametrize(("split", "rank"), [(3, 9), (4, 9), (4, 5)])
def test_block_factor_rebuilds_the_covariance_with_the_first_group_in_its_own_columns(split, rank):
    cov = random_cov(9, rank, seed=split + rank)
    first, second = block_factor(cov, split)
    assert first.shape == (split, split) and second.shape == (9 - split, 9)
    full = torch.cat([torch.cat([first, torch.zeros(split, 9 - split, dtype=torch.float64)], 1), second])
    torch.testing.assert_close(full @ full.T, cov, rtol=0, atol=1e-12 * float(cov.abs().max()))


def test_psd_factor_gives_exact_zeros_for_a_repeated_variable():
    base = random_cov(4, 10, seed=0)
    cov = torch.zeros(5, 5, dtype=torch.float64)
    cov[:4, :4] = base
    cov[4, :4] = cov[:4, 4] = base[0]
    cov[4, 4] = base[0, 0]  # variable 4 is a copy of variable 0
    factor = psd_factor(cov)
    assert float((factor[0] - factor[4]).norm()) < 1e-7 * float(factor.norm())


def direct_terms(vectors, factors, constant, rows, pivot):
    """s_i, s_j, R, P from the rows' vectors u_k = [v; constant] F_k, differences first."""
    width = factors[1].shape[1]
    u = []
    for v, f in zip(vectors, factors):
        full = torch.cat([v.double(), torch.full((v.shape[0], 1), constant, dtype=torch.float64)], 1) @ f
        u.append(torch.nn.functional.pad(full, (0, width - full.shape[1])))
    s = [(uk[rows] - uk[pivot]).norm(dim=1) for uk in u]
    r = (u[0][rows] / s[0][:, None] - u[1][rows] / s[1][:, None]).norm(dim=1)
    p = (u[0][pivot] / s[0][:, None] - u[1][pivot] / s[1][:, None]).norm(dim=1)
    return s[0], s[1], r, p


@pytest.mark.parametrize("closeness", [1.0, 1e-3, 1e-6])
@pytest.mark.parametrize("widths", [(5, 5), (3, 6)])
def test_row_geometry_terms_match_the_direct_difference_first_formulas(closeness, widths):
    m_i, m_j = widths
    gen = torch.Generator().manual_seed(7)
    rows_i = torch.randn(300, m_i, generator=gen, dtype=torch.float64) + 2.0  # an offset: centring must handle it
    extra = torch.randn(300, m_j, generator=gen, dtype=torch.float64)
    rows_j = torch.cat([rows_i, torch.zeros(300, m_j - m_i, dtype=torch.float64)], 1) + closeness * extra
    # A covariance of phi = (f_i, logZ_i, f_j, logZ_j): model j is model i (plus extra columns) up to closeness.
    mix = torch.randn(40, m_i + 1, generator=gen, dtype=torch.float64)
    phi_j = torch.cat([mix[:, :m_i], torch.randn(40, m_j - m_i, generator=gen, dtype=torch.float64), mix[:, -1:]], 1)
    joint = torch.cat([mix, phi_j + closeness * torch.randn(40, m_j + 1, generator=gen, dtype=torch.float64)], 1)
    cov = joint.T @ joint / 40
    factors = block_factor(cov, m_i + 1)
    pivots = torch.tensor([0, 17, 299])
    geometry = row_geometry((rows_i, rows_j), factors, -1.0, pivots)
    for column, pivot in enumerate(pivots.tolist()):
        rows = torch.tensor([r for r in range(300) if r != pivot])
        got = geometry.terms(rows, torch.tensor(pivot), column)
        want = direct_terms((rows_i, rows_j), factors, -1.0, rows, pivot)
        for name, g, w in zip(("s_i", "s_j", "R", "P"), got, want):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=0, msg=name)
        if closeness == 1e-6:  # the terms are far below the scales: a formula that expands R^2 loses them
            assert float(want[2].max()) < 1e-4


def test_row_geometry_is_the_same_in_float32_and_float64_rows():
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(5000, 4, generator=gen)  # more rows than one chunk
    factors = block_factor(random_cov(10, 20, seed=3), 5)
    a = row_geometry((rows, rows + 0.1), factors, 1.0, torch.tensor([2, 4999]))
    b = row_geometry((rows.double(), (rows + 0.1).double()), factors, 1.0, torch.tensor([2, 4999]))
    for name in ("sq_i", "sq_j", "a", "b", "c", "cross_i", "cross_j"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0, msg=name)


def test_label_covariance_is_the_unbiased_covariance_of_the_stacked_heads():
    gen = torch.Generator().manual_seed(1)
    w_i, w_j = torch.randn(5000, 3, generator=gen), torch.randn(5000, 4, generator=gen) + 5
    b_i, b_j = torch.randn(5000, generator=gen, dtype=torch.float64), torch.zeros(5000, dtype=torch.float64)
    stacked = torch.cat([w_i.double(), b_i[:, None], w_j.double(), b_j[:, None]], 1)
    gamma, mean = label_covariance((w_i, w_j), (b_i, b_j))
    torch.testing.assert_close(gamma, torch.cov(stacked.T), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mean, stacked.mean(0), rtol=1e-12, atol=1e-14)


def test_duplicate_rows_flags_every_repeat_but_the_first():
    weight = torch.randn(8, 3)
    weight[5] = weight[2]
    weight[6] = weight[2]
    weight[3], weight[7] = 0.0, -0.0  # a signed zero is the same value
    bias = torch.zeros(8)
    bias[6] = 1.0  # same vector, different bias: a different label
    for w in (weight, weight.half(), weight.double()):
        assert duplicate_rows(w, bias).nonzero().flatten().tolist() == [5, 7]


def test_all_finite_sees_nan_and_infinity_but_not_huge_finite_values():
    assert all_finite(torch.randn(100))
    assert all_finite(torch.full((10,), 3e38))  # the sum overflows; the entries are finite
    assert all_finite(torch.full((10,), 6e4, dtype=torch.float16))
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([1.0, float("-inf")], dtype=torch.float64))
