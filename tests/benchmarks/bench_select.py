"""``clipsift select`` against the same selections written by hand in SQL, side by side in one Spark session.

    python -m tests.benchmarks.bench_select --rows 100000 [--repeats 3] [--out DIR]

The score table is generated (the demo's score columns, random values, one run) and written with delta-rs;
then, in one session built by :func:`clipsift.jobs.session.get_spark` with its defaults, each round times

- ``select``: :func:`clipsift.jobs.select.run` on the demo's six selections (top fraction with DataComp's
  counting, top fraction, sequential, sum of ranks, intersect, the CLIP-powered criterion): it finds the run's
  columns, computes every cut-off, creates the views, counts them and records them in ``_selections``;
- ``bare``: the same six selections as a user would write them by hand (``ORDER BY ... LIMIT``, ``RANK()``
  windows, a subquery for the CLIP-powered bounds), each created as a view and counted.

Both produce the same rows (checked each round; the CLIP-powered criterion is compared by overlap, since the
hand-written means are summed in another order). The figure is the ratio of the medians, and the fixed
cost is select's time minus the bare queries'. Nothing fails on a slow result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

RUN_ID = "run-bench"
SEED = 0


def write_scores(path: Path, rows: int) -> None:
    """A score table of ``rows`` ok rows and 1 % failed rows (null scores), the demo's score columns."""
    from deltalake import write_deltalake

    rng = np.random.default_rng(SEED)
    total = rows + rows // 100
    status = np.array(["ok"] * rows + ["undecodable_image"] * (total - rows), dtype=object)
    rng.shuffle(status)
    ok = status == "ok"

    def score(scale: float, shift: float = 0.0) -> pa.Array:
        values = rng.normal(shift, scale, total)
        return pa.array(values, mask=~ok)

    sas = rng.normal(0.3, 0.05, total)
    table = pa.table(
        {
            "uid": pa.array([f"{r:016x}{i:016x}" for i, r in enumerate(rng.integers(0, 1 << 62, total).tolist())]),
            "status": pa.array(status, pa.string()),
            "clip_score": score(0.05, 0.3),
            "negclip_loss": score(0.5, -2.0),
            "normsim_inf_target": score(0.1, 0.5),
            "normsim_2_target": score(0.1, 3.0),
            "sas": pa.array(sas, mask=~ok),
            "sds": pa.array(rng.gamma(2.0, 0.1, total), mask=~ok | (rng.random(total) < 0.01)),
            "text": pa.array([f"caption {i}" for i in range(total)]),
            "run_id": pa.array([RUN_ID] * total),
        }
    )  # fmt: skip
    write_deltalake(str(path), table, partition_by=["run_id"])


def selections() -> list[dict[str, Any]]:
    """The demo's six selections (jobs/demo/job.py), without the export."""
    return [
        {"name": "clipscore30", "rule": "top_fraction", "column": "clip_score", "fraction": 0.3,
         "counting": "datacomp"},
        {"name": "ncl30", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3},
        {"name": "ncl30_ns20", "rule": "sequential", "column": "negclip_loss", "fraction": 0.3,
         "then_column": "normsim_inf_target", "then_fraction": 0.2},
        {"name": "ranks20", "rule": "sum_of_ranks", "columns": ["negclip_loss", "normsim_inf_target"], "fraction": 0.2},
        {"name": "both30", "rule": "intersect", "of": ["clipscore30", "ncl30"]},
        {"name": "clipselect30", "rule": "clipselect", "fraction": 0.3, "lam": 0.1},
    ]  # fmt: skip


def bare_sql(table: Path, n: int) -> dict[str, str]:
    """The same selections by hand: each a query over the run's ok rows (``n`` of them)."""
    pool = f"(SELECT * FROM delta.`{table}` WHERE run_id = '{RUN_ID}' AND status = 'ok')"
    k30, k20 = int(n * 0.3), int(n * 0.2)
    return {
        "clipscore30": f"SELECT * FROM {pool} WHERE clip_score >= "
        f"(SELECT clip_score FROM {pool} ORDER BY clip_score DESC LIMIT 1 OFFSET {k30})",
        "ncl30": f"SELECT * FROM {pool} ORDER BY negclip_loss DESC, uid LIMIT {k30}",
        "ncl30_ns20": f"SELECT * FROM (SELECT * FROM {pool} ORDER BY negclip_loss DESC, uid LIMIT {k30}) "
        f"ORDER BY normsim_inf_target DESC, uid LIMIT {k20}",
        "ranks20": "SELECT * FROM (SELECT *, (RANK() OVER (ORDER BY negclip_loss) - 1) / "
        f"{n}D + (RANK() OVER (ORDER BY normsim_inf_target) - 1) / {n}D AS r FROM {pool}) "
        f"ORDER BY r DESC, uid LIMIT {k20}",
        "both30": "SELECT * FROM bare_clipscore30 WHERE uid IN (SELECT uid FROM bare_ncl30)",
        "clipselect30": f"""WITH b AS (SELECT min(sas) a0, max(sas) a1, min(sds) d0, max(sds) d1 FROM {pool}
                                  WHERE sas IS NOT NULL),
            x AS (SELECT p.*, (sas - a0) / (a1 - a0) AS sn, COALESCE((sds - d0) / (d1 - d0), 0D) AS dn
                  FROM {pool} p CROSS JOIN b WHERE sas IS NOT NULL),
            m AS (SELECT avg(sn) ms, avg(dn) md FROM x)
            SELECT x.* FROM x CROSS JOIN m ORDER BY sn / ms + 0.1D * dn / md DESC, uid LIMIT {k30}""",
    }


def run_bare(spark: Any, queries: dict[str, str]) -> dict[str, int]:
    """Create each hand-written selection as a view and count it, as ``select`` counts its views."""
    counts = {}
    for name, sql in queries.items():
        spark.sql(f"CREATE OR REPLACE TEMP VIEW bare_{name} AS {sql}")
        counts[name] = spark.table(f"bare_{name}").count()
    return counts


def same_rows(spark: Any, name: str) -> float:
    """Jaccard overlap of clipsift's view and the hand-written one."""
    ours = spark.table(f"bench_{name}").select("uid")
    bare = spark.table(f"bare_{name}").select("uid")
    both = ours.intersect(bare).count()
    return both / max(1, ours.union(bare).distinct().count())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json (default: print only)")
    args = parser.parse_args(argv)

    from clipsift.jobs import select
    from clipsift.jobs.config import SelectConfig, from_dict
    from clipsift.jobs.session import get_spark

    work = Path(tempfile.mkdtemp(prefix="clipsift-bench-select-"))
    table = work / "scores"
    write_scores(table, args.rows)
    spark = get_spark("clipsift-bench-select", {"spark.ui.showConsoleProgress": "false"})
    cfg = from_dict(
        SelectConfig,
        {"scores": {"path": str(table)}, "run_id": RUN_ID, "view_prefix": "bench_", "selections": selections()},
    )
    queries = bare_sql(table, args.rows)
    times: dict[str, list[float]] = {"select": [], "bare": []}
    checked: dict[str, Any] = {}
    for round_ in range(args.repeats + 1):  # round 0 warms both up (JIT, Delta log cache) and is not counted
        for case in ("select", "bare") if round_ % 2 == 0 else ("bare", "select"):
            began = time.perf_counter()
            if case == "select":
                results = select.run(spark, cfg)
            else:
                counts = run_bare(spark, queries)
            if round_ > 0:
                times[case].append(time.perf_counter() - began)
        ours = {r.name: r.rows for r in results}
        checked = {name: {"select": ours[name], "bare": counts[name], "jaccard": same_rows(spark, name)}
                   for name in queries}  # fmt: skip
    select_s, bare_s = statistics.median(times["select"]), statistics.median(times["bare"])
    result = {
        "command": "python -m tests.benchmarks.bench_select " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": args.rows,
        "shuffle_partitions_default": spark.conf.get("spark.sql.shuffle.partitions"),
        "snapshot_partitions": spark.conf.get("spark.databricks.delta.snapshotPartitions", None),
        "select_s": times["select"],
        "bare_s": times["bare"],
        "select_median_s": round(select_s, 2),
        "bare_median_s": round(bare_s, 2),
        "ratio_select_to_bare": round(select_s / bare_s, 2),
        "fixed_cost_s": round(select_s - bare_s, 2),
        "views": checked,
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_select.json").write_text(json.dumps(result, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
