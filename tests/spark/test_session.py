"""Progress of a job's steps: named in the Spark UI while they run, one line on stderr when they end."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.session import Progress


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
