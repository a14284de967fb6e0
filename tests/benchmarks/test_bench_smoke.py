"""Smoke test of the benchmark code at toy sizes, so that it cannot rot.

It checks that every benchmark runs and reports finite numbers, that the Spark job and the bare
kernel score the same rows alike, and that the embedding UDF in Spark and a bare open_clip loop give
the same embeddings. It never looks at a timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from . import bench_adapters, bench_embed, bench_negclip, bench_spark
from .common import TOY
from .run import SCORE_BENCHMARKS, run_suite, write_outputs


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
    doc = run_suite(TOY, list(SCORE_BENCHMARKS), tmp_path / "work", spark=spark, warm_up=False)
    _check_document(doc, tmp_path / "out")
    for case in (bench_spark.STAGE, bench_spark.JOB_ON):
        assert _value(doc, bench_spark.BENCH, case, "throughput") > 0
    assert _value(doc, bench_spark.BENCH, bench_spark.TRANSFER, "wall time") > 0
    # The benchmark compares like with like: the job's scores are the kernel's scores.
    assert _value(doc, bench_spark.BENCH, "job scores vs kernel alone", "max abs difference of negclip_loss") < 1e-4
    assert any(r["name"] == "Spark negCLIPLoss stage / kernel alone" for r in doc["ratios"])


@pytest.mark.spark
def test_embedding_benchmarks_compare_like_with_like(spark: object, tmp_path: Path) -> None:
    # embed_job (the whole job: several Spark stages and a Delta commit) is left out to stay under a minute.
    doc = run_suite(TOY, ["embed_cpu"], tmp_path / "work", spark=spark, warm_up=False)
    _check_document(doc, tmp_path / "out")
    b = bench_embed
    for case in (b.BARE, b.PIPE_1x2, b.PIPE_2x1, b.SPARK_2x1, b.SPARK_1x2):
        assert _value(doc, b.BENCH, f"tiny: {case}", "samples/s") > 0, case
    # Same images, same weights: the pipeline and the Spark UDF give the bare loop's embeddings.
    assert _value(doc, b.BENCH, "tiny: embed_batches vs bare loop", "max abs difference of embeddings") < 1e-5
    assert _value(doc, b.BENCH, "tiny: Spark UDF vs bare loop", "max abs difference of embeddings") < 1e-5
    sizes = b.embed_sizes(TOY.name)
    assert doc["raw"]["embed_tiny_spark_check_ok"] == sizes.check_rows
    (first,) = doc["raw"]["embed_tiny_rounds"]
    for layout, tasks, threads, _ in b.LAYOUTS:
        run = first[layout]
        assert len(run["tasks"]) == tasks
        assert sum(t["ok"] for t in run["tasks"]) == sizes.models[0].samples
        assert {t["threads"] for t in run["tasks"]} == {threads}
    names = {r["name"] for r in doc["ratios"]}
    assert any(n.startswith("tiny: Spark UDF (best:") for n in names)


def test_dedup_benchmark_reports_finite_numbers(tmp_path: Path) -> None:
    doc = run_suite(TOY, ["dedup_kernels"], tmp_path / "work")
    _check_document(doc, tmp_path / "out")
    exponents = [r for r in doc["rows"] if r["metric"] == "exponent a"]
    assert len(exponents) == 2


@pytest.mark.spark
def test_adapter_stream_benchmark_streams_every_row_both_ways(spark: object, tmp_path: Path) -> None:
    doc = run_suite(TOY, ["adapter_stream"], tmp_path / "work", spark=spark, warm_up=False)
    _check_document(doc, tmp_path / "out")
    raw = doc["raw"]
    sums = [raw[f"adapters_{case}"]["checksum"] for case in (bench_adapters.ROWS, bench_adapters.PACKED)]
    assert sums[0] == pytest.approx(sums[1])  # same rows, same order of epoch 0: same first values summed
    assert any(r["name"].startswith("adapter stream:") for r in doc["ratios"])
