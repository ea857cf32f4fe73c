"""Benchmark: the whole comparison (statistics + measures) against bare log-softmax of both models.

Synthetic models at SmolLM2 scale: M = 576, V = 49,152, 20,000 contexts. Both routes compute the same logits
f @ g^T chunk by chunk; the baseline only takes their log-softmax, hf_repsim feeds them to the statistics and
then computes every measure (64 candidate pivots, 32 label sets). Prints the times and their ratio.

    python bench/measures_vs_logsoftmax.py [--contexts 20000] [--chunk 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_repsim import Head, MeasureConfig, RepSimState, compute_measures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    g1 = torch.randn(args.vocab, args.hidden, generator=gen) / args.hidden**0.5
    g2 = g1 + 0.05 * torch.randn(g1.shape, generator=gen) / args.hidden**0.5
    f1 = 3 * torch.randn(args.contexts, args.hidden, generator=gen)
    f2 = f1 + 0.1 * torch.randn(f1.shape, generator=gen)
    heads = [Head(g1), Head(g2)]
    chunks = [slice(s, s + args.chunk) for s in range(0, args.contexts, args.chunk)]

    # Baseline: both models' log-softmax over the same contexts, nothing kept.
    start = time.perf_counter()
    for rows in chunks:
        for f, g in ((f1, g1), (f2, g2)):
            torch.log_softmax(f[rows] @ g.T, dim=-1)
    baseline = time.perf_counter() - start

    # hf_repsim: the same logits into the statistics, then every measure.
    start = time.perf_counter()
    state = RepSimState([args.hidden, args.hidden], num_labels=args.vocab, reservoir_size=4096)
    for rows in chunks:
        state.update([f1[rows], f2[rows]], [f1[rows] @ g1.T, f2[rows] @ g2.T])
    updates = time.perf_counter() - start
    measures = compute_measures(state, heads, config=MeasureConfig(num_pivots=64, num_label_sets=32))
    total = time.perf_counter() - start

    print(f"contexts={args.contexts} hidden={args.hidden} vocab={args.vocab} threads={torch.get_num_threads()}")
    print(f"baseline log-softmax of both models: {baseline:8.2f} s")
    print(f"hf_repsim statistics updates:        {updates:8.2f} s")
    print(f"hf_repsim measures:                  {total - updates:8.2f} s")
    print(f"hf_repsim total:                     {total:8.2f} s")
    print(f"ratio total / baseline:              {total / baseline:8.2f}  (target <= 2)")
    v = measures.values
    print(f"kl={v['kl']:.4g} d_llv={v['d_llv']:.4g} d_svd_f={v['d_svd_f']:.4g} m_cca_f={v['m_cca_f']:.4g}")


if __name__ == "__main__":
    main()
