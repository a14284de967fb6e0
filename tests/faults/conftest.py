"""The faults tier: clipsift run in separate processes (each its own Spark), raced, broken or fed bad settings on
purpose; every check reads the tables back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The ``spark`` section of every config run here: one core each (commands run side by side on two), and Delta and
#: shuffles sized to tables of a few hundred rows, as the test session is (Delta's 50 snapshot partitions would
#: make each tiny query 50 tasks).
SPARK = {
    "local_catalog": None,
    "conf": {
        "spark.master": "local[1]", "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1",
        "spark.default.parallelism": "1", "spark.databricks.delta.snapshotPartitions": "1",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "1", "spark.driver.memory": "1g",
    },
}  # fmt: skip


def clipsift(args: Sequence[str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``python -m clipsift ARGS`` (one Spark of its own, one core) without waiting for it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIPSIFT_VERBOSE": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "clipsift", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


#: The one line the JVM itself prints when Spark 4 starts (its launcher adds an incubator module); no log profile
#: can silence it.
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"


def one_error_line(code: int, err: str) -> str:
    """The one line a failed command printed: exit status 2, no traceback, one ``clipsift ...: config key`` line,
    and nothing else on stderr but the JVM's own start-up notice (clipsift's log profile drops Spark's)."""
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and "Py4JJavaError" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("clipsift ") and "config key" in line]
    assert len(lines) == 1, err[-3000:]
    others = [line for line in err.splitlines() if line.strip() and line != lines[0] and line != JVM_NOTICE]
    assert not others, err[-3000:]
    return lines[0]
