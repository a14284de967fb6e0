"""Thread-parallel elementwise helpers: numpy ufuncs release the GIL, BLAS threads do not cover them."""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np


def num_threads() -> int:
    """Threads for elementwise work: ``OMP_NUM_THREADS`` (Spark sets it to the task's cores), else all cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


@lru_cache(maxsize=8)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="clipsift-kernel")


def exp_shifted_inplace(x: np.ndarray, shift: np.ndarray, scale: float) -> np.ndarray:
    """Set ``x[i, :] = exp((x[i, :] - shift[i]) * scale)`` in place, over row chunks in parallel; returns row sums."""
    n_rows = x.shape[0]
    threads = min(num_threads(), max(1, n_rows))
    sums = np.empty(n_rows, dtype=np.float64)

    def work(lo: int, hi: int) -> None:
        part = x[lo:hi]
        np.subtract(part, shift[lo:hi, None], out=part)
        np.multiply(part, np.float32(scale), out=part)
        np.exp(part, out=part)
        sums[lo:hi] = part.sum(axis=1, dtype=np.float64)

    if threads == 1:
        work(0, n_rows)
        return sums
    bounds = np.linspace(0, n_rows, threads + 1).astype(int)
    futures = [_pool(threads).submit(work, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]
    for f in futures:
        f.result()
    return sums
