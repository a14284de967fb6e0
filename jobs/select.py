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
import operator
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import reduce

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, SelectConfig, SelectionConfig, TableRef, to_dict
from clipsift.jobs.cutoffs import (
    Cutoff,
    clipselect_criterion,
    keep_condition,
    keep_sql,
    rank_plans,
    sql_double,
    top_n_cutoff,
    with_ordinal_rank,
)
from clipsift.jobs.imports import import_condition, import_uids
from clipsift.jobs.io import quote_ident, sql_string
from clipsift.jobs.session import Progress, failpoint, job_main, sized_shuffle
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


@dataclass(frozen=True)
class ScoreRun:
    """One score run a selection reads: the main one (``alias`` None) or one listed under ``join``."""

    alias: str | None
    scores: TableRef
    run_id: str


@dataclass(frozen=True)
class _Rendered:
    """One rule as SQL over its population: keep the rows where ``condition`` holds, after computing ``derived``
    (a column name and its SQL expression, e.g. a rank sum) over the population's rows that satisfy ``prefilter``."""

    condition: str
    cutoffs: dict[str, object]
    derived: tuple[str, str] | None = None
    prefilter: str | None = None
    rows: int | None = None
    """The view's size when the rule fixes it (an exact top n), so it need not be counted again."""


@dataclass(frozen=True)
class _Population:
    """The rows a rule selects from, with the counts of one pass over them: all rows, non-null rows per column."""

    df: DataFrame
    rows: int
    non_null: dict[tuple[str, ...], int]
    """Rows where every column of the key is not null (a one-column key for a single score)."""


def _population(df: DataFrame, selections: Sequence[SelectionConfig]) -> _Population:
    """Count ``df``'s rows, and the rows each rule ranks (its columns not null), in one aggregate."""
    keys = sorted({key for sel in selections for key in _ranked_columns(sel)})
    every = [F.count(F.when(reduce(operator.and_, (F.col(c).isNotNull() for c in key)), 1)) for key in keys]
    counts = df.agg(F.count(F.lit(1)), *every).first()
    assert counts is not None
    return _Population(df, int(counts[0]), {key: int(counts[i + 1]) for i, key in enumerate(keys)})


def _ranked_columns(sel: SelectionConfig) -> list[tuple[str, ...]]:
    """The pool columns whose non-null rows a rule ranks: one key per cut-off it computes over the population."""
    r = _resolved(sel)
    if r.rule in ("top_fraction", "sequential") and r.column is not None:
        return [(r.column,)]
    if r.rule == "sum_of_ranks":
        return [tuple(r.columns)]
    if r.rule == "clipselect":
        return [(joined_column((sel.columns or CLIPSELECT_COLUMNS)[0]),)]
    return []


def run(spark: SparkSession, cfg: SelectConfig) -> list[SelectionResult]:
    """Create (or replace) every selection's view over one run of the score table (and the runs it joins)."""
    runs = score_runs(spark, cfg)
    for where in (cfg.view_schema, *(s.materialize for s in cfg.selections)):
        io.ensure_schema(spark, where)
    input_bytes = sum(io.table_bytes(spark, t) for t in {r.scores.label: r.scores for r in runs}.values())
    with sized_shuffle(spark, input_bytes):
        return _run(spark, cfg, runs)


def _run(spark: SparkSession, cfg: SelectConfig, runs: list[ScoreRun]) -> list[SelectionResult]:
    pool_sql = _pool_sql(spark, runs)
    pool = spark.sql(pool_sql)
    _check_columns(cfg, pool)
    whole = _population(pool, [s for s in cfg.selections if s.within is None])
    pool_rows = whole.rows
    if pool_rows == 0:
        which = " and ".join(f"'{r.run_id}' of {r.scores.label}" for r in runs)
        raise ConfigError("run_id", f"no row has status 'ok' in run {which}; check run_id (and join)")
    columns = ", ".join(quote_ident(c) for c in pool.columns)
    common: dict[str, object] = {}
    if cfg.join:
        ok = _ok_rows(spark, runs)
        common["runs"] = [{"alias": r.alias, "scores": r.scores.label, "run_id": r.run_id, "ok_rows": ok[r.alias]}
                          for r in runs]  # fmt: skip
    views: dict[str, str] = {}
    results = []
    progress = Progress(spark, "clipsift select")
    for i, sel in enumerate(cfg.selections):
        with progress.step(f"view {sel.name} ({sel.rule})") as step:
            population, within = whole, None
            if sel.within is not None:
                within = f"`uid` IN (SELECT `uid` FROM {views[sel.within]})"
                members = pool.join(spark.table(views[sel.within]).select("uid"), "uid", "left_semi")
                population = _population(members, [sel])
            view = _view_name(cfg, sel.name)
            if sel.rule == "import":
                assert sel.source is not None
                imports = io.sibling(cfg.scores, "imports")
                got = import_uids(spark, sel.source, imports, pool, pool_rows, f"selections[{i}].source")
                rendered = _Rendered(import_condition(imports, got.import_id), got.record())
            elif sel.rule == "sum_of_ranks":
                ranks = io.sibling(cfg.scores, "ranks")
                label = f"{cfg.view_schema}.{cfg.view_prefix}{sel.name}" if cfg.view_schema else view.strip("`")
                rendered = _sum_of_ranks(_resolved(sel), population, ranks, runs[0].run_id, label)
            else:
                rendered = _render(_resolved(sel), population, views)
            sql = _view_sql(columns, pool_sql, within, rendered)
            spark.sql(f"CREATE OR REPLACE VIEW {view} AS {sql}")
            failpoint("select:view-created")
            views[sel.name] = view
            rows = spark.table(view).count() if rendered.rows is None else rendered.rows
            step["rows"] = rows
            scope = {"within": sel.within, "population": population.rows} if within else {}
            cutoffs = {**rendered.cutoffs, **scope, **common}
            results.append(SelectionResult(sel.name, view, sel.rule, rows, pool_rows, cutoffs, sql))
            if sel.materialize is not None:
                io.overwrite_table(
                    spark.table(view).select("uid", F.lit(sel.name).alias("selection"), "run_id"), sel.materialize
                )
            if sel.export_npy is not None:
                export_subset(spark.table(view), sel.export_npy)
    _record(spark, cfg, runs[0].run_id, results)
    return results


def score_runs(spark: SparkSession, cfg: SelectConfig) -> list[ScoreRun]:
    """The main run, then each joined run, with run ids resolved (default: the latest run of each table).

    Raises:
        ConfigError: a score table that does not exist, or one without runs.
    """
    runs = [ScoreRun(None, cfg.scores, cfg.run_id or "")]
    runs += [ScoreRun(j.alias, j.scores or cfg.scores, j.run_id or "") for j in cfg.join]
    resolved = []
    for i, r in enumerate(runs):
        key = "scores" if r.alias is None else f"join[{i - 1}].scores"
        if not io.table_exists(spark, r.scores):
            where = "table" if r.scores.table is not None else "path"
            message = f"no score table at {r.scores.label}; run clipsift score first, or fix the {where}"
            raise ConfigError(f"{key}.{where}", message)
        resolved.append(ScoreRun(r.alias, r.scores, r.run_id or latest_run(spark, r.scores, key)))
    return resolved


def latest_run(spark: SparkSession, scores: TableRef, key: str = "scores") -> str:
    """The most recent run id in a score table's runs table.

    Raises:
        ConfigError: no runs table, an empty one, or a run in the score table that its runs table lacks (a run
            stopped between its score commit and its runs-table row): the latest run is then unknown, and picking
            the previous one would be silently wrong.
    """
    runs_ref = io.sibling(scores, "runs")
    recorded = io.read_table_ref(spark, runs_ref) if io.table_exists(spark, runs_ref) else None
    in_scores = io.read_table_ref(spark, scores).select("run_id").distinct()
    if recorded is not None:
        in_scores = in_scores.join(recorded, "run_id", "left_anti")
    unrecorded = sorted(str(r["run_id"]) for r in in_scores.collect())
    if unrecorded:
        raise ConfigError(
            "run_id",
            f"run {', '.join(unrecorded)} of {scores.label} has no row in '{runs_ref.label}' (it stopped before "
            "recording itself), so the latest run is unknown; rerun clipsift score with the same config, or set run_id",
        )
    row = None if recorded is None else recorded.orderBy(F.col("started_at").desc()).select("run_id").first()
    if row is None:
        raise ConfigError(key, f"no run recorded in '{runs_ref.label}' beside {scores.label}; run clipsift score first")
    return str(row["run_id"])


def joined_column(name: str) -> str:
    """The pool's column for a config's column name: ``alias.col`` (a joined run's column) is ``alias__col``."""
    return name.replace(".", "__", 1)


def _pool_sql(spark: SparkSession, runs: Sequence[ScoreRun]) -> str:
    """SQL of the pool: the main run's rows with status ok, and with joined runs, their columns (but uid) as
    ``<alias>__<column>``, joined by uid over rows ok in every run."""
    main = runs[0]
    ok = sql_string(STATUS.OK)
    picked = ["`m`.*"]
    joins = []
    for k, r in enumerate(runs[1:]):
        assert r.alias is not None
        t = f"`j{k}`"
        names = [c for c in io.read_table_ref(spark, r.scores).columns if c != "uid"]
        picked += [f"{t}.{quote_ident(c)} AS {quote_ident(joined_column(f'{r.alias}.{c}'))}" for c in names]
        joins.append(
            f" JOIN {io.sql_table(r.scores)} AS {t} ON {t}.`uid` = `m`.`uid`"
            f" AND {t}.`run_id` = {sql_string(r.run_id)} AND {t}.`status` = {ok}"
        )
    return (
        f"SELECT {', '.join(picked)} FROM {io.sql_table(main.scores)} AS `m`{''.join(joins)}"
        f" WHERE `m`.`run_id` = {sql_string(main.run_id)} AND `m`.`status` = {ok}"
    )


def _ok_rows(spark: SparkSession, runs: Sequence[ScoreRun]) -> dict[str | None, int]:
    """Rows with status ok in each run on its own."""
    out = {}
    for r in runs:
        df = io.read_table_ref(spark, r.scores)
        out[r.alias] = df.where((F.col("run_id") == r.run_id) & (F.col("status") == STATUS.OK)).count()
    return out


def _check_columns(cfg: SelectConfig, pool: DataFrame) -> None:
    types = dict(pool.dtypes)
    for i, sel in enumerate(cfg.selections):
        for c in _columns_used(sel):
            if joined_column(c) not in types:
                have = ", ".join(c.replace("__", ".", 1) for c in pool.columns)
                raise ConfigError(f"selections[{i}]", f"column '{c}' is not in the pool (has {have})")
        if sel.rule == "flag" and sel.column is not None and types[joined_column(sel.column)] != "boolean":
            found = types[joined_column(sel.column)]
            raise ConfigError(
                f"selections[{i}].column", f"rule 'flag' needs a boolean column; '{sel.column}' is {found}"
            )


def _columns_used(sel: SelectionConfig) -> list[str]:
    if sel.rule == "clipselect":
        return list(sel.columns or CLIPSELECT_COLUMNS)
    return sel.columns_named()


def _resolved(sel: SelectionConfig) -> SelectionConfig:
    """``sel`` with its column names as the pool's columns."""
    return replace(
        sel,
        column=sel.column and joined_column(sel.column),
        then_column=sel.then_column and joined_column(sel.then_column),
        columns=tuple(joined_column(c) for c in sel.columns),
    )


def _view_sql(columns: str, pool_sql: str, within: str | None, r: _Rendered) -> str:
    filters = [f for f in (within, r.prefilter) if f]
    if r.derived is None:
        return f"SELECT {columns} FROM ({pool_sql}) AS `pool` WHERE {' AND '.join([*filters, f'({r.condition})'])}"
    name, expr = r.derived
    where = f" WHERE {' AND '.join(filters)}" if filters else ""
    derived = f"SELECT *, {expr} AS {quote_ident(name)} FROM ({pool_sql}) AS `pool`{where}"
    return f"SELECT {columns} FROM ({derived}) AS `d` WHERE {r.condition}"


def _render(sel: SelectionConfig, population: _Population, views: dict[str, str]) -> _Rendered:
    """One rule over its population (every rule but ``import``)."""
    pool, n = population.df, population.rows
    if sel.rule == "threshold":
        assert sel.column is not None
        col = quote_ident(sel.column)
        parts = [f"{col} IS NOT NULL"]
        if sel.min is not None:
            parts.append(f"{col} >= {sql_double(sel.min)}")
        if sel.max is not None:
            parts.append(f"{col} <= {sql_double(sel.max)}")
        return _Rendered(" AND ".join(parts), {"min": sel.min, "max": sel.max})
    if sel.rule == "flag":
        assert sel.column is not None
        return _Rendered(f"{quote_ident(sel.column)} IS TRUE", {})
    if sel.rule == "top_fraction":
        assert sel.column is not None and sel.fraction is not None
        keep = int(n * sel.fraction)
        total = population.non_null[(sel.column,)]
        if sel.counting == "datacomp":
            cut = top_n_cutoff(pool, sel.column, keep + 1, ties=True, total=total)
            return _Rendered(keep_sql(sel.column, cut), {sel.column: _cut(cut), "n": keep})
        cut = top_n_cutoff(pool, sel.column, keep, total=total)
        return _Rendered(keep_sql(sel.column, cut), {sel.column: _cut(cut), "n": keep}, rows=min(keep, total))
    if sel.rule == "sequential":
        assert sel.column and sel.then_column and sel.fraction is not None and sel.then_fraction is not None
        n1, n2 = int(n * sel.fraction), int(n * sel.then_fraction)
        cut1 = top_n_cutoff(pool, sel.column, n1, total=population.non_null[(sel.column,)])
        cond = keep_sql(sel.column, cut1)
        cutoffs: dict[str, object] = {sel.column: _cut(cut1), "n1": n1}
        if n2 != n1:
            cut2 = top_n_cutoff(pool.where(keep_condition(sel.column, cut1)), sel.then_column, n2)
            cond = f"{cond} AND {keep_sql(sel.then_column, cut2)}"
            cutoffs.update({sel.then_column: _cut(cut2), "n2": n2})
        return _Rendered(cond, cutoffs)
    if sel.rule == "clipselect":
        assert sel.fraction is not None
        sas, sds = sel.columns or CLIPSELECT_COLUMNS
        criterion = clipselect_criterion(pool, sas, sds, 0.1 if sel.lam is None else sel.lam, f"selections[{sel.name}]")
        expr, params = criterion.score, criterion.params
        has_sas = f"{quote_ident(sas)} IS NOT NULL"
        scored = pool.where(has_sas).withColumn("_criterion", F.expr(expr))
        keep, total = int(n * sel.fraction), population.non_null[(sas,)]
        cut = top_n_cutoff(scored, "_criterion", keep, total=total)
        cutoffs = {**params, "criterion": _cut(cut), "n": keep}
        return _Rendered(keep_sql("_criterion", cut), cutoffs, ("_criterion", expr), has_sas, min(keep, total))
    members = [f"`uid` IN (SELECT `uid` FROM {views[name]})" for name in sel.of]
    joiner = " AND " if sel.rule == "intersect" else " OR "
    return _Rendered(joiner.join(members), {"of": list(sel.of)})


def _sum_of_ranks(sel: SelectionConfig, population: _Population, ranks: TableRef, run_id: str, view: str) -> _Rendered:
    """The top ``fraction`` by the sum of the columns' exact ascending ordinal ranks (0 = smallest; ties by uid)
    over the population's rows with every column set. The rank sums are computed distributed
    (:func:`clipsift.jobs.cutoffs.with_ordinal_rank`) and kept in ``ranks`` (``<scores>_ranks``: run_id, view,
    uid, rank_sum), which the view reads: a query of the view ranks nothing again. The rank ratio of the paper is
    rank / N, the same N for every column, so the sum of ranks orders rows as the sum of ratios does."""
    assert sel.fraction is not None
    spark = population.df.sparkSession
    rows = population.df.where(reduce(operator.and_, (F.col(c).isNotNull() for c in sel.columns)))
    buckets = int(str(spark.conf.get("spark.sql.shuffle.partitions")))
    plans = rank_plans(rows, sel.columns, buckets)
    ranked = rows.select("uid", *sel.columns)
    for i, plan in enumerate(plans):
        ranked = with_ordinal_rank(ranked, plan, f"_rank{i}")
    rank_sum = reduce(operator.add, (F.col(f"_rank{i}") for i in range(len(plans))))
    where = f"`run_id` = {sql_string(run_id)} AND `view` = {sql_string(view)}"
    out = ranked.select(F.lit(run_id).alias("run_id"), F.lit(view).alias("view"), "uid", rank_sum.alias("rank_sum"))
    io.replace_where(out, ranks, where, partition_by="run_id")
    keep, total = int(population.rows * sel.fraction), population.non_null[tuple(sel.columns)]
    cut = top_n_cutoff(io.read_table_ref(spark, ranks).where(where), "rank_sum", keep, total=total)
    condition = f"`uid` IN (SELECT `uid` FROM {io.sql_table(ranks)} WHERE {where} AND {keep_sql('rank_sum', cut)})"
    return _Rendered(condition, {"rank_sum": _cut(cut), "n": keep, "ranks": ranks.label}, rows=min(keep, total))


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
    arr = io.uid_pairs([u for (u,) in df.select("uid").toLocalIterator()])
    io.write_subset_npy(arr, path)
    return len(arr)


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
    # Replace this run's rows for these selection names, keep the others: one replaceWhere commit, so two selects
    # at once both land (a lost race is retried by io), and a reader never sees the table half rewritten.
    names = ", ".join(sql_string(r.name) for r in results)
    where = f"`run_id` = {sql_string(run_id)} AND `name` IN ({names})"
    io.replace_where(df, io.sibling(cfg.scores, "selections"), where)


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
