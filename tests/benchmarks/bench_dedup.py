"""k-means assignment and semantic dedup kernels (issue 4): throughput against pool / cluster size.

``nearest_centroid`` costs ``2·n·k·d`` FLOPs: linear in the rows for a fixed k. ``semantic_duplicates``
compares every pair of a cluster, ``n²·d`` FLOPs: the time per cluster grows with its square, and a
pool of N rows in clusters of size c costs ``N·c·d``, i.e. linear in N for a fixed cluster size. The
benchmark measures both and fits the growth exponent of each from the timings (log-log slope).
"""

from __future__ import annotations

import math

import numpy as np

from .common import CpuWatch, Report, best_time, quiet_note

BENCH = "Dedup"
SEED = 5


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def cluster_with_duplicates(n: int, d: int, seed: int) -> np.ndarray:
    """A cluster of ``n`` rows around one centre, 5 % of them near-copies of another row (cosine > 0.99)."""
    rng = np.random.default_rng(seed)
    centre = unit_rows(1, d, seed)[0]
    x = centre + rng.standard_normal((n, d), dtype=np.float32) * np.float32(1.0 / math.sqrt(d))
    copies = rng.choice(n, size=n // 20, replace=False)
    x[copies] = x[rng.choice(n, size=len(copies))] + rng.standard_normal((len(copies), d), dtype=np.float32) * 1e-3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def slope(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def run(quick: bool = False, d: int = 768) -> Report:
    """Both kernels at growing sizes; rows/s, GFLOP/s and the fitted growth exponents."""
    from clipsift.udfs.kernels import nearest_centroid, semantic_duplicates

    rep = Report()
    k = 1_000 if quick else 10_000
    centroids = unit_rows(k, d, SEED)
    pools = [2_000, 4_000, 8_000] if quick else [10_000, 20_000, 40_000, 80_000]
    times = []
    nearest_centroid(unit_rows(64, d, 1), centroids)  # warm-up
    for n in pools:
        x = unit_rows(n, d, SEED + n)
        with CpuWatch() as watch:
            t = best_time(lambda x=x: nearest_centroid(x, centroids), 1)
        times.append(t)
        rep.add(BENCH, f"nearest centroid, k = {k:,}, d = {d}, n = {n:,}", "rows/s", n / t, "rows/s", quiet_note(watch))
        rep.add(BENCH, f"nearest centroid, k = {k:,}, d = {d}, n = {n:,}", "throughput", 2.0 * n * k * d / t / 1e9,
                "GFLOP/s", "2·n·k·d")  # fmt: skip
    rep.add(BENCH, "nearest centroid: time ~ n^a", "exponent a", slope(pools, times), "", "expected 1 (linear)")

    clusters = [1_000, 2_000, 4_000] if quick else [5_000, 10_000, 20_000, 40_000]
    times = []
    for n in clusters:
        x = cluster_with_duplicates(n, d, SEED + n)
        rank = np.random.default_rng(n).random(n)
        with CpuWatch() as watch:
            t = best_time(lambda x=x, rank=rank: semantic_duplicates(x, rank, 0.95), 1)
        keep, _ = semantic_duplicates(x, rank, 0.95)
        dropped = int((keep != np.arange(n)).sum())
        times.append(t)
        case = f"semantic dedup of one cluster, d = {d}, n = {n:,}"
        rep.add(BENCH, case, "rows/s", n / t, "rows/s", f"{dropped:,} rows dropped; {quiet_note(watch)}")
        rep.add(
            BENCH, case, "throughput", 1.0 * n * n * d / t / 1e9, "GFLOP/s", "n²·d (both halves of the Gram matrix)"
        )
    rep.add(BENCH, "semantic dedup per cluster: time ~ n^a", "exponent a", slope(clusters, times), "",
            "expected 2 (all pairs); a pool in clusters of fixed size grows linearly")  # fmt: skip
    return rep
