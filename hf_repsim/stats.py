"""Sufficient statistics of k models evaluated on the same contexts.

Every measure of hf_repsim is a function of low-order moments (DESIGN.md section 3). One pass over the
data keeps, in float64:

- the mean and the centred co-moment matrix of phi(x) = [f_1(x); logZ_1(x); ...; f_k(x); logZ_k(x)],
  the vectors of all k models side by side, so that every pair's cross-moments are there;
- per-pair sums of per-context scalars: KL in both directions, Jensen-Shannon and the squared
  distance of centred logits;
- per-model sums of the predicted probabilities of every label (they pick candidate pivot labels);
- a uniform reservoir of contexts (their phi vectors), chosen by a hashed priority of each
  context's id, for the measures that need individual inputs.

Memory is O(D^2 + k V + R D) with D = sum_k (M_k + 1), V labels and R reservoir rows: independent
of the number of contexts. Two states merge by addition (a centred, Chan-style update of the
co-moments), and the reservoir is a bottom-R sample by priority, so the merged state does not
depend on how the contexts were split into batches or processes.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: (row x label) elements per chunk of the per-context pass over the labels: each buffer then fits in the cache.
_CHUNK_ELEMENTS = 1 << 19

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def context_priority(context_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform pseudo-random priority in [0, 1) per context id, the same in every process.

    splitmix64 of (seed, id): a pure function of its inputs, so the reservoir holds the same contexts
    whatever the batching, the order or the number of processes.

    Args:
        context_ids: (batch,) integer ids of the contexts.
        seed: the reservoir's seed.

    Returns:
        (batch,) float64 priorities.
    """
    with np.errstate(over="ignore"):
        z = context_ids.cpu().numpy().astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(1 << 53))


@dataclass
class PairScalars:
    """Means over contexts of the per-context distances between models i and j."""

    kl: float
    kl_reverse: float
    js: float
    d_logit_sq: float


class _LabelPass:
    """The per-context work over the labels for one batch, chunk by chunk, in buffers allocated once.

    The work is bound by passes over (rows, n_labels) arrays, so each chunk is sized to stay in the cache
    (``_CHUNK_ELEMENTS``), every elementwise step writes into a reused buffer (a fresh allocation of that size costs
    as much as the arithmetic), and the per-context results go to (batch,) rows that are combined in float64 once
    per batch, not once per chunk.

    Per model k: log_k = z_k - logsumexp(z_k), p_k = exp(log_k), sum_y p_k log_k, and the column sums of p_k.
    Per pair (i, j), with d = log_i - log_j formed first so that close models keep their digits:
    KL(p_i || p_j) = sum p_i d, KL(p_j || p_i) = -sum p_j d, JS = (sum p_i log_i + sum p_j log_j) / 2 - sum m log m
    with m = (p_i + p_j) / 2 (0 log 0 = 0: a label neither model can predict adds nothing), and
    ||c(d)||^2 = sum (d - mean d)^2 in two passes (the mean of d can be far larger than its spread, e.g. when one
    model is much more peaked, and sum d^2 - (sum d)^2 / V would then cancel).
    Sums over the labels run in the dtype of the logits (float32 for float32 logits: absolute error about 1e-7),
    sums over contexts in float64.

    Args:
        num_models: k.
        pairs: the (i, j) pairs to compare.
        batch: contexts in the batch.
        rows: contexts per chunk.
        num_labels: V.
        dtype: dtype of the arithmetic over the labels.
    """

    def __init__(
        self, num_models: int, pairs: Sequence[tuple[int, int]], batch: int, rows: int, num_labels: int, dtype: torch.dtype
    ):
        self.pairs = pairs
        shape = (rows, num_labels)
        self.logprobs = [torch.empty(shape, dtype=dtype) for _ in range(num_models)]
        self.probs = [torch.empty(shape, dtype=dtype) for _ in range(num_models)]
        self.diff, self.work, self.mixture = (torch.empty(shape, dtype=dtype) for _ in range(3))
        self.ones = torch.ones(1, rows, dtype=dtype)
        self.log_norm = torch.empty(num_models, batch, dtype=dtype)
        self.neg_entropy = torch.empty(num_models, batch, dtype=dtype)
        # Per pair and context: sum p_i d, sum p_j d, sum m log m, sum (d - mean d)^2.
        self.pair_terms = torch.empty(len(pairs), 4, batch, dtype=dtype)
        self.prob_sum = torch.zeros(num_models, num_labels, dtype=torch.float64)

    def chunk(self, start: int, logits: Sequence[torch.Tensor]) -> None:
        """Contexts start, start + 1, ...: the logits of each model, (rows, n_labels) in the buffers' dtype."""
        rows = logits[0].shape[0]
        out = slice(start, start + rows)
        for k, z in enumerate(logits):
            logprobs, probs = self.logprobs[k][:rows], self.probs[k][:rows]
            torch.logsumexp(z, dim=-1, out=self.log_norm[k, out])
            torch.sub(z, self.log_norm[k, out, None], out=logprobs)
            torch.exp(logprobs, out=probs)
            self._rowdot(probs, logprobs, out=self.neg_entropy[k, out])
            # Column sums as a product with ones: one pass; a chunk's few rows add up in float32 without loss.
            self.prob_sum[k] += (self.ones[:, :rows] @ probs).reshape(-1)
        diff, mixture = self.diff[:rows], self.mixture[:rows]
        for p, (i, j) in enumerate(self.pairs):
            terms = self.pair_terms[p, :, out]
            torch.sub(self.logprobs[i][:rows], self.logprobs[j][:rows], out=diff)
            probs_i, probs_j = self.probs[i][:rows], self.probs[j][:rows]
            self._rowdot(probs_i, diff, out=terms[0])
            self._rowdot(probs_j, diff, out=terms[1])
            torch.add(probs_i, probs_j, out=mixture).mul_(0.5)
            # log of the mixture floored at the smallest normal number: m log m -> 0 where m underflows to 0.
            log_mixture = torch.clamp(mixture, min=torch.finfo(mixture.dtype).tiny, out=self.work[:rows]).log_()
            self._rowdot(mixture, log_mixture, out=terms[2])
            mean = torch.sum(diff, dim=-1, out=terms[3]).div_(diff.shape[-1])
            centred = diff.sub_(mean[:, None])  # d is not needed after this
            self._rowdot(centred, centred, out=terms[3])

    def results(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, batch) float64 log-normalisers, (k, n_labels) float64 column sums of the probabilities, and
        (n_pairs, 4) float64 sums over the batch of KL, reverse KL, JS and the squared centred-logit distance."""
        neg_entropy = self.neg_entropy.double()
        sums = torch.zeros(len(self.pairs), 4, dtype=torch.float64)
        for p, (i, j) in enumerate(self.pairs):
            kl_terms, reverse_terms, mix_terms, logit_sq = self.pair_terms[p].double()
            js = 0.5 * (neg_entropy[i] + neg_entropy[j]) - mix_terms
            sums[p] = torch.stack([kl_terms.sum(), -reverse_terms.sum(), js.sum(), logit_sq.sum()])
        return self.log_norm.double(), self.prob_sum, sums

    def _rowdot(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Row-wise dot products of two (rows, n) tensors into ``out``, (rows,).

        A product then a sum: the sum's cascaded accumulation is far more accurate in float32 than a batched matmul's
        running sum over a vocabulary, at the same speed (both are bound by memory).
        """
        return torch.sum(torch.mul(a, b, out=self.work[: a.shape[0]]), dim=-1, out=out)


class RepSimState:
    """Mergeable float64 statistics of k models of the family on a common stream of contexts.

    Args:
        hidden_sizes: M_k, the width of f for each of the k models.
        num_labels: V, the number of labels (vocabulary rows in use), the same for every model.
        reservoir_size: R, how many contexts to keep for the input side of the measures. With at least
            as many slots as contexts, every context is kept and the measures are exact.
        seed: seed of the reservoir's priorities.

    Example:
        >>> import torch
        >>> state = RepSimState([3, 3], num_labels=5)
        >>> f = torch.randn(10, 3, dtype=torch.float64); g = torch.randn(5, 3, dtype=torch.float64)
        >>> state.update([f, 2 * f], [f @ g.T, f @ g.T])
        >>> state.count
        10
    """

    def __init__(self, hidden_sizes: Sequence[int], num_labels: int, reservoir_size: int = 4096, seed: int = 0):
        if len(hidden_sizes) < 2 or any(int(m) < 1 for m in hidden_sizes):
            raise ValueError(f"Expected at least two positive hidden sizes, got {list(hidden_sizes)}.")
        if num_labels < 2 or reservoir_size < 1:
            raise ValueError(
                f"Expected num_labels >= 2 and reservoir_size >= 1, got {num_labels} and {reservoir_size}."
            )
        self.hidden_sizes = [int(m) for m in hidden_sizes]
        self.num_labels = int(num_labels)
        self.reservoir_size = int(reservoir_size)
        self.seed = int(seed)
        self.offsets = np.cumsum([0] + [m + 1 for m in self.hidden_sizes]).tolist()
        dim = self.offsets[-1]
        k = len(self.hidden_sizes)
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.comoment = torch.zeros(dim, dim, dtype=torch.float64)
        self.prob_sum = torch.zeros(k, self.num_labels, dtype=torch.float64)
        self.pairs = list(itertools.combinations(range(k), 2))
        self.pair_sums = torch.zeros(len(self.pairs), 4, dtype=torch.float64)
        self.reservoir_ids = torch.zeros(0, dtype=torch.int64)
        self.reservoir_priority = torch.zeros(0, dtype=torch.float64)
        self.reservoir_phi = torch.zeros(0, dim, dtype=torch.float64)

    @property
    def num_models(self) -> int:
        return len(self.hidden_sizes)

    def block(self, model: int) -> tuple[slice, int]:
        """Where model ``model`` sits in phi: the slice of its f and the index of its logZ."""
        start = self.offsets[model]
        return slice(start, start + self.hidden_sizes[model]), start + self.hidden_sizes[model]

    # ------------------------------------------------------------------ update
    def update(
        self,
        features: Sequence[torch.Tensor],
        logits: Sequence[torch.Tensor],
        context_ids: torch.Tensor | None = None,
    ) -> None:
        """Add a batch of contexts, seen by all k models.

        Args:
            features: k tensors (batch, hidden_k): f_k(x) for each context.
            logits: k tensors (batch, n_labels): the in-family logits f_k(x)^T g_k(y) + b_k(y), any float dtype.
                Log-softmax and the per-context distances run in float32, or float64 for float64 logits; every
                sum is accumulated in float64. In float32 each context's KL and JS carry an absolute error of
                about 1e-7 (a rounding of the log-probabilities): for models closer than that, pass float64 logits.
            context_ids: (batch,) integer ids, unique across everything merged into this state. Defaults to
                the running count (pass explicit ids when states built separately are merged).

        Raises:
            ValueError: wrong number of models, mismatched shapes, or non-finite values.
        """
        batch = self._check_batch(features, logits)
        if batch == 0:
            return
        if context_ids is None:
            context_ids = torch.arange(self.count, self.count + batch, dtype=torch.int64)
        context_ids = torch.as_tensor(context_ids, dtype=torch.int64).reshape(-1).cpu()
        if context_ids.numel() != batch:
            raise ValueError(f"Expected {batch} context ids, one per context, got {context_ids.numel()}.")
        self._check_new_ids(context_ids)

        phi = torch.empty(batch, self.offsets[-1], dtype=torch.float64)  # (batch, D)
        for k, f in enumerate(features):
            phi[:, self.block(k)[0]] = f.detach().to(device="cpu", dtype=torch.float64)
        dtype = functools.reduce(torch.promote_types, [z.dtype for z in logits], torch.float32)
        rows = max(1, min(batch, _CHUNK_ELEMENTS // self.num_labels))
        label_pass = _LabelPass(self.num_models, self.pairs, batch, rows, self.num_labels, dtype)
        for start in range(0, batch, rows):
            label_pass.chunk(start, [z[start : start + rows].detach().to("cpu", dtype) for z in logits])
        log_norms, prob_sum, pair_sums = label_pass.results()
        phi[:, [self.block(k)[1] for k in range(self.num_models)]] = log_norms.T
        self.prob_sum += prob_sum
        self.pair_sums += pair_sums

        self._add_moments(batch, phi.mean(0), _centred_comoment(phi))
        self._add_to_reservoir(context_ids, context_priority(context_ids, self.seed), phi)

    def _check_batch(self, features: Sequence[torch.Tensor], logits: Sequence[torch.Tensor]) -> int:
        k = self.num_models
        if len(features) != k or len(logits) != k:
            raise ValueError(
                f"Expected features and logits for each of the {k} models, got {len(features)} feature tensors "
                f"and {len(logits)} logit tensors."
            )
        batch = features[0].shape[0]
        for m, (f, z, hidden) in enumerate(zip(features, logits, self.hidden_sizes)):
            if tuple(f.shape) != (batch, hidden):
                raise ValueError(
                    f"Expected features of model {m} with shape (batch={batch}, hidden={hidden}), "
                    f"got {tuple(f.shape)}; every model must see the same contexts."
                )
            if tuple(z.shape) != (batch, self.num_labels):
                raise ValueError(
                    f"Expected logits of model {m} with shape (batch={batch}, n_labels={self.num_labels}), "
                    f"got {tuple(z.shape)}."
                )
            for name, tensor in (("features", f), ("logits", z)):
                # One reduction pass: NaN and infinities propagate into the extremes.
                if tensor.numel() and not all(math.isfinite(v) for v in torch.aminmax(tensor.detach())):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ValueError(
                        f"Expected finite {name} of model {m}, got {bad} NaN or infinite values in this batch; "
                        f"check the model's weights and dtype (float16 logits can overflow)."
                    )
        return batch

    def _add_moments(self, count: int, mean: torch.Tensor, comoment: torch.Tensor) -> None:
        """Chan et al.'s pairwise merge of (count, mean, centred co-moment)."""
        total = self.count + count
        delta = mean - self.mean  # (D,)
        self.comoment += comoment + torch.outer(delta, delta) * (self.count * count / total)
        self.mean += delta * (count / total)
        self.count = total

    def _check_new_ids(self, ids: torch.Tensor) -> None:
        """Refuse ids repeated among themselves or already in the reservoir, before anything is changed.

        Ids whose contexts have left the reservoir cannot be checked: unique ids are the caller's promise.
        """
        if ids.unique().numel() != ids.numel() or bool(torch.isin(ids, self.reservoir_ids).any()):
            raise ValueError(
                "Expected unique context ids across everything merged into one state, got repeated ids (this state "
                "is unchanged); pass explicit, globally unique context_ids to update() when states are built "
                "separately."
            )

    def _add_to_reservoir(self, ids: torch.Tensor, priority: torch.Tensor, phi: torch.Tensor) -> None:
        ids = torch.cat([self.reservoir_ids, ids])
        priority = torch.cat([self.reservoir_priority, priority])
        phi = torch.cat([self.reservoir_phi, phi])
        # Bottom-R by priority, ties broken by id; the kept rows are stored sorted by id.
        order = np.lexsort((ids.numpy(), priority.numpy()))[: self.reservoir_size]
        order = order[np.argsort(ids.numpy()[order], kind="stable")]
        keep = torch.from_numpy(order)
        self.reservoir_ids, self.reservoir_priority, self.reservoir_phi = ids[keep], priority[keep], phi[keep]

    # ------------------------------------------------------------------ merge
    def merge(self, other: RepSimState) -> RepSimState:
        """Add another state's contexts to this one, in place. Returns self.

        Raises:
            ValueError: the states were built for different models, labels, reservoir or seed, or share context
                ids; this state is then unchanged.
        """
        mine, theirs = self.config(), other.config()
        if mine != theirs:
            raise ValueError(f"Expected a state with the same configuration {mine}, got {theirs}.")
        if other.count == 0:
            return self
        if other is self:
            raise ValueError("Expected another state to merge, got this state itself (its contexts twice).")
        self._check_new_ids(other.reservoir_ids)
        self.prob_sum += other.prob_sum
        self.pair_sums += other.pair_sums
        self._add_moments(other.count, other.mean, other.comoment)
        self._add_to_reservoir(other.reservoir_ids, other.reservoir_priority, other.reservoir_phi)
        return self

    # ------------------------------------------------------------------ read out
    def covariance(self) -> torch.Tensor:
        """(D, D) unbiased (ddof = 1) covariance of phi."""
        if self.count < 2:
            raise ValueError(f"Expected at least 2 contexts for a covariance, got {self.count}.")
        return self.comoment / (self.count - 1)

    def pair_means(self, i: int, j: int) -> PairScalars:
        """Mean KL(p_i || p_j), KL(p_j || p_i), JS and d_logit^2 over all contexts seen."""
        if self.count == 0:
            raise ValueError("Expected at least one context in the state, got none.")
        index = self.pairs.index((min(i, j), max(i, j)))
        kl, kl_rev, js, logit_sq = (self.pair_sums[index] / self.count).tolist()
        # The divergences are >= 0; a float32 sum over a vocabulary can land a rounding step below it (~1e-9).
        kl, kl_rev, js = max(kl, 0.0), max(kl_rev, 0.0), max(js, 0.0)
        if i > j:
            kl, kl_rev = kl_rev, kl
        return PairScalars(kl=kl, kl_reverse=kl_rev, js=js, d_logit_sq=logit_sq)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """What two states must share to be merged."""
        return {
            "hidden_sizes": self.hidden_sizes,
            "num_labels": self.num_labels,
            "reservoir_size": self.reservoir_size,
            "seed": self.seed,
        }

    def state_dict(self) -> tuple[dict[str, torch.Tensor], str]:
        """Tensors (for safetensors) and a JSON string with the configuration and count."""
        tensors = {
            "mean": self.mean,
            "comoment": self.comoment,
            "prob_sum": self.prob_sum,
            "pair_sums": self.pair_sums,
            "reservoir_ids": self.reservoir_ids,
            "reservoir_priority": self.reservoir_priority,
            "reservoir_phi": self.reservoir_phi,
        }
        return {k: v.contiguous() for k, v in tensors.items()}, json.dumps({**self.config(), "count": self.count})

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], meta: str) -> RepSimState:
        """Rebuild a state written by :meth:`state_dict`."""
        info = json.loads(meta)
        state = cls(info["hidden_sizes"], info["num_labels"], info["reservoir_size"], info["seed"])
        state.count = int(info["count"])
        for name in ("mean", "comoment", "prob_sum", "pair_sums", "reservoir_ids", "reservoir_priority"):
            setattr(state, name, tensors[name].clone())
        state.reservoir_phi = tensors["reservoir_phi"].clone()
        return state


def _centred_comoment(x: torch.Tensor) -> torch.Tensor:
    """sum_n (x_n - mean)(x_n - mean)^T for (n, D) float64 rows: (D, D)."""
    centred = x - x.mean(0)
    return centred.T @ centred
