"""The adapters' training batches, streamed to the driver in packed chunks (clipsift.jobs.clipselect.epoch_batches)."""

from __future__ import annotations

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs.clipselect import epoch_batches
from clipsift.udfs.clipselect import pack_rows_fn, unpack_rows

DIM = 4


def test_pack_unpack_round_trip() -> None:
    import pyarrow as pa

    from clipsift.udfs.arrow import from_matrix

    img = np.arange(10 * DIM, dtype=np.float32).reshape(10, DIM)
    batch = pa.RecordBatch.from_arrays([from_matrix(img), pa.array(np.arange(10), pa.int64())], ["image_emb", "label"])
    chunks = list(pack_rows_fn(DIM, 4)(iter([batch])))
    assert [c.column(0)[0].as_py() for c in chunks] == [4, 4, 2]
    parts = [unpack_rows(c.column(1)[0].as_py(), c.column(2)[0].as_py(), DIM) for c in chunks]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), img)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), np.arange(10))


def test_epochs_stream_every_row_once_in_the_seeded_order(spark: SparkSession) -> None:
    n = 2_500
    df = spark.range(n, numPartitions=3).select(
        F.format_string("u%05d", "id").alias("uid"),
        F.array(*[(F.col("id") * 10 + j).cast("float") for j in range(DIM)]).alias("image_emb"),
        (F.col("id") % 7).alias("label"),
    )
    stream = epoch_batches(df, batch_size=300, seed=1, dim=DIM, rows_per_chunk=128)
    for epoch in range(2):
        batches = list(stream())
        assert [len(lab) for _, lab in batches] == [300] * 8 + [100]
        img = np.concatenate([b[0] for b in batches])
        ids = (img[:, 0] / 10).astype(np.int64)
        np.testing.assert_array_equal(img[:, 1], ids * 10 + 1)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), ids % 7)
        order = df.orderBy(F.xxhash64("uid", F.lit(epoch), F.lit(1))).select("uid").collect()
        assert [f"u{i:05d}" for i in ids] == [r["uid"] for r in order]
