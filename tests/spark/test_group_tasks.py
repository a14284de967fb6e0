"""negCLIPLoss groups get a task each (clipsift.jobs.score.one_partition_keys + transforms.with_negclip)."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs.config import NegClipConfig
from clipsift.jobs.score import one_partition_keys
from clipsift.jobs.transforms import with_negclip


def test_every_group_has_a_partition_of_its_own(spark: SparkSession) -> None:
    groups = [f"{i:05d}" for i in range(8)]
    keys = one_partition_keys(spark, groups)
    assert keys is not None and sorted(keys) == groups
    assert len(set(keys.values())) == 8
    df = spark.range(400).select(
        F.format_string("u%04d", "id").alias("uid"),
        F.format_string("%05d", F.col("id") % 8).alias("source"),
        F.array(F.lit(1.0).cast("float"), (F.col("id") / 400).cast("float")).alias("image_emb"),
        F.array(F.lit(1.0).cast("float"), F.lit(0.0).cast("float")).alias("text_emb"),
    )
    cfg = NegClipConfig(batch_size=16, rounds=2)
    out = df.transform(with_negclip, cfg=cfg, dim=2, n_groups=8, partition_keys=keys)
    per_partition = out.groupBy(F.spark_partition_id().alias("p")).count().collect()
    assert sorted(r["count"] for r in per_partition) == [50] * 8
    hashed = df.transform(with_negclip, cfg=cfg, dim=2, n_groups=8)
    assert sorted(r["uid"] for r in out.collect()) == sorted(r["uid"] for r in hashed.collect())


def test_no_groups(spark: SparkSession) -> None:
    assert one_partition_keys(spark, []) is None
