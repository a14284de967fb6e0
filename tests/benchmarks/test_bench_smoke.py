"""Smoke test of the benchmark code at toy sizes, so that it cannot rot.

It checks that every benchmark runs and reports finite numbers, and that the Spark job and the bare
kernel score the same rows alike. It never looks at a timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from . import bench_negclip, bench_spark
from .common import TOY
from .run import BENCHMARKS, run_suite, write_outputs


def _check_document(doc: dict[str, Any], out: Path) -> None:
    rows = doc["rows"]
    assert isinstance(rows, list) and rows
    for r in rows:
        if r["case"] == bench_spark.JOB_DIFF and r["metric"] == "throughput":
            continue  # a difference of two toy wall times may be negative: reported as n/a
        assert math.isfinite(r["value"]), r
    md = write_outputs(doc, out, "pytest")
    assert "| benchmark | case | metric | value | note |" in md
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))


def _value(doc: dict[str, Any], bench: str, case: str, metric: str) -> float:
    found = [r["value"] for r in doc["rows"] if (r["bench"], r["case"], r["metric"]) == (bench, case, metric)]
    assert len(found) == 1, (bench, case, metric)
    return float(found[0])


def test_kernel_benchmarks_report_finite_numbers(tmp_path: Path) -> None:
    doc = run_suite(TOY, ["negclip_kernel", "normsim_kernel"], tmp_path / "work")
    _check_document(doc, tmp_path / "out")
    assert _value(doc, bench_negclip.BENCH, bench_negclip.KERNEL, "throughput") > 0
    assert _value(doc, bench_negclip.BENCH, bench_negclip.MATMUL, "throughput") > 0
    names = {r["name"] for r in doc["ratios"]}
    assert "negCLIPLoss kernel / plain matmul (2 threads)" in names
    assert all(math.isfinite(r["value"]) for r in doc["ratios"])


@pytest.mark.spark
def test_all_benchmarks_with_spark_report_finite_numbers(spark: object, tmp_path: Path) -> None:
    doc = run_suite(TOY, list(BENCHMARKS), tmp_path / "work", spark=spark, warm_up=False)
    _check_document(doc, tmp_path / "out")
    for case in (bench_spark.STAGE, bench_spark.JOB_ON):
        assert _value(doc, bench_spark.BENCH, case, "throughput") > 0
    assert _value(doc, bench_spark.BENCH, bench_spark.TRANSFER, "wall time") > 0
    # The benchmark compares like with like: the job's scores are the kernel's scores.
    assert _value(doc, bench_spark.BENCH, "job scores vs kernel alone", "max abs difference of negclip_loss") < 1e-4
    assert any(r["name"] == "Spark negCLIPLoss stage / kernel alone" for r in doc["ratios"])
