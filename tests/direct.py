"""A test-only reference: every measure straight from the definitions, on the full log-probability matrix.

Deliberately naive (it forms the (n_contexts, n_labels) matrices and loops over labels and inputs), so that it
shares no code and no algebra with the streaming statistics.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp


def log_probs(f: np.ndarray, g: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    logits = f @ g.T + (0 if bias is None else bias)
    return logits - logsumexp(logits, axis=1, keepdims=True)


def msvd(u1: np.ndarray, u2: np.ndarray) -> float:
    z1 = (u1 - u1.mean(0)) / u1.std(0, ddof=1)
    z2 = (u2 - u2.mean(0)) / u2.std(0, ddof=1)
    return float(np.linalg.svd(z1.T @ z2 / (len(u1) - 1), compute_uv=False).sum() / u1.shape[1])


def direct_measures(l1, l2, pivot, left_out, input_set, label_sets) -> dict:
    """Label side, input side and d_SVD from log-probabilities (n_contexts, n_labels) only."""
    sd = lambda v: np.std(v, ddof=1)  # noqa: E731
    labels = [y for y in range(l1.shape[1]) if y not in (pivot, left_out)]
    r, s = [], []
    for y in labels:
        s1, s2 = sd(l1[:, y] - l1[:, pivot]), sd(l2[:, y] - l2[:, pivot])
        r.append(max(sd(l1[:, y] / s1 - l2[:, y] / s2), sd(l1[:, pivot] / s1 - l2[:, pivot] / s2)))
        s.append(abs(s1 - s2))
    x0, rest = input_set[0], input_set[1:]
    r_in, s_in = [], []
    for x in rest:
        s1, s2 = sd(l1[x] - l1[x0]), sd(l2[x] - l2[x0])
        r_in.append(max(sd(l1[x] / s1 - l2[x] / s2), sd(l1[x0] / s1 - l2[x0] / s2)))
        s_in.append(abs(s1 - s2))
    d_svd_f = max(
        1 - msvd(l1[:, ls] - l1[:, [pivot]], l2[:, ls] - l2[:, [pivot]]) for ls in label_sets
    )
    d_svd_g = 1 - msvd((l1[rest] - l1[x0]).T, (l2[rest] - l2[x0]).T)
    p1, p2 = np.exp(l1), np.exp(l2)
    mix = np.log(0.5 * (p1 + p2))
    diff = l1 - l2
    return {
        "t1": max(r), "t3": max(s), "t2": max(r_in), "t4": max(s_in), "d_svd_f": d_svd_f, "d_svd_g": d_svd_g,
        "kl": float((p1 * diff).sum(1).mean()), "kl_reverse": float((-p2 * diff).sum(1).mean()),
        "js": float((0.5 * (p1 * (l1 - mix)).sum(1) + 0.5 * (p2 * (l2 - mix)).sum(1)).mean()),
        "d_logit_sq": float(((diff - diff.mean(1, keepdims=True)) ** 2).sum(1).mean()),
    }


def direct_representation_measures(f1, g1, f2, g2, pivot_sets) -> dict:
    """m_CCA, d_rep^2, CKA and Procrustes from the full (n_contexts, M) and (n_labels, M) matrices.

    d_rep^2 is averaged over the given (pivot, label set) pairs.
    """

    def mean_cca(x: np.ndarray, y: np.ndarray) -> float:
        qx, qy = np.linalg.qr(x - x.mean(0))[0], np.linalg.qr(y - y.mean(0))[0]
        return float(np.linalg.svd(qx.T @ qy, compute_uv=False).sum() / min(x.shape[1], y.shape[1]))

    def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
        n = len(k)
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
        ones = np.ones(n)
        total = np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
        return (total - 2 / (n - 2) * ones @ k @ l @ ones) / (n * (n - 3))

    x, y = f1 - f1.mean(0), f2 - f2.mean(0)
    gram_x, gram_y = x @ x.T, y @ y.T  # (n_contexts, n_contexts)
    cka = unbiased_hsic(gram_x, gram_y) / np.sqrt(unbiased_hsic(gram_x, gram_x) * unbiased_hsic(gram_y, gram_y))
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    residuals = []
    for pivot, labels in pivot_sets:
        align = np.linalg.solve(g1[labels] - g1[pivot], g2[labels] - g2[pivot])
        residuals.append(np.mean(np.sum((f1 - f2 @ align.T) ** 2, axis=1)))
    return {
        "m_cca_f": mean_cca(f1, f2), "m_cca_g": mean_cca(g1, g2), "d_rep_sq": float(np.mean(residuals)),
        "cka": float(cka), "procrustes": float(2 - 2 * np.linalg.svd(x.T @ y, compute_uv=False).sum()),
    }


def all_label_sets(num_labels: int, m: int, exclude: tuple[int, ...]) -> list[list[int]]:
    pool = [y for y in range(num_labels) if y not in exclude]
    return [list(c) for c in itertools.combinations(pool, m)]
