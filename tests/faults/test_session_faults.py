"""The session clipsift builds when nothing else chose one: local task retries, and a Spark setting Spark refuses
is one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.faults.conftest import ROOT, SPARK, clipsift, finish, one_error_line

FLAKY = """
import os, sys
from clipsift.jobs.session import get_spark

marker = sys.argv[1]

def fail_once(rows):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("a task failing once, on purpose")
    yield from rows

spark = get_spark("flaky", {"spark.ui.enabled": "false"})
print("master", spark.sparkContext.master)
print("rows", spark.range(100, numPartitions=1).mapInPandas(fail_once, "id long").count())
"""


def test_a_local_task_that_fails_once_is_retried(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    done = subprocess.run(
        [sys.executable, "-c", FLAKY, str(tmp_path / "failed-once")], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "master local[*, 4]" in done.stdout and "rows 100" in done.stdout, done.stdout
    assert (tmp_path / "failed-once").exists()


def test_a_spark_setting_spark_refuses_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "select.yaml"
    config.write_text(json.dumps({
        "scores": {"path": str(tmp_path / "scores")},
        "selections": [{"name": "x", "rule": "top_fraction", "column": "clip_score", "fraction": 0.1}],
        "spark": {**SPARK, "conf": {**SPARK["conf"], "spark.sql.shuffle.partitions": "abc"}},
    }))  # fmt: skip
    line = one_error_line(*finish(clipsift(["select", "--config", str(config)], tmp_path))[::2])
    assert "'spark.conf.spark.sql.shuffle.partitions'" in line and "abc" in line, line
