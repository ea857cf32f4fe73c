"""The measures of DESIGN.md section 2, computed from a :class:`~hf_repsim.stats.RepSimState` and the heads.

Notation: models i and j; phi_k = [f_k; logZ_k]; l_k(y|x) = g_k(y)^T f_k(x) + b_k(y) - logZ_k(x).
Sigma is the unbiased covariance of (phi_i, phi_j) over contexts, Gamma the unbiased covariance of
(g_i, b_i, g_j, b_j) over labels. Every variance over inputs is a quadratic form in Sigma, every
variance over labels a quadratic form in Gamma: with a factor Sigma = L L^T, sd_x[w^T phi] = ||L^T w||,
which is how the label side is evaluated without ever forming the (n_contexts, n_labels) matrix
(:mod:`hf_repsim.geometry` does it for every label and every candidate pivot in one streamed pass).

Invariances, for the paired transform f -> A f, g -> A^{-T} g + c (A invertible, c a common
translation of every label vector) applied to either model: kl, kl_reverse, js, d_logit_sq, d_llv
(and t1..t4), d_svd_f, d_svd_g, d_fg, m_cca_f and m_cca_g are invariant (they are functions of the
two distributions, or of CCA, which is invariant to any invertible linear map). d_rep_sq is measured
in the first model's coordinates: invariant to the transform applied to the second model only.
The contrast baselines are not: CKA is invariant to orthogonal maps and isotropic scaling of f;
the Procrustes distance to orthogonal maps, isotropic scaling and translation of f.

Where the inputs come from: everything but CKA and the input side (t2, t4, d_svd_g) is computed from the
moments of every context; those three use the contexts kept in the reservoir (all of them when the
reservoir is at least as large as the data, as in :func:`hf_repsim.compare_representations`).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from hf_repsim.geometry import all_finite, block_factor, duplicate_rows, label_covariance, row_geometry
from hf_repsim.heads import Head
from hf_repsim.stats import RepSimState

#: The keys of :func:`compare_representations` and of :meth:`Measures.as_dict`, in order.
MEASURE_KEYS = (
    "kl",
    "kl_reverse",
    "js",
    "d_logit_sq",
    "d_llv",
    "t1",
    "t2",
    "t3",
    "t4",
    "pivot_label",
    "left_out_label",
    "input_set",
    "d_svd_f",
    "d_svd_g",
    "d_fg",
    "m_cca_f",
    "m_cca_g",
    "d_rep_sq",
    "bound",
    "bound_holds",
    "cka",
    "procrustes",
)

QUANTILES = (0.5, 0.9, 0.99, 1.0)


@dataclass
class MeasureConfig:
    """How the measures are searched and sampled. Defaults are the paper's settings.

    Attributes:
        lam: lambda, the weight of the scale terms t3 and t4 in d_LLV.
        num_samples: random input diversity sets tried in the search for the input pivot and set.
        seed: seed of every random choice (input sets, sampled label sets).
        num_pivots: size of the candidate set of pivot labels: the labels with the highest mean predicted
            probability (averaged over the two models and all contexts). Every label when there are fewer.
            Each candidate's t1 is computed in full; the pivot is the candidate with the smallest.
        num_left_out: labels left out of t1 beside the pivot (the worst ones for that pivot).
        num_label_sets: label diversity sets for d_SVD_f and (pivot, set) pairs for d_rep^2. All of them are
            used when there are at most this many; otherwise this many are sampled with ``seed``.
        degenerate_tol: a label whose log-ratio scale s_k(y) is at most this fraction of the median scale (for
            the chosen pivot) is degenerate: excluded from t1, t3 and the label sets, and counted. So is a label
            whose row (g, b) repeats an earlier label's in both models (one label twice, as never-trained
            vocabulary rows often are). A row repeated in one model only stays in t1 and t3 (the other model
            tells the two labels apart) but is kept out of the label sets, which it would make singular.
        cca_rcond: eigenvalues of a covariance below this fraction of its largest are treated as zero in CCA.
            The covariance of A f has a condition number up to cond(A)^2 times that of f, so m_cca keeps its
            invariance for cond(A)^2 cond(Cov f) below 1 / cca_rcond (cond(A) up to about 1e5 for a
            well-spread f); beyond that, the weakest directions are dropped and count as uncorrelated.
        pivot_label, left_out_label, input_set: fix the choices instead of searching (input_set holds context
            ids: the pivot input first, then M inputs).
    """

    lam: float = 1e-5
    num_samples: int = 200
    seed: int = 0
    num_pivots: int = 64
    num_left_out: int = 1
    num_label_sets: int = 32
    degenerate_tol: float = 1e-6
    cca_rcond: float = 1e-12
    pivot_label: int | None = None
    left_out_label: int | None = None
    input_set: list[int] | None = None

    def __post_init__(self) -> None:
        for name in ("seed", "num_samples", "num_pivots", "num_left_out", "num_label_sets"):
            setattr(self, name, _integer(name, getattr(self, name)))
        for name in ("pivot_label", "left_out_label"):
            if getattr(self, name) is not None:
                setattr(self, name, _integer(name, getattr(self, name), "a label id or None"))
        if self.input_set is not None:
            ids = self.input_set.tolist() if hasattr(self.input_set, "tolist") else list(self.input_set)
            self.input_set = [_integer("input_set", c, "a list of context ids") for c in ids]
        for name in ("num_samples", "num_pivots", "num_label_sets"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}.")
        if self.num_left_out < 0:
            raise ValueError(f"Expected num_left_out >= 0, got {self.num_left_out}.")
        if not self.lam >= 0:
            raise ValueError(f"Expected lam >= 0, got {self.lam}.")


def _integer(name: str, value: Any, what: str = "an integer") -> int:
    """``value`` as a Python int, or a TypeError that names the setting (a float or a bool is not an id)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} to be {what} (integers), got {value!r} of type {type(value).__name__}.")
    return int(value)


@dataclass
class Measures:
    """The measures of one pair of models, with how they were obtained.

    Attributes:
        values: the measures, keyed by :data:`MEASURE_KEYS` (plain floats, ints, lists, None where undefined).
        details: provenance: candidate pivots, left-out labels, degenerate labels, label sets, quantiles of the
            per-label and per-input terms, the input-set search, and whether the bound applies.
    """

    values: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


# ---------------------------------------------------------------------------------------------- helpers
def m_svd(cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """m_SVD of two sets of m columns from their cross-covariance and variances.

    m_SVD = (sum of singular values of corr(U_1, U_2)) / m, the mean singular value of the cross-correlation of
    the standardised columns; d_SVD = 1 - m_SVD. Invariant to scaling and translating each column and to a
    common permutation of the columns; not to other linear maps.

    Args:
        cov12: (..., m, m) covariance between the columns of U_1 and U_2.
        var1: (..., m) variances of the columns of U_1.
        var2: (..., m) variances of the columns of U_2.

    Returns:
        (...,) values in [0, 1]. A column with zero variance (the diversity condition fails) correlates with
        nothing: its row or column of the correlation is 0, never NaN. The nuclear norm of a correlation matrix is
        at most m; a sum a rounding above that is clamped, so that d_SVD is never negative.
    """
    scale = var1.clamp(min=0).sqrt()[..., :, None] * var2.clamp(min=0).sqrt()[..., None, :]
    corr = torch.where(scale > 0, cov12 / torch.where(scale > 0, scale, 1), 0)
    return (torch.linalg.svdvals(corr).sum(-1) / corr.shape[-1]).clamp(max=1)


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp(entropy) of the normalised non-negative eigenvalues: M for an isotropic covariance, 1 for rank one."""
    weights = eigenvalues.clamp(min=0)
    if weights.sum() <= 0:
        return 0.0
    weights = weights / weights.sum()
    weights = weights[weights > 0]
    return float(torch.exp(-(weights * weights.log()).sum()))


def condition_number(matrix: torch.Tensor) -> float:
    """Largest over smallest singular value of each (..., m, n) matrix, the worst over the batch; inf if singular."""
    singular = torch.linalg.svdvals(matrix)
    smallest, largest = singular[..., -1], singular[..., 0]
    ratio = torch.where(smallest > 0, largest / torch.where(smallest > 0, smallest, 1), torch.inf)
    return float(ratio.max())


def mean_canonical_correlation(cov11: torch.Tensor, cov22: torch.Tensor, cov12: torch.Tensor, rcond: float) -> float:
    """Mean canonical correlation of two vectors from their covariances (closed form, no iteration).

    The canonical correlations are the singular values of W_1 cov12 W_2^T with W_k a whitening map of cov_kk.
    Their mean over min(M_1, M_2) components is invariant to any invertible linear map and translation of either
    vector. Directions with variance below ``rcond`` times the largest are dropped and count as zero correlation.

    Args:
        cov11: (M_1, M_1), cov22: (M_2, M_2), cov12: (M_1, M_2) covariances.
        rcond: relative eigenvalue floor.

    Returns:
        The mean canonical correlation in [0, 1].
    """

    def whitener(cov: torch.Tensor) -> torch.Tensor:
        eigval, eigvec = torch.linalg.eigh(cov)
        keep = eigval > rcond * eigval.max().clamp(min=torch.finfo(cov.dtype).tiny)
        return (eigvec[:, keep] / eigval[keep].sqrt()).T  # (rank, M)

    corr = whitener(cov11) @ cov12 @ whitener(cov22).T
    if corr.numel() == 0:
        return 0.0
    return float(torch.linalg.svdvals(corr).clamp(0, 1).sum() / min(cov11.shape[0], cov22.shape[0]))


def debiased_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012), from features.

    Invariant to orthogonal maps and isotropic scaling of either input, and to translation; NOT to general
    invertible maps, which is why it is a contrast to the identifiability-aware measures.

    Args:
        x: (n_contexts, M_1) and y: (n_contexts, M_2) features of the same contexts, n_contexts >= 4.

    Returns:
        The debiased CKA, about in [0, 1] (the estimator can dip slightly below 0).
    """
    n = x.shape[0]
    if n < 4:
        raise ValueError(
            f"Expected at least 4 contexts for the debiased CKA, got {n}; it is computed on the contexts kept in the "
            "reservoir, so raise reservoir_size."
        )
    # CKA ignores translation and the scale of either input: centred, unit-norm inputs keep the fourth powers
    # below in range whatever the features' size.
    x, y = _unit_norm(x - x.mean(0)), _unit_norm(y - y.mean(0))

    def hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diag_a, diag_b = a.square().sum(1), b.square().sum(1)  # (n,) the Gram diagonals
        trace = (a.T @ b).square().sum() - (diag_a * diag_b).sum()
        sum_a, sum_b = a.sum(0), b.sum(0)
        total_a, total_b = sum_a @ sum_a - diag_a.sum(), sum_b @ sum_b - diag_b.sum()
        row_a, row_b = a @ sum_a - diag_a, b @ sum_b - diag_b  # (n,) row sums of the off-diagonal Grams
        return (trace + total_a * total_b / ((n - 1) * (n - 2)) - 2 * (row_a @ row_b) / (n - 2)) / (n * (n - 3))

    denominator = (hsic(x, x) * hsic(y, y)).sqrt()
    return float(hsic(x, y) / denominator) if denominator > 0 else 0.0


def _unit_norm(x: torch.Tensor) -> torch.Tensor:
    """x divided by its Frobenius norm (x itself if zero), scaled by its largest entry first so the norm is finite."""
    largest = x.abs().max()
    if largest == 0:
        return x
    x = x / largest
    return x / x.norm()


def procrustes_distance(cov11: torch.Tensor, cov22: torch.Tensor, cov12: torch.Tensor) -> float:
    """Orthogonal Procrustes distance of two centred, unit-Frobenius-norm representations, from covariances.

    d = 2 - 2 ||X^T Y||_* with X, Y centred and scaled to unit Frobenius norm, i.e. the smallest
    ||X - Y Q||_F^2 over orthogonal Q. Invariant to orthogonal maps, isotropic scaling and translation; NOT to
    general invertible maps.

    Args:
        cov11: (M_1, M_1), cov22: (M_2, M_2), cov12: (M_1, M_2) covariances.

    Returns:
        The distance in [0, 2].
    """
    scale = torch.trace(cov11).sqrt() * torch.trace(cov22).sqrt()  # each root first: no overflow
    if scale <= 0:
        return 0.0
    return max(0.0, float(2 - 2 * torch.linalg.svdvals(cov12).sum() / scale))  # >= 0 but for rounding


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    q = torch.quantile(values.double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(q[3])}


#: Elements per batch of the per-pivot and per-set work: (rows, pivots) matrices and (sets, m, M) stacks stay
#: within a few hundred MB however many pivots, samples or label sets are asked for.
_BATCH_ELEMENTS = 1 << 24


def _batches(count: int, elements_each: int) -> list[slice]:
    """Consecutive slices of range(count), each holding at most ``_BATCH_ELEMENTS // elements_each`` items."""
    size = max(1, _BATCH_ELEMENTS // max(1, elements_each))
    return [slice(start, start + size) for start in range(0, count, size)]


def _subsets(pool: Sequence[int], size: int, limit: int, rng: np.random.Generator) -> list[list[int]]:
    """Every size-subset of pool when there are at most ``limit``, else ``limit`` sorted random ones."""
    if math.comb(len(pool), size) <= limit:
        return [list(s) for s in itertools.combinations(pool, size)]
    pool = np.asarray(pool)
    return [sorted(rng.choice(pool, size, replace=False).tolist()) for _ in range(limit)]


# ---------------------------------------------------------------------------------------------- the pair
class _Pair:
    """Everything shared by the measures of models i and j: moments, factors and the heads.

    The heads stay in their own dtype (a float64 copy of a vocabulary-sized head would cost more than the
    measures); rows are gathered and promoted to float64 where a measure needs them.
    """

    def __init__(self, state: RepSimState, heads: Sequence[Head], i: int, j: int):
        self.state, self.i, self.j = state, i, j
        self.m_i, self.m_j = state.hidden_sizes[i], state.hidden_sizes[j]
        self.m = min(self.m_i, self.m_j)
        f_i, z_i = state.block(i)
        f_j, z_j = state.block(j)
        self.index = torch.tensor([*range(f_i.start, f_i.stop), z_i, *range(f_j.start, f_j.stop), z_j])
        self.cov = state.covariance()[self.index][:, self.index]  # (D, D), D = M_i + M_j + 2
        self.fi, self.fj = slice(0, self.m_i), slice(self.m_i + 1, self.m_i + 1 + self.m_j)
        self.mean = state.mean[self.index]
        (self.w_i, self.b_i), (self.w_j, self.b_j) = (
            _head(heads[k], state.hidden_sizes[k], state.num_labels) for k in (i, j)
        )
        self.gamma, self.label_mean = label_covariance((self.w_i, self.w_j), (self.b_i, self.b_j))
        self._check_moments()
        # A row repeating an earlier one in BOTH models is that label twice (never-trained rows often share one
        # value): left out of d_LLV. A row repeating in ONE model only is a real label for d_LLV (the other model
        # tells the two apart: that is a difference to see), but it would make that model's label sets singular.
        repeats_i, repeats_j = duplicate_rows(self.w_i, self.b_i), duplicate_rows(self.w_j, self.b_j)
        self.duplicates = repeats_i & repeats_j
        self.repeats_in_one = repeats_i ^ repeats_j
        # Label side: sd over contexts of [g; -1]^T phi, read off a factor of Sigma.
        self.label_factors = block_factor(self.cov, self.m_i + 1)
        # Input side: sd over labels of [f; 1]^T [g; b], read off a factor of Gamma.
        self.input_factors = block_factor(self.gamma, self.m_i + 1)
        phi = state.reservoir_phi[:, self.index]
        self.reservoir_f_i, self.reservoir_f_j = phi[:, self.fi], phi[:, self.fj]

    def _check_moments(self) -> None:
        """Refuse second moments that overflowed, and a model whose f or g does not vary: nothing to compare."""
        for name, cov, what in (("Sigma", self.cov, "features f"), ("Gamma", self.gamma, "label vectors g")):
            if not all_finite(cov):
                raise ValueError(
                    f"Expected {what} whose second moments fit in float64, got an overflowing covariance ({name}); "
                    "rescale the features f (and g inversely: logits are unchanged) to moderate sizes."
                )
        # Zero variance at float64 precision: a spread below 1e-12 of the mean's size is rounding, not signal.
        # Gamma's (g_i, b_i, g_j, b_j) sit where Sigma's (f_i, logZ_i, f_j, logZ_j) do.
        for model, block in (("the first", self.fi), ("the second", self.fj)):
            if _no_spread(self.cov[block, block], self.mean[block]):
                raise ValueError(
                    f"Expected the features f of {model} model to vary over the contexts, got no spread that "
                    "float64 holds (the same f for every context, or values so small their squares underflow): such a "
                    "model has no representation to compare."
                )
            if _no_spread(self.gamma[block, block], self.label_mean[block]):
                raise ValueError(
                    f"Expected the label vectors g of {model} model to differ between labels, got the same vector "
                    "for every label (at float64 precision): such a model predicts one distribution whatever f is."
                )

    def g_i(self, labels: torch.Tensor | list[int] | int) -> torch.Tensor:
        """Model i's label vectors g_i(labels) in float64: (..., M_i)."""
        return self.w_i[labels].double()

    def g_j(self, labels: torch.Tensor | list[int] | int) -> torch.Tensor:
        """Model j's label vectors g_j(labels) in float64: (..., M_j)."""
        return self.w_j[labels].double()


def _no_spread(cov: torch.Tensor, mean: torch.Tensor) -> bool:
    """Whether vectors with this covariance and mean are all the same but for rounding (spread <= 1e-12 |mean|)."""
    return bool(cov.diagonal().sum() <= 1e-24 * mean.square().sum())


def _head(head: Head, hidden: int, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight (on the CPU, in its dtype) and the float64 bias of a head checked against the statistics."""
    if tuple(head.weight.shape) != (num_labels, hidden):
        raise ValueError(
            f"Expected an unembedding of shape (n_labels={num_labels}, hidden={hidden}) to match the statistics, "
            f"got {tuple(head.weight.shape)}."
        )
    weight = head.weight.detach().cpu()
    if not weight.is_floating_point():
        weight = weight.double()
    bias = torch.zeros(num_labels, dtype=torch.float64) if head.bias is None else head.bias.detach().cpu().double()
    if not (all_finite(weight) and all_finite(bias)):
        raise ValueError("Expected finite unembedding weights and biases, got NaN or infinite values.")
    return weight, bias


# ---------------------------------------------------------------------------------------------- label side
@dataclass
class _LabelChoice:
    pivot: int
    left_out: list[int]
    t1: float
    t3: float
    eligible: list[int]  # labels other than the pivot and the left-out ones, not degenerate
    degenerate: list[int]
    terms: torch.Tensor  # (len(eligible),) max(R, P)
    scales: torch.Tensor  # (len(eligible),) S


def _choose_labels(
    pivot: int, label_terms: Sequence[torch.Tensor], duplicates: torch.Tensor, config: MeasureConfig
) -> _LabelChoice:
    """Given s_i, s_j, R, P of every label for one pivot: the degenerate and left-out labels, t1 and t3.

    Degenerate: a log-ratio scale at or below ``degenerate_tol`` times the median, or a row of g (and b) repeating an
    earlier label's in both models (``duplicates``: such labels are one label twice).
    """
    s_i, s_j, r, p = label_terms
    labels = torch.arange(s_i.shape[0])
    others = labels != pivot
    floor_i = config.degenerate_tol * s_i[others].median()
    floor_j = config.degenerate_tol * s_j[others].median()
    degenerate = others & ((s_i <= floor_i) | (s_j <= floor_j) | duplicates)
    usable = others & ~degenerate
    terms = torch.maximum(r, p)
    if config.left_out_label is not None:
        left_out = [config.left_out_label] if config.left_out_label != pivot else []
    else:
        usable_terms = terms[usable]
        worst = torch.topk(usable_terms, min(config.num_left_out, usable_terms.numel())).indices
        left_out = labels[usable][worst].tolist()
    keep = usable.clone()
    keep[left_out] = False
    if not bool(keep.any()):
        raise ValueError(
            f"Expected at least one usable label besides the pivot {pivot} and the left-out labels {left_out}, "
            f"got none ({int(degenerate.sum())} degenerate of {s_i.shape[0]})."
        )
    scales = (s_i - s_j).abs()
    return _LabelChoice(
        pivot=pivot,
        left_out=left_out,
        t1=float(terms[keep].max()),
        t3=float(scales[keep].max()),
        eligible=labels[keep].tolist(),
        degenerate=labels[degenerate].tolist(),
        terms=terms[keep],
        scales=scales[keep],
    )


def _candidate_pivots(pair: _Pair, config: MeasureConfig) -> list[int]:
    if config.pivot_label is not None:
        return [config.pivot_label]
    if config.num_pivots >= pair.state.num_labels:
        return list(range(pair.state.num_labels))
    probs = pair.state.prob_sum[[pair.i, pair.j]].sum(0)  # (V,) summed predicted probability of each label
    return torch.argsort(probs, descending=True, stable=True)[: config.num_pivots].sort().values.tolist()


def _search_labels(pair: _Pair, config: MeasureConfig) -> tuple[_LabelChoice, int]:
    """The pivot and left-out labels minimising t1, every candidate pivot evaluated in full."""
    candidates = _candidate_pivots(pair, config)
    labels = torch.arange(pair.state.num_labels)
    choices = []
    for batch in _batches(len(candidates), labels.numel()):
        pivots = torch.tensor(candidates[batch])
        geometry = row_geometry((pair.w_i, pair.w_j), pair.label_factors, -1.0, pivots)
        for k, y0 in enumerate(pivots.tolist()):
            choices.append(_choose_labels(y0, geometry.terms(labels, torch.tensor(y0), k), pair.duplicates, config))
    best = min(range(len(choices)), key=lambda k: (choices[k].t1, choices[k].pivot))
    return choices[best], len(candidates)


# ---------------------------------------------------------------------------------------------- input side
def _search_inputs(pair: _Pair, config: MeasureConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """The input pivot and set: given, or the best of ``num_samples`` seeded random tuples of m + 1 inputs.

    Tuples are consecutive blocks of a seeded permutation of the reservoir, so they are disjoint until the
    reservoir is used up; then a new permutation starts. The tuple with the smallest max(R', P') is kept when
    that is below 1, else the first tuple.

    Returns:
        The reservoir rows of the chosen tuple (pivot first), max(R', P') and S' of its m inputs, and the search.
    """
    ids = pair.state.reservoir_ids
    size = pair.m + 1
    if config.input_set is not None:
        wanted = torch.as_tensor(config.input_set, dtype=torch.int64)
        if wanted.numel() != size or wanted.unique().numel() != size:
            raise ValueError(
                f"Expected input_set to hold {size} distinct context ids (the pivot input, then M={pair.m}), "
                f"got {config.input_set}."
            )
        rows = torch.searchsorted(ids, wanted)
        missing = [int(c) for c, r in zip(wanted, rows) if r >= ids.numel() or ids[r] != c]
        if missing:
            raise ValueError(
                f"Expected input_set ids among the {ids.numel()} contexts kept in the reservoir, got {missing} "
                f"which are not kept; raise reservoir_size (now {pair.state.reservoir_size}) to keep every context."
            )
        tuples, search = rows[None], {"searched": False}
    else:
        if ids.numel() < size:
            raise ValueError(
                f"Expected at least M + 1 = {size} contexts for the input side, got {ids.numel()}; feed more contexts."
            )
        rng = np.random.default_rng(config.seed)
        per_permutation = ids.numel() // size
        blocks, perm = [], None
        for k in range(config.num_samples):
            if k % per_permutation == 0:
                perm = rng.permutation(ids.numel())
            start = (k % per_permutation) * size
            blocks.append(perm[start : start + size])
        tuples, search = torch.from_numpy(np.stack(blocks)), {"searched": True, "tuples": len(blocks)}
    terms, scales = [], []
    for batch in _batches(len(tuples), ids.numel()):
        block = tuples[batch]
        geometry = row_geometry((pair.reservoir_f_i, pair.reservoir_f_j), pair.input_factors, 1.0, block[:, 0])
        s_i, s_j, r, p = geometry.terms(block[:, 1:], block[:, :1], torch.arange(len(block))[:, None])  # (n, m)
        terms.append(torch.maximum(r, p))
        scales.append((s_i - s_j).abs())
    terms, scales = torch.cat(terms), torch.cat(scales)
    chosen = 0
    if search["searched"]:
        scores = terms.max(1).values
        best = int(scores.argmin())
        chosen = best if scores[best] < 1 else 0
        search["chosen_tuple"] = chosen
    return tuples[chosen], terms[chosen], scales[chosen], search


# ---------------------------------------------------------------------------------------------- representations
def _d_svd_f(pair: _Pair, pivot: int, label_sets: list[list[int]]) -> torch.Tensor:
    """d_SVD on the embedding side for each label set: (n_sets,)."""
    all_sets, cov, out = torch.tensor(label_sets), pair.cov, []  # (n_sets, m)
    for batch in _batches(len(label_sets), pair.m * max(pair.m_i, pair.m_j)):
        sets = all_sets[batch]
        l_i = pair.g_i(sets) - pair.g_i(pivot)  # (batch, m, M_i)
        l_j = pair.g_j(sets) - pair.g_j(pivot)  # (batch, m, M_j)
        cov12 = l_i @ cov[pair.fi, pair.fj] @ l_j.transpose(1, 2)
        var1 = ((l_i @ cov[pair.fi, pair.fi]) * l_i).sum(-1)
        var2 = ((l_j @ cov[pair.fj, pair.fj]) * l_j).sum(-1)
        out.append(1 - m_svd(cov12, var1, var2))
    return torch.cat(out)


def _d_svd_g(pair: _Pair, rows: torch.Tensor) -> float:
    """d_SVD on the unembedding side for the input set (reservoir rows, pivot first)."""
    n_i = pair.reservoir_f_i[rows[1:]] - pair.reservoir_f_i[rows[0]]  # (m, M_i)
    n_j = pair.reservoir_f_j[rows[1:]] - pair.reservoir_f_j[rows[0]]  # (m, M_j)
    gi, gj = slice(0, pair.m_i), slice(pair.m_i + 1, pair.m_i + 1 + pair.m_j)
    cov12 = n_i @ pair.gamma[gi, gj] @ n_j.T
    var1 = ((n_i @ pair.gamma[gi, gi]) * n_i).sum(-1)
    var2 = ((n_j @ pair.gamma[gj, gj]) * n_j).sum(-1)
    return float(1 - m_svd(cov12, var1, var2))


def _d_rep_sq(pair: _Pair, pivot_sets: list[tuple[int, list[int]]]) -> float | None:
    """Mean over (pivot, label set) of (1/N) sum_n ||f_i(x_n) - A_L f_j(x_n)||^2 with A_L = L_i^{-1} L_j.

    The label sets are solved in batches; those whose L_i is singular are skipped, None when all are.
    """
    n = pair.state.count
    mean_i, mean_j = pair.mean[pair.fi], pair.mean[pair.fj]
    second = pair.cov * ((n - 1) / n)  # raw second moments E[f f^T] = Cov (n-1)/n + mu mu^T
    s_ii = second[pair.fi, pair.fi] + torch.outer(mean_i, mean_i)
    s_jj = second[pair.fj, pair.fj] + torch.outer(mean_j, mean_j)
    s_ij = second[pair.fi, pair.fj] + torch.outer(mean_i, mean_j)
    all_pivots = torch.tensor([pivot for pivot, _ in pivot_sets])[:, None]  # (n_sets, 1)
    all_sets = torch.tensor([labels for _, labels in pivot_sets])  # (n_sets, M)
    values = []
    for batch in _batches(len(pivot_sets), pair.m * pair.m):
        sets, pivots = all_sets[batch], all_pivots[batch]
        align, info = torch.linalg.solve_ex(pair.g_i(sets) - pair.g_i(pivots), pair.g_j(sets) - pair.g_j(pivots))
        align = align[info == 0]  # a singular label set: the diversity condition fails there
        # trace(A S_ij^T) and trace(A S_jj A^T) as elementwise sums.
        values.append(torch.trace(s_ii) - 2 * (align * s_ij).sum((1, 2)) + ((align @ s_jj) * align).sum((1, 2)))
    values = torch.cat(values)
    return max(0.0, float(values.mean())) if values.numel() else None  # >= 0 but for rounding


# ---------------------------------------------------------------------------------------------- entry point
def compute_measures(
    state: RepSimState, heads: Sequence[Head], pair: tuple[int, int] = (0, 1), config: MeasureConfig | None = None
) -> Measures:
    """Every measure of DESIGN.md section 2 for one pair of models, from the statistics and the unembeddings.

    Args:
        state: statistics of at least two models on common contexts.
        heads: the unembedding of every model in the state, in the same order.
        pair: (i, j), the two models to compare; model i is the "first" model (d_rep_sq is in its coordinates).
        config: search and sampling settings (defaults: the paper's).

    Returns:
        :class:`Measures`: ``values`` keyed by :data:`MEASURE_KEYS`, ``details`` with the provenance.

    Raises:
        ValueError: too few contexts or labels, a pivot out of range, shapes that do not match the state.
    """
    config = config or MeasureConfig()
    i, j = pair
    _check_request(state, heads, i, j, config)
    p = _Pair(state, heads, i, j)

    # Distributions: means of per-context scalars.
    scalars = state.pair_means(i, j)

    # Label side of d_LLV: pivot and left-out labels.
    choice, num_candidates = _search_labels(p, config)

    # Input side of d_LLV: pivot input and input set.
    rows, input_terms, input_scales, search = _search_inputs(p, config)
    t2, t4 = float(input_terms.max()), float(input_scales.max())
    d_llv = max(choice.t1, t2, config.lam * choice.t3, config.lam * t4)

    # Representations: label sets for d_SVD_f, (pivot, set) pairs for d_rep.
    rng = np.random.default_rng(config.seed)
    pool = [y for y in choice.eligible if not p.repeats_in_one[y]]  # a repeated row would make a set singular
    if len(pool) < p.m:
        raise ValueError(
            f"Expected at least M = {p.m} usable labels besides the pivot and the left-out labels, got "
            f"{len(pool)}; the label diversity condition cannot hold."
        )
    label_sets = _subsets(pool, p.m, config.num_label_sets, rng)
    d_svd_f_all = _d_svd_f(p, choice.pivot, label_sets)
    worst_set = label_sets[int(d_svd_f_all.argmax())]
    diversity = _diversity(p, choice.pivot, worst_set, rows, config)
    d_svd_f, d_svd_g = float(d_svd_f_all.max()), _d_svd_g(p, rows)
    d_fg = max(d_svd_f, d_svd_g)
    d_rep_sq = None
    if p.m_i == p.m_j:
        distinct = torch.nonzero(~(p.duplicates | p.repeats_in_one)).flatten().tolist()
        d_rep_sq = _d_rep_sq(p, _pivot_sets(distinct, p.m, config.num_label_sets, rng))

    cov = p.cov
    same_width = p.m_i == p.m_j
    bound = 2 * p.m * d_llv if same_width else None
    values = {
        "kl": scalars.kl,
        "kl_reverse": scalars.kl_reverse,
        "js": scalars.js,
        "d_logit_sq": scalars.d_logit_sq,
        "d_llv": d_llv,
        "t1": choice.t1,
        "t2": t2,
        "t3": choice.t3,
        "t4": t4,
        "pivot_label": choice.pivot,
        "left_out_label": choice.left_out[0] if choice.left_out else None,
        "input_set": state.reservoir_ids[rows].tolist(),
        "d_svd_f": d_svd_f,
        "d_svd_g": d_svd_g,
        "d_fg": d_fg,
        "m_cca_f": mean_canonical_correlation(cov[p.fi, p.fi], cov[p.fj, p.fj], cov[p.fi, p.fj], config.cca_rcond),
        "m_cca_g": _m_cca_g(p, config.cca_rcond),
        "d_rep_sq": d_rep_sq,
        "bound": bound,
        "bound_holds": (d_fg <= bound) if same_width else None,
        "cka": debiased_linear_cka(p.reservoir_f_i, p.reservoir_f_j),
        "procrustes": procrustes_distance(cov[p.fi, p.fi], cov[p.fj, p.fj], cov[p.fi, p.fj]),
    }
    details = {
        "models": [i, j],
        "hidden_sizes": [p.m_i, p.m_j],
        "num_contexts": state.count,
        "num_labels": state.num_labels,
        "bound_applies": same_width,
        "bound_note": None if same_width else "hidden sizes differ: d_fg <= 2 M d_llv does not apply",
        "pivot_candidates": num_candidates,
        "left_out_labels": choice.left_out,
        "degenerate_labels": len(choice.degenerate),
        "degenerate_label_ids": choice.degenerate[:100],
        "labels_repeated_in_one_model": int(p.repeats_in_one.sum()),
        "label_sets": {"count": len(label_sets), "size": p.m, "seed": config.seed},
        "d_svd_f_quantiles": _quantiles(d_svd_f_all),
        "label_term_quantiles": _quantiles(choice.terms),
        "label_scale_quantiles": _quantiles(choice.scales),
        "worst_labels": [choice.eligible[k] for k in torch.argsort(choice.terms, descending=True)[:10].tolist()],
        "input_term_quantiles": _quantiles(input_terms),
        "input_search": search,
        "diversity": diversity,
        "reservoir_contexts": int(state.reservoir_ids.numel()),
        "config": asdict(config),
    }
    return Measures(values=values, details=details)


def _diversity(
    pair: _Pair, pivot: int, label_set: list[int], rows: torch.Tensor, config: MeasureConfig
) -> dict[str, Any]:
    """Whether the diversity condition holds: condition numbers of the label and input difference matrices.

    The label side needs g(y_i) - g(y_0) linearly independent for the label set (the one behind d_svd_f), the input
    side f(x_i) - f(x_0) for the input set; a condition number at or beyond 1 / cca_rcond counts as singular.
    """
    sets = torch.tensor([label_set])
    label_cond = max(
        condition_number(pair.g_i(sets) - pair.g_i(pivot)), condition_number(pair.g_j(sets) - pair.g_j(pivot))
    )
    f_i, f_j = pair.reservoir_f_i, pair.reservoir_f_j
    input_cond = max(condition_number(f_i[rows[1:]] - f_i[rows[0]]), condition_number(f_j[rows[1:]] - f_j[rows[0]]))
    limit = 1 / config.cca_rcond
    failing = [name for name, cond in (("label", label_cond), ("input", input_cond)) if not cond < limit]
    note = None
    if failing:
        note = (
            f"the diversity condition fails on the {' and '.join(failing)} side (condition number >= {limit:.0e}): "
            "the representations are rank-deficient, identifiability does not hold, and d_svd, m_cca and d_rep "
            "then describe the span that is there, not a unique linear relation"
        )
    return {
        "label_set_condition": label_cond if math.isfinite(label_cond) else None,
        "input_set_condition": input_cond if math.isfinite(input_cond) else None,
        "holds": not failing,
        "note": note,
    }


def _m_cca_g(pair: _Pair, rcond: float) -> float:
    gi, gj = slice(0, pair.m_i), slice(pair.m_i + 1, pair.m_i + 1 + pair.m_j)
    gamma = pair.gamma
    return mean_canonical_correlation(gamma[gi, gi], gamma[gj, gj], gamma[gi, gj], rcond)


def _pivot_sets(pool: list[int], m: int, limit: int, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
    """(pivot, label set) pairs from ``pool`` for d_rep: all of them when there are at most ``limit``, else sampled."""
    if len(pool) * math.comb(len(pool) - 1, m) <= limit:
        return [(y0, list(s)) for y0 in pool for s in itertools.combinations([y for y in pool if y != y0], m)]
    pairs = []
    for _ in range(limit):
        chosen = rng.choice(pool, m + 1, replace=False)
        pairs.append((int(chosen[0]), sorted(chosen[1:].tolist())))
    return pairs


def check_label_count(num_labels: int, m: int, config: MeasureConfig) -> None:
    """Refuse fewer labels than the measures need: a pivot, M = m others and the left-out labels."""
    needed = m + 1 + (config.num_left_out if config.left_out_label is None else 1)
    if num_labels < needed:
        raise ValueError(
            f"Expected at least {needed} labels (a pivot, M = {m} others and the left-out labels), got {num_labels}."
        )


def _check_request(state: RepSimState, heads: Sequence[Head], i: int, j: int, config: MeasureConfig) -> None:
    k = state.num_models
    if len(heads) != k:
        raise ValueError(f"Expected one head per model in the state ({k}), got {len(heads)}.")
    if i == j or not (0 <= i < k and 0 <= j < k):
        raise ValueError(f"Expected two different model indices in [0, {k}), got ({i}, {j}).")
    m = min(state.hidden_sizes[i], state.hidden_sizes[j])
    if state.count < m + 1:
        raise ValueError(
            f"Expected at least M + 1 = {m + 1} contexts (the input diversity condition needs them), got "
            f"{state.count}; feed more contexts."
        )
    check_label_count(state.num_labels, m, config)
    for name in ("pivot_label", "left_out_label"):
        label = getattr(config, name)
        if label is not None and not 0 <= label < state.num_labels:
            raise ValueError(f"Expected {name} in [0, {state.num_labels}), got {label}.")
    if config.pivot_label is not None and config.pivot_label == config.left_out_label:
        raise ValueError(f"Expected different pivot and left-out labels, got {config.pivot_label} for both.")
