"""The steps that once ran on one core, timed at N, 4N and 16N rows on a ``local-cluster`` (issue 16, item 2).

    python -m tests.benchmarks.bench_scaling --rows 250000 --scales 1 4 16 --dim 64 \\
        --master 'local-cluster[2,1,3072]' [--out DIR]

For each N = rows × scale, a generated pool (uid, two scores with ties, a unit ``image_emb`` of ``--dim``) is
written to Parquet once (4 files per 250k rows, so the input's tasks grow with N), then each step runs on it (after
one untimed round of every step at N / 10, so the JVM's start-up is not charged to the smallest N):

- ``ranks``: exact ordinal ranks of two score columns as ``sum_of_ranks`` computes them
  (:func:`clipsift.jobs.cutoffs.rank_plans` + :func:`with_ordinal_rank`, buckets sized to the input as ``select``
  sizes its shuffles), written to Spark's ``noop`` sink;
- ``normsim2d``: :func:`clipsift.jobs.normsim2d.normsim2_dynamic_survival` over the whole pool (no CLIPScore
  pre-filter), ``--iterations`` iterations from 100 % to 50 % of the rows; reported per iteration;
- ``kmeans_init``: MLlib k-means initialisation alone (``maxIter=0``) at ``--clusters`` centroids [100,000] from
  random rows, as ``baselines.kmeans.init: auto`` does above 2,000 clusters (faiss's and DataComp's init): a count
  and a distributed sample, the driver holding only the k chosen rows; and, for contrast, ``k-means||`` at
  ``--parallel-clusters`` [2,000] (its last step, a k-means++ over the candidates, runs on the driver).

Reported per step and N: seconds, the tasks of the widest stage and all tasks (Spark's status tracker), and the
growth exponent between the smallest and largest N (time ∝ N^slope). Nothing fails on a slow result.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROWS_PER_FILE = 62_500


def _tasks(spark: Any, since: int) -> tuple[int, int]:
    """(widest stage, all tasks) of the jobs started since job id ``since``."""
    tracker = spark.sparkContext.statusTracker()
    widest = total = 0
    for job in tracker.getJobIdsForGroup(None):
        if job < since:
            continue
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else []:
            s = tracker.getStageInfo(stage)
            tasks = s.numTasks if s else 0
            widest, total = max(widest, tasks), total + tasks
    return widest, total


def _next_job(spark: Any) -> int:
    ids = spark.sparkContext.statusTracker().getJobIdsForGroup(None)
    return max(ids) + 1 if ids else 0


def _generator(dim: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column("id").to_numpy()
            if len(ids) == 0:
                continue
            rng = np.random.default_rng(int(ids[0]))
            emb = rng.standard_normal((len(ids), dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            flat = pa.array(emb.reshape(-1), type=pa.float32())
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([f"{i:016x}" for i in ids]),
                    pa.array(np.round(rng.random(len(ids)) * 1000, 1)),  # 10,001 distinct values: ties
                    pa.array(rng.standard_normal(len(ids))),
                    pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32())),
                ],
                names=["uid", "a", "b", "image_emb"],
            )

    return generate


def _run_steps(spark: Any, df: Any, n: int, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Each step once on ``df`` (``n`` rows, ``size`` bytes): its seconds and tasks."""
    from pyspark.mllib.clustering import KMeans
    from pyspark.sql import functions as F

    from clipsift.jobs.config import NormSim2DConfig
    from clipsift.jobs.cutoffs import rank_plans, with_ordinal_rank
    from clipsift.jobs.normsim2d import normsim2_dynamic_survival
    from clipsift.jobs.session import shuffle_partitions

    def ranks() -> None:
        with_ranks = df
        for i, plan in enumerate(rank_plans(df, ["a", "b"], shuffle_partitions(size))):
            with_ranks = with_ordinal_rank(with_ranks, plan, f"r{i}")
        sums = with_ranks.select("uid", (F.col("r0") + F.col("r1")).alias("s"))
        sums.write.format("noop").mode("overwrite").save()

    def normsim2d() -> None:
        cfg = NormSim2DConfig(enabled=True, candidate_fraction=1.0, final_fraction=0.5, iterations=args.iterations)
        survival = normsim2_dynamic_survival(df.select("uid", "image_emb"), cfg=cfg, dim=args.dim, n_pool=n)
        survival.write.format("noop").mode("overwrite").save()

    # MLlib's initialisation is shared by ``pyspark.ml`` (the job's) and the RDD API; the latter is timed because
    # ``pyspark.ml``'s fit also computes the cluster sizes (one assignment pass, O(N k d)) even at maxIter=0.
    vectors = df.select("image_emb").rdd.map(lambda r: np.asarray(r[0], dtype=np.float64))

    def init(k: int, mode: str) -> Callable[[], object]:
        return lambda: KMeans.train(vectors, min(k, n), maxIterations=0, initializationMode=mode, seed=0)

    steps: list[tuple[str, Callable[[], object], int]] = [
        ("ranks", ranks, 1),
        ("normsim2d_per_iteration", normsim2d, args.iterations),
        ("kmeans_init_random", init(args.clusters, "random"), 1),
        ("kmeans_init_parallel", init(args.parallel_clusters, "k-means||"), 1),
    ]
    row: dict[str, Any] = {}
    for step, action, per in steps:
        since, began = _next_job(spark), time.perf_counter()
        action()
        row[f"{step}_s"] = round((time.perf_counter() - began) / per, 2)
        row[f"{step}_widest_stage_tasks"], row[f"{step}_tasks"] = _tasks(spark, since)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--clusters", type=int, default=100_000)
    parser.add_argument("--parallel-clusters", type=int, default=2_000)
    parser.add_argument("--master", default="local-cluster[2,1,3072]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from clipsift.jobs.session import get_spark

    conf = {
        "spark.master": args.master,
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": "3g",
        "spark.executor.memory": args.master.rsplit(",", 1)[-1].rstrip("]") + "m"
        if args.master.startswith("local-cluster")
        else "1g",
    }
    spark = get_spark("clipsift-bench-scaling", conf)
    work = Path(tempfile.mkdtemp(prefix="clipsift-bench-scaling-"))
    schema = "uid string, a double, b double, image_emb array<float>"
    results: list[dict[str, Any]] = []
    sizes = [max(args.rows // 10, 1000)] + [args.rows * scale for scale in args.scales]  # the first: a warm-up
    for i, n in enumerate(sizes):
        path = str(work / f"n{n}")
        files = max(2, math.ceil(n / ROWS_PER_FILE))
        spark.range(n, numPartitions=files).mapInArrow(_generator(args.dim), schema).write.parquet(path)
        df = spark.read.parquet(path)
        size = sum(f.stat().st_size for f in Path(path).glob("*.parquet"))
        row: dict[str, Any] = {"rows": n, "dim": args.dim, "bytes": size, "files": files}
        row.update(_run_steps(spark, df, n, size, args))
        if i == 0:
            print(f"warm-up at {n:,} rows done (not reported)", flush=True)
            continue
        results.append(row)
        print(json.dumps(row), flush=True)

    steps = [k[:-2] for k in results[0] if k.endswith("_s")]
    first, last = results[0], results[-1]
    lines = [f"{'step':<26} " + " ".join(f"{r['rows']:>12,}" for r in results) + "   slope   tasks (widest stage)"]
    for step in steps:
        times = " ".join(f"{r[f'{step}_s']:>11.1f}s" for r in results)
        slope = math.log(last[f"{step}_s"] / first[f"{step}_s"]) / math.log(last["rows"] / first["rows"])
        tasks = " / ".join(f"{r[f'{step}_tasks']} ({r[f'{step}_widest_stage_tasks']})" for r in results)
        lines.append(f"{step:<26} {times}   {slope:5.2f}   {tasks}")
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_scaling.json").write_text(json.dumps(results, indent=2))
        (args.out / "bench_scaling.txt").write_text("\n".join(lines) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
