"""Model pairs with known answers (DESIGN.md section 4), as arrays ready for compare_representations."""

from __future__ import annotations

import numpy as np

#: Model 2 of the KL counterexample gives class k the angle, unembedding and offsets of class PERMUTATION[k].
KL_COUNTEREXAMPLE_PERMUTATION = (5, 0, 2, 4, 6, 1, 3)


def kl_counterexample(
    rho: float, num_per_class: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two models whose KL divergence goes to 0 as rho grows while their embeddings stay unrelated.

    K = 7 classes, M = 2. Model 1: g(k) = rho (cos theta_k, sin theta_k) with theta_k = 2 pi k / 7; an input of
    class k sits at angle theta_k + U(-pi/64, pi/64) with length |0.01 N(0, 1)| + 2. Model 2 gives class k the
    angle, unembedding and angular offset of class pi(k) (pi = KL_COUNTEREXAMPLE_PERMUTATION), same lengths.
    Both models classify every input correctly with confidence growing in rho, so KL -> 0, but f_2 is a
    permutation of the angles of f_1, which no linear map undoes: d_LLV stays at about 1.317 and m_CCA_f near 0.

    Args:
        rho: length of the unembeddings (the inverse temperature).
        num_per_class: inputs per class (7 * num_per_class contexts in all).
        seed: seed of the angular offsets and lengths.

    Returns:
        f1 (n_contexts, 2), g1 (7, 2), f2 (n_contexts, 2), g2 (7, 2), float64.

    Example:
        >>> f1, g1, f2, g2 = kl_counterexample(10.0, num_per_class=10)
        >>> f1.shape, g1.shape
        ((70, 2), (7, 2))
    """
    num_classes = len(KL_COUNTEREXAMPLE_PERMUTATION)
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * np.arange(num_classes) / num_classes
    labels = np.repeat(np.arange(num_classes), num_per_class)  # (n_contexts,)
    offsets = rng.uniform(-np.pi / 64, np.pi / 64, labels.shape)
    lengths = np.abs(0.01 * rng.standard_normal(labels.shape)) + 2
    permutation = np.asarray(KL_COUNTEREXAMPLE_PERMUTATION)

    def on_circle(angle: np.ndarray, length: np.ndarray | float) -> np.ndarray:
        return np.stack([np.cos(angle), np.sin(angle)], axis=-1) * np.asarray(length)[..., None]

    g1 = on_circle(theta, rho)
    g2 = g1[permutation]
    f1 = on_circle(theta[labels] + offsets, lengths)
    f2 = on_circle(theta[permutation[labels]] + offsets, lengths)
    return f1, g1, f2, g2


def perturbation_pair(
    num_labels: int, hidden: int, num_contexts: int, scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random model of the family and a copy with every f and g perturbed by relative noise ``scale``.

    f ~ N(0, I), g ~ N(0, I); the copy adds scale * N(0, 1) to every entry. Small scales give pairs with small
    d_LLV, on which the bound d_fg <= 2 M d_LLV can be checked.

    Returns:
        f1 (num_contexts, hidden), g1 (num_labels, hidden), f2, g2, float64.
    """
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((num_contexts, hidden))
    g1 = rng.standard_normal((num_labels, hidden))
    f2 = f1 + scale * rng.standard_normal(f1.shape)
    g2 = g1 + scale * rng.standard_normal(g1.shape)
    return f1, g1, f2, g2
