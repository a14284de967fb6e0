"""Progress of a job's steps (named in the Spark UI while they run, one line on stderr when they end), and shuffle
partitions sized to a job's input."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.session import (
    MIN_SHUFFLE_PARTITIONS,
    SHUFFLE_PARTITION_BYTES,
    SPARK_DEFAULT_SHUFFLE_PARTITIONS,
    Progress,
    shuffle_partitions,
    sized_shuffle,
)


def test_a_step_names_its_spark_jobs_and_reports_rows(spark: SparkSession, capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(spark, "clipsift test")
    with progress.step("count") as step:
        assert spark.sparkContext.getLocalProperty("spark.job.description") == "clipsift test: count"
        step["rows"] = spark.range(1000).count()
    assert spark.sparkContext.getLocalProperty("spark.job.description") is None
    with progress.step("no rows"):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("clipsift test: count: 1,000 rows in ") and "rows/s)" in lines[0]
    assert lines[1].startswith("clipsift test: no rows: ") and "rows" not in lines[1].split(": ", 2)[2]


def test_shuffle_partitions_follow_the_input_size() -> None:
    assert shuffle_partitions(0) == MIN_SHUFFLE_PARTITIONS
    assert shuffle_partitions(10 * 1024 * 1024) == MIN_SHUFFLE_PARTITIONS  # a small table: 8 tasks, not 200
    assert shuffle_partitions(1024**4) == 1024**4 // SHUFFLE_PARTITION_BYTES  # 1 TiB: 8,192 tasks of 128 MiB


def test_sized_shuffle_sizes_only_a_session_that_did_not_choose(spark: SparkSession) -> None:
    key = "spark.sql.shuffle.partitions"
    chosen = spark.conf.get(key)
    assert chosen != SPARK_DEFAULT_SHUFFLE_PARTITIONS
    with sized_shuffle(spark, 1024**4) as n:  # the session chose: kept
        assert n == int(str(chosen)) and spark.conf.get(key) == chosen
    spark.conf.set(key, SPARK_DEFAULT_SHUFFLE_PARTITIONS)
    try:
        with sized_shuffle(spark, 3 * SHUFFLE_PARTITION_BYTES * MIN_SHUFFLE_PARTITIONS) as n:
            assert n == 3 * MIN_SHUFFLE_PARTITIONS and spark.conf.get(key) == str(n)
        assert spark.conf.get(key) == SPARK_DEFAULT_SHUFFLE_PARTITIONS  # restored after the job
    finally:
        spark.conf.set(key, str(chosen))
