"""``clipsift select``: named selections over a score table, each a SQL view.

Reads:  the score table (``scores``) and its runs table ``<scores>_runs`` (to find the latest run).
Writes: one view per selection (``<view_schema>.<view_prefix><name>``), the selections table
        ``<scores>_selections`` (one row per run and selection: rule, parameters, cut-offs, size,
        the view's SQL), and on request a Delta table of the selected uids and DataComp's ``.npy``.

Cut-offs are computed in Spark (:mod:`clipsift.jobs.cutoffs`) and written into each view as typed literals,
so a view is plain SQL over the score table: query it, join it, or re-select without re-scoring.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, SelectConfig, SelectionConfig, to_dict
from clipsift.jobs.cutoffs import Cutoff, clipselect_criterion, keep_condition, keep_sql, sql_double, top_n_cutoff
from clipsift.jobs.io import quote_ident, sql_string
from clipsift.jobs.session import Progress, job_main
from clipsift.jobs.transforms import CLIPSELECT_COLUMNS
from clipsift.udfs.schemas import STATUS


@dataclass(frozen=True)
class SelectionResult:
    """One selection as created."""

    name: str
    view: str
    rule: str
    rows: int
    pool_rows: int
    cutoffs: dict[str, object] = field(default_factory=dict)
    sql: str = ""


def run(spark: SparkSession, cfg: SelectConfig) -> list[SelectionResult]:
    """Create (or replace) every selection's view over one run of the score table."""
    if not io.table_exists(spark, cfg.scores):
        key = "scores.table" if cfg.scores.table is not None else "scores.path"
        raise ConfigError(key, f"no score table at {cfg.scores.label}; run clipsift score first, or fix the {key}")
    run_id = cfg.run_id or latest_run(spark, cfg)
    for where in (cfg.view_schema, *(s.materialize for s in cfg.selections)):
        io.ensure_schema(spark, where)
    scores = io.read_table_ref(spark, cfg.scores)
    pool = scores.where((F.col("run_id") == run_id) & (F.col("status") == STATUS.OK))
    pool_rows = pool.count()
    if pool_rows == 0:
        raise ConfigError("run_id", f"run '{run_id}' of {cfg.scores.label} has no rows with status 'ok'; check run_id")
    types = dict(scores.dtypes)
    for sel in cfg.selections:
        for c in _columns_used(sel):
            if c not in scores.columns:
                raise ConfigError(
                    f"selections[{sel.name}]",
                    f"column '{c}' is not in the score table (has {', '.join(scores.columns)})",
                )
        if sel.rule == "flag" and sel.column is not None and types[sel.column] != "boolean":
            found = types[sel.column]
            raise ConfigError(
                f"selections[{sel.name}].column", f"rule 'flag' needs a boolean column; '{sel.column}' is {found}"
            )
    base = f"{io.sql_table(cfg.scores)} WHERE `run_id` = {sql_string(run_id)} AND `status` = {sql_string(STATUS.OK)}"
    columns = ", ".join(quote_ident(c) for c in scores.columns)
    views: dict[str, str] = {}
    results = []
    progress = Progress(spark, "clipsift select")
    for sel in cfg.selections:
        with progress.step(f"view {sel.name} ({sel.rule})") as step:
            condition, source, cutoffs = _render(sel, pool, pool_rows, base, views)
            view = _view_name(cfg, sel.name)
            sql = f"SELECT {columns} FROM {source} AND ({condition})"
            spark.sql(f"CREATE OR REPLACE VIEW {view} AS {sql}")
            views[sel.name] = view
            rows = spark.table(view).count()
            step["rows"] = rows
            results.append(SelectionResult(sel.name, view, sel.rule, rows, pool_rows, cutoffs, sql))
            if sel.materialize is not None:
                io.overwrite_table(
                    spark.table(view).select("uid", F.lit(sel.name).alias("selection"), "run_id"), sel.materialize
                )
            if sel.export_npy is not None:
                export_subset(spark.table(view), sel.export_npy)
    _record(spark, cfg, run_id, results)
    return results


def latest_run(spark: SparkSession, cfg: SelectConfig) -> str:
    """The most recent run id in the score table's runs table."""
    runs_ref = io.sibling(cfg.scores, "runs")
    if not io.table_exists(spark, runs_ref):
        where = f"beside {cfg.scores.label}"
        raise ConfigError("scores", f"no runs table '{runs_ref.label}' {where}; run clipsift score first")
    row = io.read_table_ref(spark, runs_ref).orderBy(F.col("started_at").desc()).select("run_id").first()
    if row is None:
        raise ConfigError("scores", f"runs table '{runs_ref.label}' is empty; run clipsift score first")
    return str(row["run_id"])


def _columns_used(sel: SelectionConfig) -> list[str]:
    if sel.rule == "clipselect":
        return list(sel.columns or CLIPSELECT_COLUMNS)
    return [c for c in (sel.column, sel.then_column, *sel.columns) if c]


def _render(
    sel: SelectionConfig, pool: DataFrame, n: int, base: str, views: dict[str, str]
) -> tuple[str, str, dict[str, object]]:
    """(SQL condition, FROM clause up to its WHERE, cut-offs) of one selection."""
    source = base
    if sel.rule == "threshold":
        assert sel.column is not None
        col = quote_ident(sel.column)
        parts = [f"{col} IS NOT NULL"]
        if sel.min is not None:
            parts.append(f"{col} >= {sql_double(sel.min)}")
        if sel.max is not None:
            parts.append(f"{col} <= {sql_double(sel.max)}")
        return " AND ".join(parts), source, {"min": sel.min, "max": sel.max}
    if sel.rule == "flag":
        assert sel.column is not None
        return f"{quote_ident(sel.column)} IS TRUE", source, {}
    if sel.rule == "top_fraction":
        assert sel.column is not None and sel.fraction is not None
        keep = int(n * sel.fraction)
        if sel.counting == "datacomp":
            cut = top_n_cutoff(pool, sel.column, keep + 1, ties=True)
        else:
            cut = top_n_cutoff(pool, sel.column, keep)
        return keep_sql(sel.column, cut), source, {sel.column: _cut(cut), "n": keep}
    if sel.rule == "sequential":
        assert sel.column and sel.then_column and sel.fraction is not None and sel.then_fraction is not None
        n1, n2 = int(n * sel.fraction), int(n * sel.then_fraction)
        cut1 = top_n_cutoff(pool, sel.column, n1)
        cond = keep_sql(sel.column, cut1)
        cutoffs: dict[str, object] = {sel.column: _cut(cut1), "n1": n1}
        if n2 != n1:
            cut2 = top_n_cutoff(pool.where(keep_condition(sel.column, cut1)), sel.then_column, n2)
            cond = f"{cond} AND {keep_sql(sel.then_column, cut2)}"
            cutoffs.update({sel.then_column: _cut(cut2), "n2": n2})
        return cond, source, cutoffs
    if sel.rule == "sum_of_ranks":
        assert sel.fraction is not None
        expr = " + ".join(f"(RANK() OVER (ORDER BY {quote_ident(c)} ASC) - 1) / {n}D" for c in sel.columns)
        ranked = pool.where(" AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in sel.columns)).withColumn(
            "_rank_sum", F.expr(expr)
        )
        keep = int(n * sel.fraction)
        cut = top_n_cutoff(ranked, "_rank_sum", keep)
        not_null = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in sel.columns)
        source = f"(SELECT *, {expr} AS `_rank_sum` FROM {base} AND {not_null}) AS ranked WHERE TRUE"
        return keep_sql("_rank_sum", cut), source, {"rank_sum": _cut(cut), "n": keep}
    if sel.rule == "clipselect":
        assert sel.fraction is not None
        sas, sds = sel.columns or CLIPSELECT_COLUMNS
        criterion = clipselect_criterion(pool, sas, sds, 0.1 if sel.lam is None else sel.lam, f"selections[{sel.name}]")
        expr, params = criterion.score, criterion.params
        scored = pool.where(F.col(sas).isNotNull()).withColumn("_criterion", F.expr(expr))
        keep = int(n * sel.fraction)
        cut = top_n_cutoff(scored, "_criterion", keep)
        source = f"(SELECT *, {expr} AS `_criterion` FROM {base} AND {quote_ident(sas)} IS NOT NULL) AS c WHERE TRUE"
        return keep_sql("_criterion", cut), source, {**params, "criterion": _cut(cut), "n": keep}
    members = [f"`uid` IN (SELECT `uid` FROM {views[name]})" for name in sel.of]
    joiner = " AND " if sel.rule == "intersect" else " OR "
    return joiner.join(members), source, {"of": list(sel.of)}


def _cut(cut: Cutoff | None) -> dict[str, object] | None:
    return None if cut is None else asdict(cut)


def _view_name(cfg: SelectConfig, name: str) -> str:
    view = quote_ident(f"{cfg.view_prefix}{name}")
    if cfg.view_schema:
        return ".".join(quote_ident(p) for p in cfg.view_schema.split(".")) + "." + view
    return view


def export_subset(df: DataFrame, path: str) -> int:
    """Write DataComp's subset ``.npy`` (dtype ``u8,u8``, sorted) of the uids in ``df``; returns rows.

    Raises:
        ValueError: when a uid is not 32 hex characters (DataComp's format).
    """
    bad = df.where(~F.col("uid").rlike("^[0-9a-fA-F]{32}$")).select("uid").first()
    if bad is not None:
        raise ValueError(f"export_npy needs DataComp uids (32 hex characters); got '{bad['uid']}'")
    pairs = [(int(u[:16], 16), int(u[16:], 16)) for (u,) in df.select("uid").toLocalIterator()]
    arr = np.array(pairs, dtype=np.dtype("u8,u8")) if pairs else np.zeros(0, dtype=np.dtype("u8,u8"))
    io.write_subset_npy(arr, path)
    return len(pairs)


def _record(spark: SparkSession, cfg: SelectConfig, run_id: str, results: Sequence[SelectionResult]) -> None:
    now = datetime.now(timezone.utc)
    params = {s.name: to_dict(s) for s in cfg.selections}
    rows = [
        (run_id, r.name, r.view, r.rule, json.dumps(params[r.name], sort_keys=True),
         json.dumps(r.cutoffs, sort_keys=True), r.rows, r.pool_rows, r.sql, now)
        for r in results
    ]  # fmt: skip
    df = spark.createDataFrame(
        rows,
        "run_id string, name string, view string, rule string, params string, cutoffs string, rows bigint, "
        "pool_rows bigint, sql string, created_at timestamp",
    )
    ref = io.sibling(cfg.scores, "selections")
    names = ", ".join(sql_string(r.name) for r in results)
    if io.table_exists(spark, ref):
        # Replace this run's rows for these selection names; keep the others.
        old = io.read_table_ref(spark, ref).where(~((F.col("run_id") == run_id) & F.expr(f"name IN ({names})")))
        df = old.unionByName(df).localCheckpoint()
    io.overwrite_table(df, ref)


def recreate_views(spark: SparkSession, cfg: SelectConfig) -> list[str]:
    """Create again the views recorded in ``<scores>_selections`` (the latest SQL of each), a view before the
    views that read it, e.g. in a new session whose catalog lost them. Returns the views in the order created."""
    ref = io.sibling(cfg.scores, "selections")
    if not io.table_exists(spark, ref):
        raise ConfigError("scores", f"no selections table '{ref.label}'; run clipsift select first")
    latest = Window.partitionBy("view").orderBy(F.col("created_at").desc())
    recorded = io.read_table_ref(spark, ref).withColumn("_n", F.row_number().over(latest)).where("_n = 1")
    sql = {r["view"]: r["sql"] for r in recorded.select("view", "sql").collect()}  # one row per view
    io.ensure_schema(spark, cfg.view_schema)
    order = _dependency_order({view: {v for v in sql if v != view and v in text} for view, text in sql.items()})
    for view in order:
        spark.sql(f"CREATE OR REPLACE VIEW {view} AS {sql[view]}")
    return order


def _dependency_order(needs: dict[str, set[str]]) -> list[str]:
    """Names with each after the names it needs (Kahn's algorithm; ties by name, so the order is stable)."""
    order: list[str] = []
    waiting = {name: set(deps) for name, deps in needs.items()}
    while waiting:
        ready = sorted(name for name, deps in waiting.items() if not deps)
        if not ready:
            raise ValueError(f"views that read each other in a cycle: {sorted(waiting)}")
        for name in ready:
            order.append(name)
            del waiting[name]
        for deps in waiting.values():
            deps.difference_update(ready)
    return order


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift select --config select.yaml [--set key=value ...] [--recreate]``; 2 on a bad config
    or path. ``--recreate`` creates the recorded views again instead of selecting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--recreate" in args:
        args.remove("--recreate")
        return job_main("clipsift select", SelectConfig, recreate_views, _recreated, args)
    return job_main("clipsift select", SelectConfig, run, _summary, args)


def _recreated(views: list[str]) -> str:
    return "\n".join(f"clipsift select: recreated {view}" for view in views)


def _summary(results: list[SelectionResult]) -> str:
    return "\n".join(f"clipsift select: {r.view}: {r.rows} of {r.pool_rows} rows ({r.rule})" for r in results)


if __name__ == "__main__":
    sys.exit(main())
