"""Streaming the adapters' training batches from Spark to the driver (``clipsift clipselect``), side by side.

* **rows**: the obvious way, ``toLocalIterator`` over the epoch's ordered rows, one Python ``Row`` (and one
  Python float per value) per input row, stacked into batches with ``np.asarray``.
* **packed**: the job's :func:`clipsift.jobs.clipselect.epoch_batches`: the executors pack chunks of rows into raw
  float32 bytes, the driver gets one row per chunk and cuts batches from them.

Both read the same persisted table in the same seeded order per epoch. Reported: rows/s of one epoch, the driver's
peak RSS increase over the epoch (VmHWM, reset first) against the table's float32 size, and the epoch time that
rate gives at ImageNet size (1.28M rows).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import CpuWatch, Ratio, Report, proc_status, quiet_note, ratio, reset_peak_rss

BENCH = "Adapter training stream"
ROWS = "rows: toLocalIterator of Row objects"
PACKED = "packed chunks (clipsift.jobs.clipselect.epoch_batches)"
IMAGENET_ROWS = 1_281_167


def make_table(spark: Any, n: int, d: int, labels: int = 1000) -> Any:
    """A persisted frame of ``uid, image_emb (d floats), label`` built in Spark (no driver-side data)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    values = F.transform(
        F.sequence(F.lit(1), F.lit(d)), lambda j: (F.xxhash64(F.col("id"), j) % 10_000).cast("float") / 10_000.0
    )
    df = spark.range(n, numPartitions=4).select(
        F.format_string("u%09d", "id").alias("uid"),
        values.cast("array<float>").alias("image_emb"),
        (F.col("id") % labels).alias("label"),
    )
    df = df.persist(StorageLevel.MEMORY_AND_DISK)
    df.count()
    return df


def row_batches(df: Any, batch_size: int, seed: int, epoch: int) -> Any:
    """One epoch the obvious way: ordered rows through ``toLocalIterator``, ``np.asarray`` per batch."""
    from pyspark.sql import functions as F

    order = F.xxhash64("uid", F.lit(epoch), F.lit(seed))
    images: list[list[float]] = []
    labels: list[int] = []
    for r in df.select("image_emb", "label").orderBy(order).toLocalIterator(prefetchPartitions=False):
        images.append(r["image_emb"])
        labels.append(r["label"])
        if len(images) == batch_size:
            yield np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)
            images, labels = [], []
    if images:
        yield np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def run(spark: Any, quick: bool = False, d: int = 768, batch_size: int = 256) -> Report:
    """One epoch each way over the same table; rows/s, driver peak RSS, and the packed / rows ratio."""
    from clipsift.jobs.clipselect import epoch_batches

    rep = Report()
    n = 5_000 if quick else 100_000
    df = make_table(spark, n, d)
    table_mib = n * d * 4 / 2**20
    packed = epoch_batches(df, batch_size, seed=0, dim=d)
    sources = {ROWS: lambda: row_batches(df, batch_size, 0, 0), PACKED: packed}
    for case, source in sources.items():
        before = proc_status().get("VmRSS", 0)
        exact = reset_peak_rss()
        rows = 0
        checksum = 0.0
        with CpuWatch() as watch:
            start = time.perf_counter()
            for img, lab in source():
                rows += len(lab)
                checksum += float(img[0, 0])
            seconds = time.perf_counter() - start
        peak = proc_status().get("VmHWM", 0) - before
        assert rows == n, f"{case}: streamed {rows} of {n} rows"
        rate = rows / seconds
        rep.add(BENCH, case, "rows/s", rate, "rows/s", f"{n:,} rows × d = {d}, one epoch; {quiet_note(watch)}")
        rep.add(
            BENCH,
            case,
            "driver peak RSS increase",
            peak,
            "bytes",
            f"table {table_mib:,.0f} MiB as float32; {'VmHWM, reset first' if exact else 'VmHWM since start'}",
        )
        rep.add(BENCH, case, "epoch at ImageNet size", IMAGENET_ROWS / rate, "s", "1.28M rows at this rate")
        rep.raw[f"adapters_{case}"] = {"rows": rows, "seconds": seconds, "checksum": checksum}
    df.unpersist()
    return rep


def ratios(rep: Report) -> list[Ratio]:
    """packed / rows, in rows/s."""
    packed, rows = rep.value(BENCH, PACKED, "rows/s"), rep.value(BENCH, ROWS, "rows/s")
    return [Ratio("adapter stream: packed chunks / Row objects (rows/s)", ratio(packed, rows), None, PACKED, ROWS)]
