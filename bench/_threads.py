"""Shared by the benchmark scripts: one thread count for torch and numpy's BLAS."""

from __future__ import annotations

import torch


def limit_threads(threads: int | None) -> None:
    """The same thread count for torch and numpy's BLAS, so that neither route gets more cores than the other."""
    if threads is None:
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
