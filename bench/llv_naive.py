"""Benchmark: d_LLV from the streaming statistics against the definition computed directly on log-probabilities.

Target: the statistics route is >= 50x faster at K = 1,000 labels, M = 16, N = 5,000 contexts, and agrees with the
direct computation: t1..t4 and d_llv to a relative difference <= 1e-9, the same pivot and left-out labels.

The model pair is ``hf_repsim.constructions.perturbation_pair`` (relative noise ``--scale``). Both routes use the
same input set (a seeded choice of M + 1 contexts, pivot input first), so the input side is compared term by term.

- Statistics route: RepSimState over all contexts (every context kept, as ``compare_representations`` does), then
  ``compute_measures`` with ``MeasureConfig(num_pivots=K, input_set=...)``: every label is a candidate pivot. The
  time includes the logits, the statistics update and every measure (not only d_LLV).
- Direct route (DESIGN.md section 2, written out here): the full (N, K) log-probability matrices; for each pivot
  y0 (a Python loop) s_k, R and P for all labels with numpy ``std(ddof=1)`` over the N inputs, then t1 for ALL K
  left-out labels of that pivot (the max of max(R, P) over the labels other than y0 and lo), so all K^2 (pivot,
  left-out) pairs are evaluated; the pair with the smallest t1 wins; t3 for that pair; t2, t4 on the input set
  with ``std(ddof=1)`` over the K labels. Degenerate labels (s_k ~ 0) are not handled: a random pair has none.

    python bench/llv_naive.py [--labels 1000] [--hidden 16] [--contexts 5000] [--scale 0.1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from _threads import limit_threads

from hf_repsim.constructions import perturbation_pair
from hf_repsim.heads import Head
from hf_repsim.measures import MeasureConfig, compute_measures
from hf_repsim.stats import RepSimState

SPEEDUP_TARGET = 50.0
AGREEMENT_TARGET = 1e-9
#: Contexts per statistics update, as compare_representations feeds them.
BATCH = 4096


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1000, help="K")
    parser.add_argument("--hidden", type=int, default=16, help="M")
    parser.add_argument("--contexts", type=int, default=5000, help="N")
    parser.add_argument("--scale", type=float, default=0.1, help="relative perturbation of the second model")
    parser.add_argument("--lam", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of torch and of numpy's BLAS for both routes (default: the libraries' choice)",
    )
    return parser.parse_args(argv)


def statistics_route(f1, g1, f2, g2, input_set: list[int], lam: float, seed: int) -> dict:
    """The library: one pass of statistics, then compute_measures with every label a candidate pivot."""
    f1, g1, f2, g2 = (torch.from_numpy(a) for a in (f1, g1, f2, g2))
    n, k = f1.shape[0], g1.shape[0]
    heads = [Head(g1), Head(g2)]
    state = RepSimState([f1.shape[1], f2.shape[1]], num_labels=k, reservoir_size=n, seed=seed)
    for start in range(0, n, BATCH):
        rows = slice(start, start + BATCH)
        state.update([f1[rows], f2[rows]], [heads[0].logits(f1[rows]), heads[1].logits(f2[rows])])
    config = MeasureConfig(lam=lam, seed=seed, num_pivots=k, input_set=input_set)
    measures = compute_measures(state, heads, (0, 1), config)
    return {**measures.values, "degenerate": measures.details["degenerate_labels"]}


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n_contexts, n_labels) float64 logits."""
    top = z.max(axis=1, keepdims=True)
    return z - (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))


def direct_route(f1, g1, f2, g2, input_set: list[int], lam: float) -> dict:
    """The definition of d_LLV on the full log-probability matrices, every (pivot, left-out) pair evaluated."""
    l1, l2 = log_softmax(f1 @ g1.T), log_softmax(f2 @ g2.T)  # (N, K) each
    k = l1.shape[1]
    labels = np.arange(k)
    best = (np.inf, -1, -1, np.nan)  # (t1, pivot, left-out, t3)
    for y0 in range(k):
        with np.errstate(divide="ignore", invalid="ignore"):
            s1 = (l1 - l1[:, [y0]]).std(axis=0, ddof=1)  # (K,), 0 at y0
            s2 = (l2 - l2[:, [y0]]).std(axis=0, ddof=1)
            r = (l1 / s1 - l2 / s2).std(axis=0, ddof=1)  # (K,)
            p = (l1[:, [y0]] / s1 - l2[:, [y0]] / s2).std(axis=0, ddof=1)  # (K,)
        terms = np.maximum(r, p)
        terms[y0] = -np.inf  # the pivot is never a term

        # t1 for every left-out label lo != y0: the largest term, or the second largest when lo holds the largest.
        first, second = np.argsort(terms)[::-1][:2]
        t1 = np.full(k, terms[first])
        t1[first] = terms[second]
        t1[y0] = np.inf  # the left-out label is not the pivot
        lo = int(np.argmin(t1))
        if t1[lo] < best[0]:
            keep = (labels != y0) & (labels != lo)
            best = (float(t1[lo]), y0, lo, float(np.abs(s1 - s2)[keep].max()))
    t1, pivot, left_out, t3 = best

    # Input side on the given set: sd over labels, pivot input first.
    a1, a2 = l1[input_set], l2[input_set]  # (M + 1, K)
    sigma1 = (a1[1:] - a1[0]).std(axis=1, ddof=1)  # (M,)
    sigma2 = (a2[1:] - a2[0]).std(axis=1, ddof=1)
    r_in = (a1[1:] / sigma1[:, None] - a2[1:] / sigma2[:, None]).std(axis=1, ddof=1)
    p_in = (a1[0] / sigma1[:, None] - a2[0] / sigma2[:, None]).std(axis=1, ddof=1)
    t2, t4 = float(np.maximum(r_in, p_in).max()), float(np.abs(sigma1 - sigma2).max())
    d_llv = max(t1, t2, lam * t3, lam * t4)
    return {"d_llv": d_llv, "t1": t1, "t2": t2, "t3": t3, "t4": t4, "pivot_label": pivot, "left_out_label": left_out}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limit_threads(args.threads)
    f1, g1, f2, g2 = perturbation_pair(args.labels, args.hidden, args.contexts, args.scale, args.seed)
    rng = np.random.default_rng(args.seed)
    input_set = rng.choice(args.contexts, args.hidden + 1, replace=False).tolist()

    start = time.perf_counter()
    fast = statistics_route(f1, g1, f2, g2, input_set, args.lam, args.seed)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    slow = direct_route(f1, g1, f2, g2, input_set, args.lam)
    slow_seconds = time.perf_counter() - start

    print(
        f"K={args.labels} M={args.hidden} N={args.contexts} scale={args.scale} seed={args.seed} "
        f"threads={torch.get_num_threads()} degenerate labels (library)={fast['degenerate']} "
        f"load average={os.getloadavg()[0]:.2f}"
    )
    print(f"statistics route (update + every measure, {args.labels} candidate pivots): {fast_seconds:9.3f} s")
    print(f"direct route ({args.labels}^2 (pivot, left-out) pairs):                  {slow_seconds:9.3f} s")
    print(f"speed-up direct / statistics: {slow_seconds / fast_seconds:.1f}x  (target >= {SPEEDUP_TARGET:g}x)")
    worst = 0.0
    for key in ("t1", "t2", "t3", "t4", "d_llv"):
        rel = abs(fast[key] - slow[key]) / max(abs(slow[key]), np.finfo(float).tiny)
        worst = max(worst, rel)
        print(f"  {key:5s} statistics {fast[key]:.15e}  direct {slow[key]:.15e}  relative difference {rel:.2e}")
    print(f"max relative difference of t1..t4, d_llv: {worst:.2e}  (target <= {AGREEMENT_TARGET:g})")
    same = fast["pivot_label"] == slow["pivot_label"] and fast["left_out_label"] == slow["left_out_label"]
    print(
        f"pivot / left-out labels: statistics ({fast['pivot_label']}, {fast['left_out_label']}), direct "
        f"({slow['pivot_label']}, {slow['left_out_label']}): {'agree' if same else 'DISAGREE'}"
    )
    print(f"input set (both routes): {input_set}")


if __name__ == "__main__":
    main()
