"""NormSim kernels in one process (both cores): NormSim∞ and NormSim₂ rows/s against M target rows.

NormSim∞ costs ``2·N·M·d`` FLOPs (no shortcut, ALGORITHMS.md §3); it is compared with the plain
matmul rate at the kernel's block shapes (pool block × target block). NormSim₂ reduces the target
once to its ``d × d`` second moment (timed separately) and then costs ``O(d²)`` per pool row.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from .common import CpuWatch, Ratio, Report, Sizes, best_time, quiet_note, ratio

BENCH = "NormSim"
SEED = 1


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` random unit rows of dimension ``d`` (float32)."""
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_target(path: str | Path, sizes: Sizes) -> Path:
    """The benchmark's target set (``M × d`` float32 unit rows) as ``.npy``, for the Spark UDF to memory-map."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, unit_rows(sizes.normsim_targets, sizes.dim, SEED))
    return out


def run(sizes: Sizes) -> Report:
    """NormSim∞ and NormSim₂ kernels; the plain matmul at NormSim∞'s block shapes."""
    from clipsift.udfs.kernels import normsim2_from_moment, normsim_inf, second_moment

    module = importlib.import_module("clipsift.udfs.kernels.normsim")  # the package re-exports a function of that name
    pool_block = int(getattr(module, "_POOL_BLOCK", 4096))  # the kernel's pool rows per block

    rep = Report()
    d, m, n = sizes.dim, sizes.normsim_targets, sizes.normsim_inf_rows
    target = unit_rows(m, d, SEED)
    pool = unit_rows(max(n, sizes.normsim2_rows), d, SEED + 1)
    block = 8192  # NormSimConfig.block_size default
    img = pool[:n]

    normsim_inf(img[: min(n, 64)], target[: min(m, block)])  # warm-up
    with CpuWatch() as watch:
        t_inf = best_time(lambda: normsim_inf(img, target, block_size=block), 1)
    flops_inf = 2.0 * n * m * d
    g_inf = flops_inf / t_inf / 1e9
    rep.add(
        BENCH,
        f"NormSim∞ kernel, M = {m:,}, d = {d}",
        "rows/s",
        n / t_inf,
        "rows/s",
        f"{n:,} pool rows in {t_inf:.1f} s; {quiet_note(watch)}",
    )
    rep.add(BENCH, f"NormSim∞ kernel, M = {m:,}, d = {d}", "throughput", g_inf, "GFLOP/s", "2·N·M·d")

    rows_p, rows_t = min(n, pool_block), min(m, block)
    a, b = img[:rows_p], target[:rows_t]
    reps = min(20, max(1, int(1e11 // (2.0 * rows_p * rows_t * d))))  # about a second of work per repeat

    def products() -> None:
        for _ in range(reps):
            _ = a @ b.T

    products()
    g_mm = 2.0 * rows_p * rows_t * d * reps / best_time(products, sizes.repeats) / 1e9
    rep.add(
        BENCH,
        "plain matmul at NormSim∞ blocks, 2 threads",
        "throughput",
        g_mm,
        "GFLOP/s",
        f"({rows_p}×{d}) @ ({d}×{rows_t})",
    )
    rep.ratios.append(
        Ratio(
            "NormSim∞ kernel / plain matmul at its blocks",
            ratio(g_inf, g_mm),
            None,
            "NormSim∞ GFLOP/s",
            "plain matmul GFLOP/s",
        )
    )

    t_moment = best_time(lambda: second_moment(target), sizes.repeats)
    moment = second_moment(target)
    rep.add(
        BENCH,
        f"NormSim₂ target reduction Σ t tᵀ, M = {m:,}",
        "rows/s",
        m / t_moment,
        "rows/s",
        f"once per target: {t_moment:.2f} s (float64)",
    )
    img2 = pool[: sizes.normsim2_rows]
    t2 = best_time(lambda: normsim2_from_moment(img2, moment), sizes.repeats)
    rep.add(
        BENCH,
        f"NormSim₂ kernel from the moment, d = {d}",
        "rows/s",
        img2.shape[0] / t2,
        "rows/s",
        f"{img2.shape[0]:,} pool rows in {t2:.2f} s (float64)",
    )
    rep.raw["normsim_kernel"] = {
        "inf_seconds": t_inf,
        "inf_rows": n,
        "targets": m,
        "moment_seconds": t_moment,
        "normsim2_seconds": t2,
        "normsim2_rows": int(img2.shape[0]),
        "matmul_gflops": g_mm,
    }
    return rep
