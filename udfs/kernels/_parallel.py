"""The elementwise half of negCLIPLoss: one cache-friendly pass over a logits block, in threads.

numpy ufuncs release the GIL, so row ranges of a block run in parallel threads; within a range,
rows are taken a few at a time (about 1 MiB) so the max, subtract, exp, row sum and weighted column
sum of those rows all happen while they sit in cache: one trip through memory instead of six.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

#: Elements per cache-resident chunk of rows (1 MiB of float32).
_CHUNK_ELEMENTS = 1 << 18


def num_threads() -> int:
    """Threads for elementwise work: ``OMP_NUM_THREADS`` (Spark sets it to the task's cores), else all cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


@lru_cache(maxsize=8)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="clipsift-kernel")


def exp_sums(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Row and column exp-sums of a float32 logits block, overwriting it with exponentials.

    Returns:
        ``(rmax, rowsum, ref, colsum)``: the row maxima and ``Σ_j exp(x_ij − rmax_i)`` (≥ 1), and
        for the columns ``Σ_i exp(x_ij − ref)`` (float64) relative to the scalar ``ref``. Column
        terms far below ``ref`` may underflow; callers recompute columns whose sum is tiny.
    """
    n_rows, n_cols = logits.shape
    rmax = np.empty(n_rows, dtype=np.float32)
    rowsum = np.empty(n_rows, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))

    def work(lo: int, hi: int) -> tuple[float, np.ndarray]:
        ref = -np.inf
        acc = np.zeros(n_cols)
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            chunk = logits[a:b]
            m = chunk.max(axis=1)
            rmax[a:b] = m
            np.subtract(chunk, m[:, None], out=chunk)
            np.exp(chunk, out=chunk)
            rowsum[a:b] = chunk.sum(axis=1)
            top = float(m.max())
            part = np.exp(m - np.float32(top)) @ chunk
            if top > ref:
                acc *= np.exp(ref - top)
                ref = top
                acc += part
            else:
                acc += part * np.exp(top - ref)
        return ref, acc

    threads = min(num_threads(), max(1, n_rows // step))
    bounds = np.linspace(0, n_rows, threads + 1).astype(int)
    if threads == 1:
        results = [work(0, n_rows)]
    else:
        futures = [_pool(threads).submit(work, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
        results = [f.result() for f in futures]
    ref = max(r for r, _ in results)
    colsum = np.zeros(n_cols)
    for r, acc in results:
        if np.isfinite(r):
            colsum += acc * np.exp(r - ref)
    return rmax, rowsum, ref, colsum
