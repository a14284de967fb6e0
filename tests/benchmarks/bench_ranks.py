"""Exact ordinal ranks at growing N: clipsift's bucketed ranks against one global window, side by side.

    python -m tests.benchmarks.bench_ranks --rows 250000 --scales 1 4 16 [--master local[2]]

For each N = rows × scale, a generated table of N rows (uid, two scores with ties) is written to Parquet once,
then timed, in one session:

- ``bucketed``: :func:`clipsift.jobs.cutoffs.rank_plan` + :func:`with_ordinal_rank` for both columns (what
  ``sum_of_ranks`` runs), buckets = shuffle partitions sized to the input as ``select`` sizes them (at least 8);
- ``global``: ``ROW_NUMBER() OVER (ORDER BY score, uid)`` for both columns (one task orders every row).

Both write their rank sums to Spark's ``noop`` sink; the sums are checked equal at the smallest N. Reported:
seconds, the growth exponent between scales (time ∝ N^slope), and the tasks of the widest stage (Spark's status
tracker). Nothing fails on a slow result.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _widest_stage(spark: Any, since: int) -> int:
    tracker = spark.sparkContext.statusTracker()
    widest = 0
    for job in tracker.getJobIdsForGroup(None):
        if job < since:
            continue
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else []:
            s = tracker.getStageInfo(stage)
            widest = max(widest, s.numTasks if s else 0)
    return widest


def _last_job(spark: Any) -> int:
    ids = spark.sparkContext.statusTracker().getJobIdsForGroup(None)
    return max(ids) + 1 if ids else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from clipsift.jobs.cutoffs import rank_plan, with_ordinal_rank
    from clipsift.jobs.session import get_spark, shuffle_partitions

    spark = get_spark("clipsift-bench-ranks", {"spark.master": args.master, "spark.ui.showConsoleProgress": "false"})
    work = Path(tempfile.mkdtemp(prefix="clipsift-bench-ranks-"))
    columns = ("a", "b")
    results: list[dict[str, Any]] = []
    for scale in args.scales:
        n = args.rows * scale
        path = str(work / f"n{n}")
        spark.range(n).select(
            F.sha2(F.col("id").cast("string"), 256).substr(1, 32).alias("uid"),
            F.round(F.rand(1) * 1000, 1).alias("a"),  # 10,001 distinct values: ties
            F.randn(2).alias("b"),
        ).write.parquet(path)
        df = spark.read.parquet(path)
        size = sum(f.stat().st_size for f in Path(path).glob("*.parquet"))
        buckets = shuffle_partitions(size)
        row: dict[str, Any] = {"rows": n, "bytes": size, "buckets": buckets}
        for case in ("bucketed", "global"):
            since, began = _last_job(spark), time.perf_counter()
            if case == "bucketed":
                with_ranks = df
                plans = [rank_plan(df, c, buckets) for c in columns]
                for i, plan in enumerate(plans):
                    with_ranks = with_ordinal_rank(with_ranks, plan, f"r{i}")
            else:
                with_ranks = df
                for i, c in enumerate(columns):
                    with_ranks = with_ranks.withColumn(f"r{i}", F.row_number().over(Window.orderBy(c, "uid")) - 1)
            sums = with_ranks.select("uid", (F.col("r0") + F.col("r1")).alias("rank_sum"))
            sums.write.format("noop").mode("overwrite").save()
            row[f"{case}_s"] = round(time.perf_counter() - began, 2)
            row[f"{case}_widest_stage_tasks"] = _widest_stage(spark, since)
            if scale == args.scales[0]:
                row[f"{case}_sums"] = sums
        if scale == args.scales[0]:
            a, b = row.pop("bucketed_sums"), row.pop("global_sums")
            row["equal_sums"] = a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0
        results.append(row)
        print(json.dumps(row), flush=True)
    for case in ("bucketed", "global"):
        first, last = results[0], results[-1]
        slope = math.log(last[f"{case}_s"] / first[f"{case}_s"]) / math.log(last["rows"] / first["rows"])
        print(f"{case}: time ∝ N^{slope:.2f} from {first['rows']:,} to {last['rows']:,} rows")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_ranks.json").write_text(json.dumps(results, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
