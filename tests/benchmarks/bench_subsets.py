"""Reading a DataComp subset file for rule ``import``: ``clipsift.jobs.io.subset_uids`` (streamed, vectorised hex)
against the plain Python loop a script would write (``np.load`` + ``f"{a:016x}{b:016x}"`` per row), side by side
in one process on the same file. No Spark: this is the driver-side part of an import; the landing is one Delta
write per chunk of 1M uids.

    .venv/bin/python -m tests.benchmarks.bench_subsets [--rows 5000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from clipsift.jobs.io import inspect_subset, subset_uids, write_subset_npy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = np.zeros(args.rows, dtype=np.dtype("u8,u8"))
    pairs["f0"] = rng.integers(0, 2**63, args.rows, dtype=np.uint64)
    pairs["f1"] = rng.integers(0, 2**63, args.rows, dtype=np.uint64)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "subset.npy")
        write_subset_npy(pairs, path)
        del pairs
        tracemalloc.start()
        t0 = time.perf_counter()
        info = inspect_subset(path)
        t1 = time.perf_counter()
        n = sum(len(chunk) for chunk in subset_uids(path))
        t2 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t3 = time.perf_counter()
        arr = np.load(path)
        loop = [f"{a:016x}{b:016x}" for a, b in arr.tolist()]
        t4 = time.perf_counter()
    assert n == info.rows == len(loop) == args.rows
    print(f"rows {args.rows:,}: inspect (sha256, dtype, order) {t1 - t0:.2f} s; uid strings {t2 - t1:.2f} s "
          f"({n / (t2 - t1) / 1e6:.1f} M uids/s), peak traced memory {peak / 2**20:.0f} MiB; "
          f"python loop {t4 - t3:.2f} s ({n / (t4 - t3) / 1e6:.1f} M uids/s); ratio {(t4 - t3) / (t2 - t1):.1f}x")


if __name__ == "__main__":
    main()
