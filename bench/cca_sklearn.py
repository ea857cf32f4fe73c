"""Benchmark: closed-form m_CCA (hf_repsim) against scikit-learn's iterative CCA on the same data.

Target: the closed form, including forming the covariances from the (N, M) data, is >= 20x faster than
``sklearn.cross_decomposition.CCA(n_components=M)`` (fit + transform + the mean of the per-component correlations)
at N = 20,000, M = 64, and the two mean canonical correlations differ by <= 1e-6.

Data: M latent pairs with population canonical correlations rho evenly spaced from 0.95 to 0.05, each side mixed
by its own random invertible matrix and shifted. scikit-learn's stopping rule compares the SQUARED change of the
weight vector with ``tol``, so its defaults (max_iter=500, tol=1e-6) stop while the weights still move by up to 1e-3
an iteration: the mean correlation is then off by about 1e-7 to 1e-6 (3.5e-7 at the default size, 1.6e-6 at
N = 5,000, M = 16). ``--sklearn`` takes several max_iter:tol settings, each timed and checked: the defaults first,
then a tightened one (max_iter=20000, tol=1e-15), which reaches 1e-13. A third value, the canonical correlations from QR factors and an SVD of the centred data in numpy (the
textbook route, no covariance), tells which of the two is off when they disagree.

    python bench/cca_sklearn.py [--contexts 20000] [--hidden 64] [--sklearn 500:1e-6 20000:1e-15]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from _threads import limit_threads
from sklearn.cross_decomposition import CCA
from sklearn.exceptions import ConvergenceWarning

from hf_repsim.measures import MeasureConfig, mean_canonical_correlation

SPEEDUP_TARGET = 20.0
AGREEMENT_TARGET = 1e-6


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=20_000, help="N")
    parser.add_argument("--hidden", type=int, default=64, help="M, also sklearn's n_components")
    parser.add_argument(
        "--sklearn",
        nargs="+",
        default=["500:1e-6", "20000:1e-15"],
        metavar="MAX_ITER:TOL",
        help="scikit-learn settings to time, each max_iter:tol",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of torch and of numpy's BLAS for both routes (default: the libraries' choice)",
    )
    return parser.parse_args(argv)


def make_data(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) X and Y with population canonical correlations linspace(0.95, 0.05, m), mixed and shifted."""
    rng = np.random.default_rng(seed)
    rho = np.linspace(0.95, 0.05, m)
    z1 = rng.standard_normal((n, m))
    z2 = rho * z1 + np.sqrt(1 - rho**2) * rng.standard_normal((n, m))
    x = z1 @ rng.standard_normal((m, m)) + rng.standard_normal(m)
    y = z2 @ rng.standard_normal((m, m)) + rng.standard_normal(m)
    return x, y


def closed_form(x: np.ndarray, y: np.ndarray) -> float:
    """hf_repsim: covariances of the data (float64, centred), then mean_canonical_correlation."""
    data = torch.from_numpy(np.concatenate([x, y], axis=1))  # (n, 2m)
    centred = data - data.mean(0)
    cov = centred.T @ centred / (data.shape[0] - 1)  # (2m, 2m)
    m = x.shape[1]
    return mean_canonical_correlation(cov[:m, :m], cov[m:, m:], cov[:m, m:], MeasureConfig().cca_rcond)


def sklearn_cca(x: np.ndarray, y: np.ndarray, max_iter: int, tol: float) -> tuple[float, int]:
    """scikit-learn: fit, transform, mean over components of corr(x_score_k, y_score_k); and the warnings count."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = CCA(n_components=x.shape[1], max_iter=max_iter, tol=tol).fit(x, y)
        x_scores, y_scores = model.transform(x, y)
    corr = [np.corrcoef(x_scores[:, k], y_scores[:, k])[0, 1] for k in range(x.shape[1])]
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(np.mean(np.abs(corr))), unconverged


def qr_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Canonical correlations as the singular values of Q_x^T Q_y (centred data, numpy): their mean."""
    q_x, _ = np.linalg.qr(x - x.mean(0))
    q_y, _ = np.linalg.qr(y - y.mean(0))
    return float(np.linalg.svd(q_x.T @ q_y, compute_uv=False).clip(0, 1).mean())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limit_threads(args.threads)
    settings = [(int(s.split(":")[0]), float(s.split(":")[1])) for s in args.sklearn]
    x, y = make_data(args.contexts, args.hidden, args.seed)
    closed_form(x[:100], y[:100])  # warm-up (first-call costs of torch's linear algebra)

    start = time.perf_counter()
    closed = closed_form(x, y)
    closed_seconds = time.perf_counter() - start
    reference = qr_reference(x, y)
    print(
        f"N={args.contexts} M={args.hidden} seed={args.seed} threads={torch.get_num_threads()} "
        f"load average={os.getloadavg()[0]:.2f}"
    )
    print(f"closed form (covariances + mean_canonical_correlation): {closed_seconds:8.4f} s   m_cca = {closed:.12f}")
    print(
        f"QR + SVD reference (numpy):                             m_cca = {reference:.12f}  "
        f"(closed form - reference = {closed - reference:.1e})"
    )
    for max_iter, tol in settings:
        start = time.perf_counter()
        value, unconverged = sklearn_cca(x, y, max_iter, tol)
        seconds = time.perf_counter() - start
        diff = abs(value - closed)
        print(
            f"sklearn CCA max_iter={max_iter} tol={tol:g}: {seconds:8.2f} s   m_cca = {value:.12f}  "
            f"components not converged: {unconverged}/{args.hidden}"
        )
        print(
            f"  ratio sklearn / closed form: {seconds / closed_seconds:8.1f}x (target >= {SPEEDUP_TARGET:g}x)   "
            f"|sklearn - closed form| = {diff:.1e} (target <= {AGREEMENT_TARGET:g}), "
            f"|sklearn - reference| = {abs(value - reference):.1e}"
        )


if __name__ == "__main__":
    main()
