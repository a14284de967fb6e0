"""``clipsift report``: one self-contained HTML page about a score run and its selections.

Reads:  the score table (``scores``: one run), its runs table ``<scores>_runs`` and selections table
        ``<scores>_selections``, the selections' views, and for thumbnails the images of the sampled rows only (the
        tars or image table of the ``clipsift embed`` run the scores came from, or ``images``).
Writes: ``output`` (one HTML file: inline CSS and SVG, thumbnails as ``data:`` URIs; nothing fetched at view time).

Every number is computed in Spark and reaches the driver as a few rows: histograms as (column, bin, count), the
2-D density as (x bin, y bin, count), rank correlations from ranks computed in Spark on a seeded sample of at most
about ``rank_sample_rows`` rows, view sizes and overlaps from one aggregate over bit masks of membership, and the
sampled rows (``ORDER BY xxhash64(uid, seed) LIMIT n``) with their thumbnails, made on the executors. A score column
is never pulled to the driver. The rendering is :mod:`clipsift.udfs.report` (no Spark).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, EmbedInputConfig, TableRef, from_dict
from clipsift.jobs.config.report import ReportConfig
from clipsift.jobs.cutoffs import Cutoff, keep_condition, top_n_cutoff
from clipsift.jobs.select import latest_run
from clipsift.jobs.session import Progress, job_main
from clipsift.udfs.report import (
    THUMBNAIL_DDL,
    Correlations,
    Density,
    Histogram,
    Overlap,
    ReportData,
    RunInfo,
    Sample,
    SampleGroup,
    StatusRow,
    ViewInfo,
    render,
    thumbnail_fn,
)
from clipsift.udfs.schemas import METADATA_COLUMNS, STATUS

#: Numeric columns of a score table that are not scores (shown only when named in ``columns``).
NOT_SCORES = frozenset({"source_row", "image_norm", "text_norm", "image_cluster", *METADATA_COLUMNS})
_NUMERIC = ("double", "float", "int", "bigint", "smallint", "tinyint")


@dataclass(frozen=True)
class ReportResult:
    """What a report run wrote."""

    output: str
    run_id: str
    bytes: int
    columns: tuple[str, ...]
    views: tuple[str, ...]
    samples: int
    thumbnails: int
    has_images: bool


def run(spark: SparkSession, cfg: ReportConfig) -> ReportResult:
    """Compute the report of one score run in Spark and write it as one HTML file (``cfg.output``)."""
    progress = Progress(spark, "clipsift report")
    if not io.table_exists(spark, cfg.scores):
        where = "table" if cfg.scores.table is not None else "path"
        raise ConfigError(f"scores.{where}", f"no score table at {cfg.scores.label}; run clipsift score first")
    run_id = cfg.run_id or latest_run(spark, cfg.scores)
    table = io.read_table_ref(spark, cfg.scores)
    rows = table.where(F.col("run_id") == run_id)
    pool = rows.where(F.col("status") == STATUS.OK)
    seed = cfg.samples.seed

    with progress.step("run and statuses"):
        run_info, run_config = _run_info(spark, cfg, run_id, rows)
    if run_info.rows_in == 0:
        raise ConfigError("run_id", f"run '{run_id}' has no row in {cfg.scores.label}; check run_id")
    columns = _score_columns(cfg, pool)
    views = _recorded_views(spark, cfg, run_id)
    cutoffs = _cutoffs_by_column(views)
    with progress.step("histograms, density, rank correlations") as step:
        stats = _column_stats(pool, columns, cfg.samples.tail_fraction)
        columns = tuple(c for c in columns if stats[c]["count"])
        histograms = _histograms(pool, columns, stats, cfg.bins, cutoffs)
        density, density_note = _density(pool, cfg, stats)
        correlations = _correlations(pool, columns, run_info.ok_rows, cfg.rank_sample_rows, seed)
        step["rows"] = run_info.ok_rows
    with progress.step(f"selections ({len(views)})"):
        view_infos, overlap, flagged, baseline_note = _selections(spark, cfg, pool, views, columns)
    try:
        with progress.step("samples") as step:
            groups = _groups(flagged, columns, stats, cutoffs, view_infos, cfg)
            drawn = _draw(flagged, groups, cfg.samples.per_group)
            uids = sorted({str(r["uid"]) for rows in drawn.values() for r in rows})
            step["rows"] = len(uids)
    finally:
        flagged.unpersist()
    with progress.step("thumbnails") as step:
        images, images_note = _images_source(spark, cfg, run_config)
        thumbs: dict[str, tuple[bytes | None, str | None]] = {}
        if images is not None:
            try:
                thumbs = _thumbnails(spark, cfg, images, uids)
            except (FileNotFoundError, ConfigError) as exc:  # the tars or image table moved since the embed run
                why = exc.message if isinstance(exc, ConfigError) else str(exc)
                images, images_note = None, f"No image access: {why}; the samples show captions alone."
        step["rows"] = sum(1 for t in thumbs.values() if t[0] is not None)
    sample_groups = tuple(_group(g, drawn.get(i, []), thumbs, columns) for i, g in enumerate(groups))
    data = ReportData(
        run=run_info, columns=columns, histograms=histograms, density=density, density_note=density_note,
        correlations=correlations, views=view_infos, overlap=overlap, baseline_note=baseline_note,
        groups=sample_groups, images_note=images_note, has_images=images is not None, seed=seed,
        caption_chars=cfg.samples.caption_chars,
    )  # fmt: skip
    page = render(data)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return ReportResult(
        output=str(out), run_id=run_id, bytes=len(page.encode("utf-8")), columns=columns,
        views=tuple(v.name for v in view_infos), samples=len(uids),
        thumbnails=sum(1 for t in thumbs.values() if t[0] is not None), has_images=images is not None,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Run


def _run_info(spark: SparkSession, cfg: ReportConfig, run_id: str, rows: DataFrame) -> tuple[RunInfo, dict[str, Any]]:
    """The runs-table row of the run, its rows by status (counted in the table) and a few errors per status."""
    runs_ref = io.sibling(cfg.scores, "runs")
    record = None
    if io.table_exists(spark, runs_ref):
        record = io.read_table_ref(spark, runs_ref).where(F.col("run_id") == run_id).first()
    counts = {str(r["status"]): int(r["count"]) for r in rows.groupBy("status").count().collect()}
    examples: dict[str, list[tuple[str | None, str | None]]] = {}
    if cfg.error_examples:
        order = Window.partitionBy("status").orderBy(
            F.xxhash64(F.coalesce(F.col("uid"), F.lit("")), F.lit(cfg.samples.seed)), "source", "source_row"
        )
        picked = (
            rows.where(F.col("status") != STATUS.OK)
            .select("uid", "status", "error", F.row_number().over(order).alias("_n"))
            .where(F.col("_n") <= cfg.error_examples)
            .orderBy("status", "_n")
            .collect()
        )
        for r in picked:
            examples.setdefault(str(r["status"]), []).append((r["uid"], r["error"]))
    statuses = tuple(
        StatusRow(s, counts[s], tuple(examples.get(s, ())))
        for s in sorted(counts, key=lambda s: (s != STATUS.OK, -counts[s], s))
    )
    lineage = json.loads(record["lineage"]) if record is not None and record["lineage"] else {}
    config = json.loads(record["config"]) if record is not None and record["config"] else {}
    info = RunInfo(
        run_id=run_id,
        scores=cfg.scores.label,
        input=str(record["input"]) if record is not None else "(no runs-table row)",
        teacher=str(lineage.get("teacher", "unknown")),
        started_at=str(record["started_at"]) if record is not None else "unknown",
        seconds=float(record["seconds"]) if record is not None else float("nan"),
        rows_in=sum(counts.values()),
        ok_rows=counts.get(STATUS.OK, 0),
        code_version=str(record["code_version"]) if record is not None else "unknown",
        statuses=statuses,
        lineage=lineage,
    )
    return info, config


# --------------------------------------------------------------------------------------------------
# Scores


def _score_columns(cfg: ReportConfig, pool: DataFrame) -> tuple[str, ...]:
    types = dict(pool.dtypes)
    if cfg.columns:
        for i, c in enumerate(cfg.columns):
            if c not in types:
                raise ConfigError(f"columns[{i}]", f"'{c}' is not a column of the score table")
            if types[c] not in _NUMERIC:
                raise ConfigError(f"columns[{i}]", f"'{c}' is {types[c]}, not a numeric score")
        return tuple(cfg.columns)
    return tuple(c for c, t in pool.dtypes if t in _NUMERIC and c not in NOT_SCORES)


def _column_stats(pool: DataFrame, columns: Sequence[str], tail: float) -> dict[str, dict[str, Any]]:
    """Per column, in one aggregate: non-null count, min, max and the ``tail``, 50 % and ``1 - tail`` quantiles
    (``percentile_approx``)."""
    if not columns:
        return {}
    aggs: list[Column] = [F.count(F.lit(1)).alias("_rows")]
    for i, c in enumerate(columns):
        col = F.col(c).cast("double")
        aggs += [
            F.count(col).alias(f"n{i}"), F.min(col).alias(f"lo{i}"), F.max(col).alias(f"hi{i}"),
            F.percentile_approx(col, [tail, 0.5, 1 - tail], 10_000).alias(f"q{i}"),
        ]  # fmt: skip
    row = pool.agg(*aggs).first()
    assert row is not None
    out = {}
    for i, c in enumerate(columns):
        q = row[f"q{i}"]
        out[c] = {
            "count": int(row[f"n{i}"]), "nulls": int(row["_rows"]) - int(row[f"n{i}"]),
            "lo": row[f"lo{i}"], "hi": row[f"hi{i}"], "q_lo": q[0] if q else None, "median": q[1] if q else None,
            "q_hi": q[2] if q else None,
        }  # fmt: skip
    return out


def bin_index(column: str, lo: float, hi: float, bins: int) -> Column:
    """The equal-width bin (0 .. bins-1) of ``column`` over ``[lo, hi]``; the maximum falls in the last bin."""
    if not hi > lo:
        return F.lit(0)
    scaled = F.floor((F.col(column).cast("double") - F.lit(lo)) / F.lit(hi - lo) * F.lit(bins)).cast("int")
    return F.least(F.greatest(scaled, F.lit(0)), F.lit(bins - 1))


def _histograms(
    pool: DataFrame, columns: Sequence[str], stats: dict[str, dict[str, Any]], bins: int,
    cutoffs: dict[str, list[tuple[str, float]]],
) -> tuple[Histogram, ...]:  # fmt: skip
    """Every column's histogram from one Spark job: rows exploded to (column index, bin), grouped and counted."""
    if not columns:
        return ()
    cells = F.array(*[
        F.struct(F.lit(i).alias("c"), bin_index(c, stats[c]["lo"], stats[c]["hi"], bins).alias("b"))
        for i, c in enumerate(columns)
    ])  # fmt: skip
    exploded = pool.select(F.explode(cells).alias("cell"), *[F.col(c) for c in columns])
    value = F.coalesce(*[F.when(F.col("cell.c") == i, F.col(c).cast("double")) for i, c in enumerate(columns)])
    counted = exploded.where(value.isNotNull()).groupBy(F.col("cell.c").alias("c"), F.col("cell.b").alias("b")).count()
    counts = [[0] * bins for _ in columns]
    for r in counted.collect():  # at most len(columns) * bins rows
        counts[int(r["c"])][int(r["b"])] = int(r["count"])
    return tuple(
        Histogram(c, float(stats[c]["lo"]), float(stats[c]["hi"]), tuple(counts[i]), stats[c]["nulls"],
                  tuple(cutoffs.get(c, ())))
        for i, c in enumerate(columns)
    )  # fmt: skip


def _density(pool: DataFrame, cfg: ReportConfig, stats: dict[str, dict[str, Any]]) -> tuple[Density | None, str]:
    x, y, bins = cfg.density_x, cfg.density_y, cfg.density_bins
    missing = [c for c in (x, y) if c not in stats or not stats[c]["count"]]
    if missing:
        return None, f"No 2-D density: this run has no values of {', '.join(missing)} (density_x, density_y)."
    (x0, x1), (y0, y1) = (stats[x]["lo"], stats[x]["hi"]), (stats[y]["lo"], stats[y]["hi"])
    both = pool.where(F.col(x).isNotNull() & F.col(y).isNotNull())
    counted = both.groupBy(bin_index(x, x0, x1, bins).alias("i"), bin_index(y, y0, y1, bins).alias("j")).count()
    grid = [[0] * bins for _ in range(bins)]
    for r in counted.collect():  # at most bins² rows
        grid[int(r["j"])][int(r["i"])] = int(r["count"])
    return Density(x, y, (float(x0), float(x1)), (float(y0), float(y1)), tuple(tuple(row) for row in grid)), ""


def seeded_fraction(df: DataFrame, fraction: float, seed: int) -> DataFrame:
    """About ``fraction`` of the rows of ``df``, chosen by a hash of the uid and ``seed`` (the same rows every time,
    whatever the partitioning)."""
    if fraction >= 1:
        return df
    buckets = 1 << 20
    return df.where(F.pmod(F.xxhash64("uid", F.lit(seed)), F.lit(buckets)) < F.lit(int(fraction * buckets)))


def _correlations(pool: DataFrame, columns: Sequence[str], ok_rows: int, most: int, seed: int) -> Correlations | None:
    """Spearman's ρ between every pair of columns: average ranks computed in Spark (one sort per column over the
    sample), then Pearson's correlation of the ranks over the rows where both are present, in one aggregate."""
    if len(columns) < 2 or ok_rows == 0:
        return None
    fraction = min(1.0, most / ok_rows)
    sample = seeded_fraction(pool, fraction, seed).select("uid", *columns)
    ranked = sample
    for i, c in enumerate(columns):
        order = Window.orderBy(F.col(c).asc())
        ties = Window.partitionBy(F.col(c))
        # Average rank of a tie: its first rank plus half the rows it spans (ranks over the column's non-nulls).
        avg_rank = F.rank().over(order) + (F.count(F.lit(1)).over(ties) - F.lit(1)) / F.lit(2.0)
        ranked = ranked.withColumn(f"_r{i}", F.when(F.col(c).isNotNull(), avg_rank))
    k = len(columns)
    aggs = [F.count(F.lit(1)).alias("_rows")]
    aggs += [F.corr(f"_r{i}", f"_r{j}").alias(f"c{i}_{j}") for i in range(k) for j in range(i + 1, k)]
    row = ranked.agg(*aggs).first()
    assert row is not None
    matrix = [[1.0 if i == j else None for j in range(k)] for i in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            v = row[f"c{i}_{j}"]
            value = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
            matrix[i][j] = matrix[j][i] = value
    return Correlations(tuple(columns), tuple(tuple(r) for r in matrix), int(row["_rows"]), fraction >= 1)


# --------------------------------------------------------------------------------------------------
# Selections


@dataclass(frozen=True)
class _Recorded:
    name: str
    view: str
    rule: str
    rows: int
    pool_rows: int
    params: dict[str, Any]
    cutoffs: dict[str, Any]


def _recorded_views(spark: SparkSession, cfg: ReportConfig, run_id: str) -> list[_Recorded]:
    """The run's selections as ``<scores>_selections`` records them (the latest record per name), in the order
    they were created, or in the config's order."""
    ref = io.sibling(cfg.scores, "selections")
    if not io.table_exists(spark, ref):
        if cfg.selections or cfg.baseline:
            raise ConfigError("selections", f"no selections table '{ref.label}'; run clipsift select first")
        return []
    latest = Window.partitionBy("name").orderBy(F.col("created_at").desc())
    recorded = (
        io.read_table_ref(spark, ref).where(F.col("run_id") == run_id)
        .withColumn("_n", F.row_number().over(latest)).where("_n = 1")
        .orderBy("created_at", "name").collect()
    )  # fmt: skip
    found = {
        str(r["name"]): _Recorded(str(r["name"]), str(r["view"]), str(r["rule"]), int(r["rows"]), int(r["pool_rows"]),
                                  json.loads(r["params"] or "{}"), json.loads(r["cutoffs"] or "{}"))
        for r in recorded
    }  # fmt: skip
    wanted = list(cfg.selections) or list(found)
    for i, name in enumerate(cfg.selections):
        if name not in found:
            have = ", ".join(found) or "none"
            raise ConfigError(f"selections[{i}]", f"'{name}' is not a selection of run '{run_id}' (has {have})")
    if cfg.baseline is not None:
        if cfg.baseline not in found:
            have = ", ".join(found) or "none"
            raise ConfigError("baseline", f"'{cfg.baseline}' is not a selection of run '{run_id}' (has {have})")
        if cfg.baseline not in wanted:
            wanted.append(cfg.baseline)
    from clipsift.jobs.config.report import MAX_VIEWS

    if len(wanted) > MAX_VIEWS:
        raise ConfigError("selections", f"the run has {len(wanted)} selections; name at most {MAX_VIEWS} to show")
    return [found[n] for n in wanted]


def _cutoffs_by_column(views: Sequence[_Recorded]) -> dict[str, list[tuple[str, float]]]:
    """The score cut-offs the views record, per column: ``top_fraction`` / ``sequential`` cut-off values and
    ``threshold`` bounds."""
    out: dict[str, list[tuple[str, float]]] = {}
    for v in views:
        for key, value in v.cutoffs.items():
            if isinstance(value, dict) and isinstance(value.get("value"), int | float):
                out.setdefault(key, []).append((v.name, float(value["value"])))
        if v.rule == "threshold" and isinstance(v.params.get("column"), str):
            for bound in ("min", "max"):
                if isinstance(v.cutoffs.get(bound), int | float):
                    out.setdefault(v.params["column"], []).append((f"{v.name} ({bound})", float(v.cutoffs[bound])))
    return out


def _view_frame(spark: SparkSession, v: _Recorded) -> DataFrame:
    try:
        return spark.table(v.view).select("uid")
    except Exception as exc:
        if "TABLE_OR_VIEW_NOT_FOUND" not in str(exc):
            raise
        raise ConfigError(
            "selections",
            f"view {v.view} of selection '{v.name}' is not in this session's catalog; run clipsift select --recreate "
            "(or clipsift select) with the same catalog first",
        ) from None


def _selections(
    spark: SparkSession, cfg: ReportConfig, pool: DataFrame, views: Sequence[_Recorded], columns: Sequence[str]
) -> tuple[tuple[ViewInfo, ...], Overlap | None, DataFrame, str]:
    """Sizes, overlaps and adds/drops against the baseline of every view, from one aggregate over bit masks.

    Returns the pool's rows (uid, caption, score columns) with ``_in``, the mask of the views that hold the row,
    and ``_base``, the mask of the views whose baseline holds it (bit i: the top ``rows_i`` rows by
    ``baseline_column``, or the named baseline view), for the samples.
    """
    text = F.col("text") if "text" in pool.columns else F.lit(None).cast("string")
    shown = pool.select("uid", text.alias("_text"), *columns)
    if not views:
        return (), None, shown.select("*", F.lit(0).cast("long").alias("_in"), F.lit(0).cast("long").alias("_base")), ""
    members = None
    for i, v in enumerate(views):
        part = _view_frame(spark, v).select("uid", F.lit(1 << i).cast("long").alias("_bit"))
        members = part if members is None else members.unionByName(part)
    assert members is not None
    masks = members.groupBy("uid").agg(F.sum("_bit").cast("long").alias("_in"))
    in_views = F.coalesce(F.col("_in"), F.lit(0)).cast("long")
    if cfg.baseline is not None:
        b = [v.name for v in views].index(cfg.baseline)
        # Every bit set (-1) when the row is in the baseline view: it is then in the baseline of every view.
        base: Column = F.when(F.shiftright(in_views, b).bitwiseAND(1) == 1, F.lit(-1)).otherwise(F.lit(0)).cast("long")
        labels = [cfg.baseline] * len(views)
        note = (f"Each view is compared with the selection '{cfg.baseline}': adds are rows the view keeps that the "
                "baseline drops, drops the reverse.")  # fmt: skip
        extra: list[str] = []
    else:
        column = cfg.baseline_column
        if column not in pool.columns:
            raise ConfigError("baseline_column", f"'{column}' is not a column of the score table")
        cuts = top_n_cutoffs(pool.select("uid", column), column, sorted({v.rows for v in views}))
        base = F.lit(0).cast("long")
        for i, v in enumerate(views):
            base = base + F.when(keep_condition(column, cuts[v.rows]), F.lit(1 << i)).otherwise(0).cast("long")
        labels = [f"{column} top {v.rows:,}" for v in views]
        note = (f"Each view is compared with the {column} selection of the same size (its top rows by {column}, ties "
                f"by uid): adds are rows the view keeps that this baseline drops, drops the reverse.")  # fmt: skip
        extra = [column] if column not in columns else []
    # Read twice (the overlaps here, the samples next) and costly to recompute (every view's SQL): kept on the
    # executors' disks, not in memory (in local mode the executors are the driver's JVM).
    flagged = (
        pool.select("uid", text.alias("_text"), *columns, *extra).join(masks, "uid", "left")
        .select("uid", "_text", *columns, in_views.alias("_in"), base.alias("_base"))
        .persist(StorageLevel.DISK_ONLY)
    )  # fmt: skip
    k = len(views)

    def bit(mask: str, i: int) -> Column:
        return F.shiftright(F.col(mask), i).bitwiseAND(1)

    aggs = [F.sum(bit("_in", i) * bit("_in", j)).alias(f"b{i}_{j}") for i in range(k) for j in range(i, k)]
    aggs += [F.sum(bit("_base", i)).alias(f"base{i}") for i in range(k)]
    aggs += [F.sum(bit("_in", i) * bit("_base", i)).alias(f"kept{i}") for i in range(k)]
    row = flagged.agg(*aggs).first()
    assert row is not None
    both = [[0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i, k):
            both[i][j] = both[j][i] = int(row[f"b{i}_{j}"] or 0)
    infos = []
    for i, v in enumerate(views):
        size, base_size, kept = both[i][i], int(row[f"base{i}"] or 0), int(row[f"kept{i}"] or 0)
        infos.append(ViewInfo(
            name=v.name, view=v.view, rule=v.rule, rows=size, pool_rows=v.pool_rows, params=v.params,
            cutoffs=v.cutoffs, baseline=labels[i], baseline_rows=base_size, added=size - kept, dropped=base_size - kept,
        ))  # fmt: skip
    overlap = Overlap(tuple(v.name for v in views), tuple(tuple(r) for r in both))
    return tuple(infos), overlap, flagged, note


def top_n_cutoffs(
    scores: DataFrame, column: str, ns: Sequence[int], *, accuracy: int = 10_000, max_band: int = 200_000
) -> dict[int, Cutoff | None]:
    """:func:`~clipsift.jobs.cutoffs.top_n_cutoff` for several ``n`` at once, in three Spark jobs whatever their
    number: one ``percentile_approx`` of every bracket, one count above and inside each, and one sort of the
    (small) brackets, each row numbered within its bracket. An ``n`` whose bracket misses is left to
    ``top_n_cutoff``'s own refinement. Exact: the same cut-offs (score, uid) as ``top_n_cutoff``."""
    s = F.col(column).cast("double")
    valued = scores.where(F.col(column).isNotNull()).select(s.alias("s"), "uid")
    wanted = [n for n in ns if n > 0]
    out: dict[int, Cutoff | None] = {n: None for n in ns if n <= 0}
    if not wanted:
        return out
    eps = 2.0 / accuracy
    first = valued.agg(F.count(F.lit(1)).alias("total"), F.min("s").alias("lo"), F.max("s").alias("hi")).first()
    assert first is not None
    total = int(first["total"])
    if total == 0:
        return {**out, **dict.fromkeys(wanted)}
    qs = [(max(0.0, 1.0 - min(n, total) / total - eps), min(1.0, 1.0 - min(n, total) / total + eps)) for n in wanted]
    flat = [q for pair in qs for q in pair]
    got = valued.agg(F.percentile_approx("s", flat, accuracy)).first()
    assert got is not None
    bounds = []
    for i, (lo_q, hi_q) in enumerate(qs):
        lo, hi = got[0][2 * i], got[0][2 * i + 1]
        bounds.append((first["lo"] if lo_q == 0.0 else lo, first["hi"] if hi_q == 1.0 else hi))
    counts = valued.agg(*[
        c for i, (lo, hi) in enumerate(bounds)
        for c in (F.sum(F.when(F.col("s") > hi, 1).otherwise(0)).alias(f"a{i}"),
                  F.sum(F.when((F.col("s") >= lo) & (F.col("s") <= hi), 1).otherwise(0)).alias(f"b{i}"))
    ]).first()  # fmt: skip
    assert counts is not None
    need: dict[int, int] = {}
    for i, n in enumerate(wanted):
        above, band = int(counts[f"a{i}"] or 0), int(counts[f"b{i}"] or 0)
        want = min(n, total) - above
        if 1 <= want <= band <= max_band:
            need[i] = want
    if need:
        parts = [
            valued.where(F.col("s").between(bounds[i][0], bounds[i][1])).select(F.lit(i).alias("i"), "s", "uid")
            for i in need
        ]  # fmt: skip
        banded = parts[0]
        for p in parts[1:]:
            banded = banded.unionByName(p)
        order = Window.partitionBy("i").orderBy(F.col("s").desc(), F.col("uid").asc())
        at = F.create_map(*[x for i, want in need.items() for x in (F.lit(i), F.lit(want))])
        picked = banded.withColumn("_n", F.row_number().over(order)).where(F.col("_n") == at[F.col("i")]).collect()
        for r in picked:
            out[wanted[int(r["i"])]] = Cutoff(float(r["s"]), str(r["uid"]))
    for n in wanted:
        if n not in out:
            out[n] = top_n_cutoff(scores, column, n, accuracy=accuracy, max_band=max_band)
    return out


# --------------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True)
class _Group:
    """A group of sampled rows as the page shows it; ``parts`` are its pieces as the sampling job draws them."""

    section: str
    key: str
    kind: str
    title: str
    parts: tuple[tuple[Column, Column, int], ...]
    """(condition, order, rows): the first ``rows`` rows that satisfy ``condition`` by ``order`` (then uid)."""


def _groups(
    flagged: DataFrame, columns: Sequence[str], stats: dict[str, dict[str, Any]],
    cutoffs: dict[str, list[tuple[str, float]]], views: Sequence[ViewInfo], cfg: ReportConfig,
) -> list[_Group]:  # fmt: skip
    """Per score: a seeded sample of its top and bottom ``tail_fraction`` (cut at approximate quantiles, no sort of
    the column), and the rows just above and below its first cut-off (else its median). Per view: a seeded sample
    of the rows it keeps that its baseline drops, and of the reverse."""
    s = cfg.samples
    n = s.per_group
    seeded = F.xxhash64("uid", F.lit(s.seed)).cast("double")
    pct = f"{100 * s.tail_fraction:g} %"
    groups: list[_Group] = []
    for c in columns:
        col = F.col(c).cast("double")
        q_lo, q_hi = stats[c]["q_lo"], stats[c]["q_hi"]
        groups.append(_Group("score", c, "top", f"{c}: top {pct} (≥ {q_hi:.4g}), sample", ((col >= q_hi, seeded, n),)))
        groups.append(
            _Group("score", c, "bottom", f"{c}: bottom {pct} (≤ {q_lo:.4g}), sample", ((col <= q_lo, seeded, n),))
        )
        if cutoffs.get(c):
            view, cut = cutoffs[c][0]
            where = f"around the cut-off of {view} ({cut:.4g})"
        else:
            cut = stats[c]["median"]
            where = f"around the median ({cut:.4g})"
        near = ((col >= cut, col, (n + 1) // 2), (col < cut, -col, n // 2))
        groups.append(_Group("score", c, "cutoff", f"{c}: {where}", near))
    for i, v in enumerate(views):
        if cfg.baseline is not None and v.name == cfg.baseline:
            continue
        in_view = F.shiftright("_in", i).bitwiseAND(1) == 1
        in_base = F.shiftright("_base", i).bitwiseAND(1) == 1
        groups.append(_Group("view", v.name, "kept", f"{v.name}: kept here, dropped by {v.baseline}",
                             ((in_view & ~in_base, seeded, n),)))  # fmt: skip
        groups.append(_Group("view", v.name, "dropped", f"{v.name}: dropped here, kept by {v.baseline}",
                             ((~in_view & in_base, seeded, n),)))  # fmt: skip
    return groups


def _draw(flagged: DataFrame, groups: Sequence[_Group], per_group: int) -> dict[int, list[dict[str, Any]]]:
    """Every group's rows in one Spark job: each row is tagged with the parts it belongs to (and its order there),
    and a window keeps the first rows of each part (Spark limits each window group before the shuffle)."""
    tags: list[Column] = []
    index: list[tuple[int, int]] = []
    for g, group in enumerate(groups):
        for condition, order, rows in group.parts:
            if rows > 0:
                p = len(index)
                index.append((g, rows))
                tags.append(F.when(condition, F.struct(F.lit(p).alias("p"), order.cast("double").alias("o"))))
    if not tags:
        return {}
    tagged = flagged.select("*", F.explode(F.filter(F.array(*tags), lambda t: t.isNotNull())).alias("_t"))
    window = Window.partitionBy("_t.p").orderBy(F.col("_t.o").asc(), F.col("uid").asc())
    picked = (
        tagged.withColumn("_n", F.row_number().over(window)).where(F.col("_n") <= per_group)
        .drop("_in", "_base").collect()
    )  # fmt: skip
    parts: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for r in picked:
        row = r.asDict()
        p = int(row.pop("_t")["p"])
        parts.setdefault(p, []).append((int(row.pop("_n")), row))
    out: dict[int, list[dict[str, Any]]] = {}
    for p, (g, rows) in enumerate(index):
        chosen = [row for _, row in sorted(parts.get(p, []), key=lambda x: x[0])][:rows]
        out.setdefault(g, []).extend(chosen)
    return out


def _group(
    group: _Group, rows: Sequence[dict[str, Any]], thumbs: dict[str, tuple[bytes | None, str | None]],
    columns: Sequence[str],
) -> SampleGroup:  # fmt: skip
    """A group's rows as shown: a score's rows by that score, highest first; a view's in their seeded order."""
    found = list(rows)
    if group.section == "score":
        found.sort(key=lambda r: (-float(r[group.key]), str(r["uid"])))
    samples = tuple(_sample(r, thumbs.get(str(r["uid"])), columns) for r in found)
    return SampleGroup(group.section, group.key, group.kind, group.title, samples)


def _sample(row: dict[str, Any], thumb: tuple[bytes | None, str | None] | None, columns: Sequence[str]) -> Sample:
    scores = {c: (None if row[c] is None else float(row[c])) for c in columns}
    picture, status = thumb if thumb is not None else (None, None)
    return Sample(str(row["uid"]), row["_text"], scores, picture, status)


# --------------------------------------------------------------------------------------------------
# Images


def _images_source(
    spark: SparkSession, cfg: ReportConfig, run_config: dict[str, Any]
) -> tuple[EmbedInputConfig | None, str]:
    """Where the pictures of the run's rows are, and a sentence for the page saying so (or why there are none)."""
    images = cfg.images
    if images.kind == "none":
        return None, "Images are not shown (images.kind: none): captions only."
    if images.kind in ("webdataset", "table"):
        return images.embed_input(), f"Images from {images.kind} {images.path or images.table} (images in the config)."
    source = run_config.get("input") or {}
    if source.get("kind") == "datacomp":
        return None, (
            "No image access: this run scored a DataComp pool of embeddings only (no images), so the samples show "
            "captions alone. To show images, set images (kind: webdataset or table) to where the pictures are."
        )
    if source.get("kind") == "table":
        ref = TableRef(table=source.get("table"), path=source.get("path"), format=source.get("format", "delta"))
        runs = io.sibling(ref, "runs")
        embed = None
        if io.table_exists(spark, runs):
            embed = (
                io.read_table_ref(spark, runs).where(F.col("config").contains('"input"'))
                .orderBy(F.col("started_at").desc()).select("config").first()
            )  # fmt: skip
        config = json.loads(embed["config"]) if embed is not None else {}
        found = config.get("input") if isinstance(config.get("model"), dict) else None
        if isinstance(found, dict) and found.get("kind") in ("webdataset", "table"):
            try:
                pairs = from_dict(EmbedInputConfig, found, "images")
            except ConfigError as exc:
                return None, f"No image access: the clipsift embed run's input does not load ({exc})."
            return pairs, f"Images from the input of the clipsift embed run that wrote {ref.label}: {pairs.label}."
        return None, (
            f"No image access: the score run's input {ref.label} was not written by clipsift embed (no embed run "
            "recorded beside it), so the samples show captions alone. Set images to where the pictures are."
        )
    return None, "No image access: the score run's input is unknown (no runs-table row); captions only."


def _thumbnails(
    spark: SparkSession, cfg: ReportConfig, source: EmbedInputConfig, uids: Sequence[str]
) -> dict[str, tuple[bytes | None, str | None]]:
    """Thumbnails of the sampled rows, read through ``clipsift embed``'s readers and made on the executors: for
    tars, a keys-only pass finds the shards holding the uids, and only those are read whole."""
    if not uids:
        return {}
    wanted = F.col("uid").isin(list(uids))
    if source.kind == "webdataset":
        shards = io.list_webdataset_shards(str(source.path))
        keys = io.read_webdataset(spark, shards, source.image_extensions, keys_only=True)
        holding = sorted(str(r["source"]) for r in keys.where(wanted).select("source").distinct().collect())
        if not holding:
            return {}
        pairs = io.read_webdataset(spark, holding, source.image_extensions).where(wanted)
    else:
        pairs = io.read_pairs_table(spark, source).where(wanted)
    # The first row of a uid (by source and position), as clipsift embed keeps it.
    first = Window.partitionBy("uid").orderBy("source", "source_row")
    pairs = pairs.withColumn("_n", F.row_number().over(first)).where("_n = 1").select("uid", "image", "image_path")
    s, im = cfg.samples, cfg.images
    made = pairs.mapInArrow(thumbnail_fn(s.thumbnail_px, im.max_image_bytes, im.max_pixels), THUMBNAIL_DDL).collect()
    return {str(r["uid"]): (r["thumbnail"], r["image_status"]) for r in made}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift report --config report.yaml [--set key=value ...]``; 2 on a bad config or path."""
    return job_main("clipsift report", ReportConfig, run, _summary, argv)


def _summary(result: ReportResult) -> str:
    images = f"{result.thumbnails} thumbnails" if result.has_images else "captions only (no image access)"
    return (
        f"clipsift report: wrote {result.output} ({result.bytes / 1024:,.0f} KiB): run {result.run_id}, "
        f"{len(result.columns)} score columns, {len(result.views)} selections, {result.samples} sampled rows, {images}"
    )


if __name__ == "__main__":
    sys.exit(main())
