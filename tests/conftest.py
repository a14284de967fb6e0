"""Shared fixtures and the test tiers.

* Tiers are set by folder: ``tests/spark``, ``tests/jobs`` and ``tests/faults`` (separate processes broken,
  raced or fed garbage on purpose) are marked ``spark``, ``tests/gpu`` ``gpu``.
  Only tests marked ``spark`` (those folders, and the benchmarks' smoke tests, marked by hand) may use the
  ``spark`` fixture, so ``pytest -m "not spark"`` runs without a JVM.
* ``CLIPSIFT_REQUIRE_TEST_DATA=1`` (set by ``.ci/run``) turns a skip for missing test data or a missing package
  (a Debian data package, an extra) into a failure, so CI cannot pass by skipping.
* One local Spark session with Delta for the whole run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
if (ROOT / ".jars").is_dir():
    os.environ.setdefault("CLIPSIFT_JARS", str(ROOT / ".jars"))


#: Folder under tests/ -> the marker every test in it gets.
TIER_MARKERS = {"spark": "spark", "jobs": "spark", "faults": "spark", "gpu": "gpu"}
#: Skip reasons that mean "test data or a package is missing" (the readers in tests.support say how to install).
MISSING_DATA = ("apt-get install", "pip install", "could not import", "not found: install")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = ROOT / "tests"
    for item in items:
        parts = item.path.relative_to(tests).parts
        marker = TIER_MARKERS.get(parts[0]) if len(parts) > 1 else None
        if marker is not None:
            item.add_marker(marker)
        if "spark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("spark") is None:
            raise pytest.UsageError(f"{item.nodeid} uses the spark fixture but is not in a spark tier folder")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("CLIPSIFT_REQUIRE_TEST_DATA") == "1"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(text in reason for text in MISSING_DATA):
        report.outcome = "failed"
        report.longrepr = f"CLIPSIFT_REQUIRE_TEST_DATA=1 and the test was skipped for missing data: {reason}"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """local[2] Spark with Delta, UTC, 2 shuffle partitions, no UI, warehouse in a temp dir."""
    from clipsift.jobs.session import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_spark(
        "clipsift-tests",
        {
            "spark.master": "local[2]",
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.memory": "2g",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse}",
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
