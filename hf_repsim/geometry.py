"""From second moments to the scales and terms of d_LLV, for every label (or context) and many pivots at once.

Both sides of d_LLV ask the same question of two models: for rows r (labels, or contexts) and a pivot row r_0,

    s_k(r)  = sd[ l_k(r) - l_k(r_0) ]                  (k = i, j)
    R(r)    = sd[ l_i(r) / s_i(r)   - l_j(r) / s_j(r) ]
    P(r)    = sd[ l_i(r_0) / s_i(r) - l_j(r_0) / s_j(r) ]

with the standard deviation over the other axis (over contexts for a label, over labels for a context). Each l_k(r)
is linear in a vector of the model (phi_k = [f_k; logZ_k] over contexts, [g_k; b_k] over labels), so with a factor
L L^T of the joint covariance every row becomes a vector u_k(r) = L_k^T w_k(r) and every sd a Euclidean norm.

Two reductions make this cheap without losing digits:

- a block lower-triangular factor (:func:`block_factor`): model i's vectors need only its own M_i + 1 columns;
- each row's pair (u_i, u_j) is reduced to its plane (:class:`RowGeometry`): a = |u_i|, and u_j = b u_i / a + c n
  with n a unit vector orthogonal to u_i, the residual c formed difference-first. Then for ANY pivot,
  R = |(a / s_i - b / s_j, c / s_j)| and P the same with the pivot's (a, b, c): no cancellation beyond that of
  the definition, for every candidate pivot at the cost of a few scalars. The scales s_k come from centred norms
  and one matrix product with the pivots' vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: Rows per chunk of the streamed pass: large enough for efficient matrix products, small enough that the
#: (chunk, D) temporaries stay near the cache.
ROW_CHUNK = 2048


def psd_factor(cov: torch.Tensor) -> torch.Tensor:
    """A factor L with L L^T = cov for a symmetric positive semi-definite (D, D) matrix: (D, D).

    The variables are first brought to unit variance (cov = S C S with S the standard deviations), so that
    variables of very different scales (features of size 1e5 beside log-normalisers of size 1) are each resolved
    to their own precision, then C is factored by its eigendecomposition. Eigenvalues of C within rounding of zero
    (below D * eps * the largest) are set to zero: their square roots would otherwise add noise of relative size
    sqrt(eps) to every standard deviation read off the factor, and two identical models would not come out
    identical. A standard deviation read off the factor is therefore exact to about sqrt(D * eps) ~ 1e-7 of the
    largest one it could be for those scales: the resolution of any measure built on second moments.
    """
    scale = cov.diagonal().clamp(min=0).sqrt()
    scale = torch.where(scale > 0, scale, 1)
    eigval, eigvec = torch.linalg.eigh(cov / scale[:, None] / scale[None, :])
    floor = cov.shape[0] * torch.finfo(cov.dtype).eps * eigval.abs().max()
    return scale[:, None] * eigvec * torch.where(eigval > floor, eigval, 0).sqrt()


def block_factor(cov: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A block lower-triangular factor of a (D, D) covariance of two groups of variables (split and D - split).

    L = psd_factor(cov) Q with Q orthogonal from the QR decomposition of the first group's rows transposed, so
    L L^T = cov as before, but the first group's rows are zero beyond their first ``split`` columns.

    Returns:
        (split, split) rows of the first group (only their non-zero columns) and (D - split, D) rows of the second.

    Example:
        >>> a = torch.randn(50, 5, dtype=torch.float64); cov = a.T @ a
        >>> first, second = block_factor(cov, 2)
        >>> bool(torch.allclose(first @ second[:, :2].T, cov[:2, 2:]))
        True
    """
    factor = psd_factor(cov)
    q, _ = torch.linalg.qr(factor[:split].T, mode="complete")  # (D, D)
    rotated = factor @ q
    return rotated[:split, :split].contiguous(), rotated[split:].contiguous()


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite, in one summing pass: NaN and infinities propagate into the sum.

    A sum that overflows on huge finite values is not proof of a bad entry: then every entry is looked at.
    """
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    if math.isfinite(float(tensor.sum(dtype=dtype))):
        return True
    return bool(torch.isfinite(tensor).all())


def duplicate_rows(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(n_labels,) bool: True for a row of (weight, bias) equal to an earlier row.

    Never-trained vocabulary rows often share one value. Rows are compared by their bytes (after mapping -0.0 to
    0.0), grouped with one sort of n_labels keys.

    Args:
        weight: (n_labels, hidden) in any float dtype; bias: (n_labels,).
    """
    rows = [(weight.detach().cpu() + 0).contiguous(), (bias.detach().cpu().double() + 0)[:, None]]
    raw = np.concatenate([r.view(torch.uint8).numpy() for r in rows], axis=1)  # (n_labels, row bytes)
    keys = raw.view(np.dtype((np.void, raw.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return torch.from_numpy(first[inverse.ravel()] != np.arange(weight.shape[0]))


def label_covariance(weights: tuple[torch.Tensor, torch.Tensor], biases: tuple[torch.Tensor, torch.Tensor]):
    """Unbiased covariance over labels of (g_i, b_i, g_j, b_j), and its mean: (D, D) and (D,) float64.

    D = M_i + M_j + 2. Two passes: the float64 means, then the co-moments of centred chunks (the three distinct
    blocks only).

    Args:
        weights: (n_labels, M_i) and (n_labels, M_j) unembeddings, any float dtype.
        biases: (n_labels,) float64 biases of each.
    """
    num_labels = weights[0].shape[0]
    widths = [w.shape[1] + 1 for w in weights]
    means = [
        torch.cat([w.sum(0, dtype=torch.float64), b.sum(0, keepdim=True)]) / num_labels
        for w, b in zip(weights, biases)
    ]
    blocks = [torch.zeros(widths[a], widths[b], dtype=torch.float64) for a, b in ((0, 0), (0, 1), (1, 1))]
    buffers = [torch.empty(ROW_CHUNK, width, dtype=torch.float64) for width in widths]
    for start in range(0, num_labels, ROW_CHUNK):
        rows = slice(start, start + ROW_CHUNK)
        centred = []
        for w, b, mean, buffer in zip(weights, biases, means, buffers):
            out = buffer[: w[rows].shape[0]]  # (chunk, M_k + 1)
            torch.sub(w[rows], mean[:-1], out=out[:, :-1])
            torch.sub(b[rows], mean[-1], out=out[:, -1])
            centred.append(out)
        for block, (a, b) in zip(blocks, ((0, 0), (0, 1), (1, 1))):
            block.addmm_(centred[a].T, centred[b])
    (ii, ij, jj), split = blocks, widths[0]
    gamma = torch.empty(split + widths[1], split + widths[1], dtype=torch.float64)
    gamma[:split, :split], gamma[:split, split:], gamma[split:, :split], gamma[split:, split:] = ii, ij, ij.T, jj
    return gamma / (num_labels - 1), torch.cat(means)


@dataclass
class RowGeometry:
    """What the scales and terms need of each row's pair of vectors (u_i, u_j), u_i in R^{D_i}, u_j in R^D.

    Attributes:
        sq_i, sq_j: (n_rows,) squared norms of the vectors centred over the rows (for the scales s_k).
        a: (n_rows,) |u_i|.
        b: (n_rows,) the component of u_j along u_i.
        c: (n_rows,) the norm of the rest of u_j, formed difference-first (small when the models are close).
        cross_i, cross_j: (n_rows, n_pivots) dot products of the centred vectors with the pivots' centred vectors.
    """

    sq_i: torch.Tensor
    sq_j: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    cross_i: torch.Tensor
    cross_j: torch.Tensor

    def terms(self, rows: torch.Tensor, pivots: torch.Tensor, column: torch.Tensor | slice = slice(None)):
        """s_i, s_j, R and P of ``rows`` against ``pivots``, broadcast together.

        Args:
            rows: integer index of the rows; pivots: integer index of the pivot rows (broadcastable to ``rows``);
            column: which columns of ``cross_*`` belong to those pivots (the same broadcast shape).

        Returns:
            Four tensors of the broadcast shape. The scales come from expanded squared norms of vectors centred over
            the rows, so they carry a relative error of about eps (spread / s)^2, the spread being that of the rows:
            negligible but for rows that nearly coincide with their pivot. At the pivot itself s is zero up to
            rounding, and R and P mean nothing there.
        """
        s_i = (self.sq_i[rows] + self.sq_i[pivots] - 2 * self.cross_i[rows, column]).clamp(min=0).sqrt()
        s_j = (self.sq_j[rows] + self.sq_j[pivots] - 2 * self.cross_j[rows, column]).clamp(min=0).sqrt()
        r = torch.hypot(self.a[rows] / s_i - self.b[rows] / s_j, self.c[rows] / s_j)
        p = torch.hypot(self.a[pivots] / s_i - self.b[pivots] / s_j, self.c[pivots] / s_j)
        return s_i, s_j, r, p


def row_geometry(
    vectors: tuple[torch.Tensor, torch.Tensor],
    factors: tuple[torch.Tensor, torch.Tensor],
    constant: float,
    pivots: torch.Tensor,
) -> RowGeometry:
    """The geometry of every row of two models, streamed over chunks of rows.

    Row r of model k is the vector u_k(r) = F_k^T [v_k(r); constant], with F_k that model's rows of a block
    factor (:func:`block_factor`): for labels, v = g and constant = -1 (the coefficient of logZ); for contexts,
    v = f and constant = 1 (the coefficient of the bias).

    Args:
        vectors: (n_rows, M_i) and (n_rows, M_j), any float dtype.
        factors: (M_i + 1, D_i) and (M_j + 1, D) rows of the block factor.
        constant: the last coordinate of every row's [v; constant].
        pivots: (n_pivots,) rows to take dot products with.

    Returns:
        :class:`RowGeometry` over all rows.
    """
    num_rows, split = vectors[0].shape[0], factors[0].shape[1]
    means = [v.sum(0, dtype=torch.float64) / num_rows for v in vectors]  # (M_k,)
    # u = (v - mean) @ F[:-1] + shift: the centred part decides the scales, the shift restores u itself.
    shifts = [mean @ f[:-1] + constant * f[-1] for mean, f in zip(means, factors)]  # (D_k,)
    pivot_vectors = [(v[pivots].double() - mean) @ f[:-1] for v, mean, f in zip(vectors, means, factors)]
    out = RowGeometry(
        *(torch.empty(num_rows, dtype=torch.float64) for _ in range(5)),
        *(torch.empty(num_rows, pivots.numel(), dtype=torch.float64) for _ in range(2)),
    )
    centred = [torch.empty(ROW_CHUNK, v.shape[1], dtype=torch.float64) for v in vectors]
    rotated = [torch.empty(ROW_CHUNK, f.shape[1], dtype=torch.float64) for f in factors]
    for start in range(0, num_rows, ROW_CHUNK):
        rows = slice(start, min(start + ROW_CHUNK, num_rows))
        n = rows.stop - rows.start
        u = []
        for k, (v, mean, f, shift, pv) in enumerate(zip(vectors, means, factors, shifts, pivot_vectors)):
            torch.sub(v[rows], mean, out=centred[k][:n])
            hat = torch.matmul(centred[k][:n], f[:-1], out=rotated[k][:n])  # (chunk, D_k)
            (out.sq_i if k == 0 else out.sq_j)[rows] = _rowdot(hat, hat)
            torch.matmul(hat, pv.T, out=(out.cross_i if k == 0 else out.cross_j)[rows])
            u.append(hat.add_(shift))
        _plane(u[0], u[1], split, out.a[rows], out.b[rows], out.c[rows])
    return out


def _plane(u_i: torch.Tensor, u_j: torch.Tensor, split: int, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """Write a = |u_i|, b = u_j . u_i / a and c = |u_j - b u_i / a| for (n, D_i) and (n, D) rows, in place."""
    torch.linalg.vector_norm(u_i, dim=1, out=a)
    unit = u_i / torch.where(a > 0, a, 1)[:, None]  # (n, D_i); a zero vector has no direction: b = 0, c = |u_j|
    head = u_j[:, :split]  # (n, D_i) the columns u_i shares
    b.copy_(_rowdot(head, unit))
    residual = head - b[:, None] * unit
    c.copy_((_rowdot(residual, residual) + _rowdot(u_j[:, split:], u_j[:, split:])).sqrt())


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (n, d) tensors: (n,)."""
    return torch.einsum("nd,nd->n", x, y)
