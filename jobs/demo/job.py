"""``clipsift demo``: a synthetic DataComp-style pool, scored and selected, with a short summary.

Reads:  nothing (the pool is generated).
Writes: ``<out>/pool/`` (shards + target), ``<out>/score.yaml``, ``<out>/select.yaml``, ``<out>/report.yaml``,
        the score table ``<out>/scores`` with its runs and selections tables, ``<out>/ncl30_ns20.npy``, and the
        run's report ``<out>/report.html`` (``clipsift report``: open it in a browser).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import report, score, select
from clipsift.jobs.config import ReportConfig, ScoreConfig, SelectConfig, load
from clipsift.jobs.demo.synth import SynthSpec, generate_pool, generate_target
from clipsift.jobs.session import JARS_ENV, get_spark

SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.showConsoleProgress": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.driver.memory": "4g",
    "spark.log.level": "ERROR",
}


def write_configs(out: Path, *, batch_size: int, rounds: int) -> tuple[Path, Path]:
    """The demo's score and select YAML files (a user can copy and edit them)."""
    score_cfg = {
        "input": {"kind": "datacomp", "path": str(out / "pool" / "shards"), "arch": "b32"},
        "output": {"path": str(out / "scores")},
        "negclip": {"rounds": rounds, "batch_size": batch_size, "tau": 0.01, "seed": 0, "grouping": "shard"},
        "normsim": {"targets": [{"name": "target", "path": str(out / "pool" / "target.npy")}], "norms": ["2", "inf"]},
        # The label-free CLIP-powered selection scores (sas, sds within k-means clusters of the images).
        "baselines": {"kmeans": {"clusters": 64, "iterations": 10, "seed": 0}},
        "clipselect": {"enabled": True, "k": 10},
        "spark": {"app_name": "clipsift-demo", "conf": SPARK_CONF, "local_catalog": str(out / "catalog")},
    }
    select_cfg = {
        "scores": {"path": str(out / "scores")},
        "selections": [
            {"name": "clipscore30", "rule": "top_fraction", "column": "clip_score", "fraction": 0.3,
             "counting": "datacomp"},
            {"name": "ncl30", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3},
            {"name": "ncl30_ns20", "rule": "sequential", "column": "negclip_loss", "fraction": 0.3,
             "then_column": "normsim_inf_target", "then_fraction": 0.2, "export_npy": str(out / "ncl30_ns20.npy")},
            {"name": "ranks20", "rule": "sum_of_ranks", "columns": ["negclip_loss", "normsim_inf_target"],
             "fraction": 0.2},
            {"name": "both30", "rule": "intersect", "of": ["clipscore30", "ncl30"]},
            {"name": "clipselect30", "rule": "clipselect", "fraction": 0.3, "lam": 0.1},
        ],
        "spark": {"app_name": "clipsift-demo", "conf": SPARK_CONF, "local_catalog": str(out / "catalog")},
    }  # fmt: skip
    score_path, select_path = out / "score.yaml", out / "select.yaml"
    score_path.write_text(yaml.safe_dump(score_cfg, sort_keys=False))
    select_path.write_text(yaml.safe_dump(select_cfg, sort_keys=False))
    return score_path, select_path


def write_report_config(out: Path) -> Path:
    """The demo's report YAML (``clipsift report --config <out>/report.yaml`` writes the page again)."""
    cfg = {
        "scores": {"path": str(out / "scores")},
        "output": str(out / "report.html"),
        "samples": {"per_group": 6, "seed": 0},
        "spark": {"app_name": "clipsift-demo", "conf": SPARK_CONF, "local_catalog": str(out / "catalog")},
    }
    path = out / "report.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def summarize(spark: SparkSession, out: Path, run_id: str) -> str:
    """How CLIPScore, negCLIPLoss and the CLIP-powered selection treat each planted kind of row."""
    kinds = (
        spark.read.option("pathGlobFilter", "*.parquet")
        .parquet(str(out / "pool" / "shards"))
        .select("uid", "synthetic_kind")
    )
    scores = spark.read.format("delta").load(str(out / "scores")).where(F.col("run_id") == run_id)
    cs = spark.table("clipscore30").select("uid", F.lit(1).alias("in_cs"))
    ncl = spark.table("ncl30").select("uid", F.lit(1).alias("in_ncl"))
    cps = spark.table("clipselect30").select("uid", F.lit(1).alias("in_cps"))
    rows = (
        scores.join(kinds, "uid", "left")
        .join(cs, "uid", "left")
        .join(ncl, "uid", "left")
        .join(cps, "uid", "left")
        .groupBy("synthetic_kind")
        .agg(
            F.count("*").alias("rows"),
            F.avg("clip_score").alias("clip"),
            F.avg("negclip_loss").alias("ncl"),
            F.avg(F.coalesce("in_cs", F.lit(0))).alias("cs_top"),
            F.avg(F.coalesce("in_ncl", F.lit(0))).alias("ncl_top"),
            F.avg(F.coalesce("in_cps", F.lit(0))).alias("cps_top"),
            F.avg("sds").alias("sds"),
        )
        .orderBy("synthetic_kind")
        .collect()
    )
    lines = [
        "| kind | rows | mean CLIPScore | mean negCLIPLoss | mean SDS | in CLIPScore top 30% | "
        "in negCLIPLoss top 30% | in CLIP-powered top 30% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['synthetic_kind']} | {r['rows']} | {r['clip']:.3f} | {r['ncl']:.3f} | {r['sds']:.3f} | "
            f"{100 * r['cs_top']:.1f}% | {100 * r['ncl_top']:.1f}% | {100 * r['cps_top']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift demo --out DIR [--rows N]``."""
    parser = argparse.ArgumentParser(prog="clipsift demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo-output", help="folder for everything the demo writes")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8192, help="negCLIPLoss B (the paper: 32768)")
    parser.add_argument("--rounds", type=int, default=5, help="negCLIPLoss K (the paper: 10)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    spec = SynthSpec(n_rows=args.rows, n_shards=args.shards, dim=512)
    generate_pool(out / "pool" / "shards", spec)
    generate_target(out / "pool" / "target.npy", n_rows=2000, spec=spec)
    print(f"clipsift demo: generated {args.rows} rows in {args.shards} shards + a 2000-row target "
          f"({time.time() - t0:.1f}s) under {out / 'pool'}")  # fmt: skip
    score_path, select_path = write_configs(out, batch_size=args.batch_size, rounds=args.rounds)

    score_cfg = load(ScoreConfig, score_path)
    spark = get_spark(score_cfg.spark.app_name, score_cfg.spark.conf, score_cfg.spark.local_catalog)
    result = score.run(spark, score_cfg)
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(result.by_status.items()))
    print(f"clipsift demo: scored {result.rows_out} of {result.rows_in} rows ({statuses}) as run "
          f"{result.run_id} in {result.seconds:.1f}s -> {out / 'scores'}")  # fmt: skip
    selections = select.run(spark, load(SelectConfig, select_path))
    for s in selections:
        print(f"clipsift demo: view {s.view}: {s.rows} of {s.pool_rows} rows ({s.rule})")
    print(
        "\nHow each planted kind of row fares (generic captions: CLIPScore likes them, negCLIPLoss does not;"
        " duplicates: the CLIP-powered selection's diversity term demotes them):\n"
    )
    print(summarize(spark, out, result.run_id))
    report_path = write_report_config(out)
    page = report.run(spark, load(ReportConfig, report_path))
    print(f"\nclipsift demo: the report of this run (open it in a browser): {page.output}")
    print(f"\nclipsift demo: done in {time.time() - t0:.1f}s. Configs: {score_path}, {select_path}")
    jars = os.environ.get(JARS_ENV)
    command = f"{JARS_ENV}={jars} " if jars else ""  # where make setup put Delta's jars, as this run found them
    command += f"{sys.executable} -m clipsift sql --catalog {out / 'catalog'}"
    print(f'The views outlive the demo: {command} "SELECT COUNT(*) FROM ncl30"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
