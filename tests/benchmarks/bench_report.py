"""``clipsift report`` on generated score runs of growing size: the driver's memory stays bounded.

A score run is generated in Spark (no driver-side data): ``n`` rows with a uid, a status (0.2 % not ok, with an
error), correlated ``clip_score`` / ``negclip_loss`` / ``normsim_inf_target`` columns and a caption, written as a
Delta table with its runs-table row; ``clipsift select`` makes three views (two top fractions and their
intersection). The report of each run is then made (:func:`clipsift.jobs.report.run`), and reported per size:
seconds, the driver's peak RSS increase over the report (the Python driver process: ``VmHWM`` reset first), the
local JVM's peak RSS (driver and executors in one process here), and the page's size. The ratio of the driver's
peak increase at the largest size to the smallest says whether it grows with the pool (bounded: ≈ 1).

    python -m tests.benchmarks.bench_report --out bench-output/report                # 100k and 1M rows
    python -m tests.benchmarks.bench_report --out bench-output/report --rows 10000,100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common import ProcessTreeMonitor, Ratio, Report, proc_status, quiet_note, ratio, reset_peak_rss

BENCH = "Report (clipsift report)"
FULL_ROWS = (100_000, 1_000_000)
QUICK_ROWS = (10_000, 100_000)


def write_run(spark: Any, root: Path, n: int) -> tuple[Any, str]:
    """A generated score run of ``n`` rows (Delta, partitioned by run_id), its runs row, and three views."""
    from pyspark.sql import functions as F

    from clipsift.jobs import io
    from clipsift.jobs import select as select_job
    from clipsift.jobs.config import SelectConfig, TableRef, from_dict

    path = root / f"scores_{n}"
    run_id = f"run-bench-{n}"

    def uniform(k: int) -> Any:
        return F.pmod(F.xxhash64(F.col("id"), F.lit(k)), F.lit(1_000_003)).cast("double") / 1_000_003.0

    status = (
        F.when(F.col("id") % 1000 == 7, F.lit("zero_norm"))
        .when(F.col("id") % 1000 == 13, F.lit("null_embedding"))
        .otherwise(F.lit("ok"))
    )
    ok = status == "ok"
    clip = 0.05 + 0.3 * uniform(1) + 0.05 * uniform(2)
    df = spark.range(n, numPartitions=8).select(
        F.md5(F.col("id").cast("string")).alias("uid"),
        F.lit("generated").alias("source"),
        F.col("id").alias("source_row"),
        status.alias("status"),
        F.when(~ok, F.format_string("generated failure of row %d", F.col("id"))).alias("error"),
        F.when(ok, clip).alias("clip_score"),
        F.when(ok, clip - 0.35 - 0.08 * uniform(3)).alias("negclip_loss"),
        F.when(ok, 0.2 + 0.5 * uniform(4) + 0.2 * clip).alias("normsim_inf_target"),
        F.format_string("a photo of concept %d, item %d", F.col("id") % 997, F.col("id")).alias("text"),
        F.lit(run_id).alias("run_id"),
    )
    ref = TableRef(path=str(path))
    df.write.format("delta").mode("overwrite").partitionBy("run_id").save(str(path))
    counts = {str(r["status"]): int(r["count"]) for r in df.groupBy("status").count().collect()}
    io.record_run(
        spark, ref, run_id=run_id, started_at=datetime.now(timezone.utc), seconds=0.0, input_label="generated",
        rows_in=n, by_status=counts, config={"input": {"kind": "generated"}}, lineage={"teacher": "generated"},
    )  # fmt: skip
    select_job.run(
        spark,
        from_dict(SelectConfig, {"scores": {"path": str(path)}, "view_prefix": f"bench{n}_", "selections": [
            {"name": "cs30", "rule": "top_fraction", "column": "clip_score", "fraction": 0.3},
            {"name": "ncl30", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3},
            {"name": "both", "rule": "intersect", "of": ["cs30", "ncl30"]},
        ]}),
    )  # fmt: skip
    return ref, run_id


def run(
    spark: Any, workdir: Path, sizes: Sequence[int] = FULL_ROWS, monitor: ProcessTreeMonitor | None = None
) -> Report:
    """The report of a generated run per size: seconds, driver peak RSS increase, JVM peak RSS, page size."""
    from clipsift.jobs import report as report_job
    from clipsift.jobs.config import ReportConfig, from_dict

    if monitor is None:
        with ProcessTreeMonitor() as own:
            return run(spark, workdir, sizes, own)
    rep = Report()
    for n in sizes:
        ref, run_id = write_run(spark, workdir, n)
        cfg = from_dict(
            ReportConfig, {"scores": {"path": ref.path}, "run_id": run_id, "output": str(workdir / f"report_{n}.html")}
        )
        before = proc_status().get("VmRSS", 0)
        exact = reset_peak_rss()
        with monitor.phase() as mem:
            start = time.perf_counter()
            result = report_job.run(spark, cfg)
            seconds = time.perf_counter() - start
        driver = proc_status().get("VmHWM", 0) - before
        jvm = max(mem.of_kind("jvm"), default=0)
        note = f"{n:,} rows, 3 views, {result.samples} sampled rows; {quiet_note(mem.cpu)}"
        rep.add(BENCH, f"{n:,} rows", "seconds", seconds, "s", note)
        how = "VmHWM, reset first" if exact else "VmHWM since start"
        rep.add(BENCH, f"{n:,} rows", "driver (Python) peak RSS increase", driver, "bytes", how)
        rep.add(BENCH, f"{n:,} rows", "JVM peak RSS (local: driver + executors)", jvm, "bytes", "sampled")
        rep.add(BENCH, f"{n:,} rows", "page size", result.bytes, "bytes", "one HTML file")
        rep.raw[f"report_{n}"] = {"seconds": seconds, "driver_peak_increase": driver, "jvm_peak": jvm,
                                  "bytes": result.bytes, "samples": result.samples}  # fmt: skip
    return rep


def ratios(rep: Report, sizes: Sequence[int] = FULL_ROWS) -> list[Ratio]:
    """Driver peak RSS increase at the largest size over the smallest (bounded: about 1, not ``max/min``)."""
    small, large = f"{min(sizes):,} rows", f"{max(sizes):,} rows"
    metric = "driver (Python) peak RSS increase"
    grow = ratio(rep.value(BENCH, large, metric), rep.value(BENCH, small, metric))
    return [Ratio(f"report: driver peak RSS increase, {large} / {small}", grow, None, large, small)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the sizes in a fresh local session; write ``OUT/report_bench.json`` and print a table."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_report")
    parser.add_argument("--out", type=Path, default=Path("bench-output/report"))
    parser.add_argument("--rows", default=",".join(str(n) for n in FULL_ROWS), help="comma-separated sizes")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",")]
    from . import bench_spark

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipsift-bench-report-") as tmp:
        spark = bench_spark.build_session(Path(tmp))
        try:
            rep = run(spark, Path(tmp), sizes)
        finally:
            spark.stop()
    rows = [{"case": r.case, "metric": r.metric, "value": r.value, "unit": r.unit, "note": r.note} for r in rep.rows]
    found = ratios(rep, sizes)
    (args.out / "report_bench.json").write_text(
        json.dumps({"rows": rows, "ratios": [{"name": r.name, "value": r.value} for r in found]}, indent=2)
    )
    for r in rows:
        value = f"{r['value'] / 2**20:,.1f} MiB" if r["unit"] == "bytes" else f"{r['value']:,.1f} {r['unit']}"
        print(f"| {r['case']} | {r['metric']} | {value} | {r['note']} |")
    for q in found:
        print(f"{q.name}: {q.value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
