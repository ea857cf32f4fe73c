"""The stable functional entry point: compare two models given as arrays."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from hf_repsim.heads import Head
from hf_repsim.measures import MeasureConfig, check_label_count, compute_measures
from hf_repsim.stats import RepSimState

#: Logit entries per model per update when the arrays are fed to the statistics: bounds the (batch, n_labels)
#: float64 temporaries (128 MB a model) whatever the vocabulary.
_BATCH_ELEMENTS = 1 << 24


def as_float64(array: Any, name: str, ndim: int) -> torch.Tensor:
    """A numpy array or torch tensor of real numbers as a float64 CPU tensor, with a clear error otherwise.

    Any float or integer dtype is accepted (numpy's of either byte order, strided or reversed views included);
    booleans, complex numbers and masked arrays are refused.
    """
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(
            f"Expected {name} as a plain array, got a numpy masked array; fill or drop the masked entries first."
        )
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "fiu":
            raise TypeError(f"Expected {name} with a real (float or integer) dtype, got {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    elif isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        if tensor.dtype == torch.bool or tensor.is_complex():
            raise TypeError(f"Expected {name} with a real (float or integer) dtype, got {tensor.dtype}.")
    else:
        raise TypeError(f"Expected {name} as a numpy array or torch tensor, got {type(array).__name__}.")
    if tensor.ndim != ndim:
        raise ValueError(f"Expected {name} with {ndim} dimensions, got shape {tuple(tensor.shape)}.")
    tensor = tensor.to(torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"Expected finite values in {name}, got {int((~torch.isfinite(tensor)).sum())} NaN or infinite entries."
        )
    return tensor


def compare_representations(
    f1: Any,
    g1: Any,
    f2: Any,
    g2: Any,
    *,
    bias1: Any = None,
    bias2: Any = None,
    lam: float = 1e-5,
    num_samples: int = 200,
    seed: int = 0,
    pivot_label: int | None = None,
    left_out_label: int | None = None,
    input_set: list[int] | None = None,
) -> dict[str, Any]:
    """Every distance and similarity between two models of the family p(y|x) = softmax_y(f(x)^T g(y) + b(y)).

    The arrays go through the same streaming statistics as a language-model comparison, with every context kept
    for the input side, so the values are exact. Contexts are numbered 0..n_contexts-1 (``input_set`` uses them).

    Args:
        f1: (n_contexts, hidden_1) embeddings of model 1; f2: (n_contexts, hidden_2) of model 2, same contexts.
        g1: (n_labels, hidden_1) unembeddings of model 1; g2: (n_labels, hidden_2) of model 2.
        bias1, bias2: optional (n_labels,) label biases.
        lam: weight of the scale terms t3, t4 in d_LLV.
        num_samples: random input sets tried for the input side of d_LLV.
        seed: seed of every random choice.
        pivot_label, left_out_label, input_set: fix the label pivot, the left-out label and the input set
            (context indices, pivot input first) instead of searching for them.

    Returns:
        A dict with the keys of :data:`hf_repsim.measures.MEASURE_KEYS` (floats, ints, lists; None where a
        measure is undefined, e.g. the bound and d_rep_sq when the hidden sizes differ).

        kl, kl_reverse, js, d_logit_sq, d_llv (t1..t4), d_svd_f, d_svd_g, d_fg, m_cca_f and m_cca_g are
        invariant to f -> A f, g -> A^{-T} g + c of either model (A invertible), as are the choices of pivot,
        left-out label and input set; d_rep_sq to that transform of the second model only (it is measured in
        the first model's coordinates). cka and procrustes are not: they forgive rotations and isotropic scaling.
        See :mod:`hf_repsim.measures` for each measure and its limits.

    Warns:
        UserWarning: when the diversity condition fails (rank-deficient representations): the measures then
        describe the span that is there, and identifiability does not hold.

    Raises:
        ValueError: mismatched shapes, too few contexts or labels, non-finite values, a label out of range, a
            model whose f or g does not vary.
        TypeError: arrays that are not real-valued numpy arrays or torch tensors, settings that are not integers
            where integers are expected (seed, labels, input_set).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> f, g = rng.normal(size=(200, 2)), rng.normal(size=(6, 2))
        >>> a = np.array([[2.0, 1.0], [0.0, 1.0]])
        >>> out = compare_representations(f, g, f @ a.T, g @ np.linalg.inv(a))
        >>> out["kl"] < 1e-12 and out["d_svd_f"] < 1e-10
        True
    """
    f1, f2 = as_float64(f1, "f1", 2), as_float64(f2, "f2", 2)
    g1, g2 = as_float64(g1, "g1", 2), as_float64(g2, "g2", 2)
    heads = [_head(g1, bias1, f1, "1"), _head(g2, bias2, f2, "2")]
    if f1.shape[0] != f2.shape[0]:
        raise ValueError(
            f"Expected f1 and f2 for the same contexts, got {f1.shape[0]} and {f2.shape[0]} rows; pass one row per "
            f"context to both."
        )
    if g1.shape[0] != g2.shape[0]:
        raise ValueError(f"Expected g1 and g2 over the same labels, got {g1.shape[0]} and {g2.shape[0]} rows.")
    config = MeasureConfig(
        lam=lam,
        num_samples=num_samples,
        seed=seed,
        pivot_label=pivot_label,
        left_out_label=left_out_label,
        input_set=input_set,
    )
    check_label_count(g1.shape[0], min(f1.shape[1], f2.shape[1]), config)
    n, num_labels = f1.shape[0], g1.shape[0]
    state = RepSimState([f1.shape[1], f2.shape[1]], num_labels=num_labels, reservoir_size=max(n, 1), seed=config.seed)
    batch = max(1, _BATCH_ELEMENTS // num_labels)
    for start in range(0, n, batch):
        rows = slice(start, start + batch)
        state.update([f1[rows], f2[rows]], [heads[0].logits(f1[rows]), heads[1].logits(f2[rows])])
    measures = compute_measures(state, heads, (0, 1), config)
    note = measures.details["diversity"]["note"]
    if note is not None:
        warnings.warn(f"compare_representations: {note}.", stacklevel=2)
    return measures.as_dict()


def _head(g: torch.Tensor, bias: Any, f: torch.Tensor, which: str) -> Head:
    if g.shape[1] != f.shape[1]:
        raise ValueError(
            f"Expected g{which} with the hidden size of f{which} ({f.shape[1]}), got shape {tuple(g.shape)}."
        )
    return Head(g, None if bias is None else as_float64(bias, f"bias{which}", 1))
