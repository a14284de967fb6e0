"""Exact top-n cut-offs computed in Spark, without pulling a score column to the driver.

The n-th row in the order (score desc, uid asc) is found by a ``percentile_approx`` bracket around
the right quantile, one count of the rows above and inside the bracket, and a sort of the (small)
bracket alone; a population small enough to be one bracket is sorted whole in one pass. The cut-off
is typed (a float and a uid), so it can be written into SQL exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from clipsift.jobs.config import ConfigError
from clipsift.jobs.io import quote_ident, sql_string


@dataclass(frozen=True)
class Cutoff:
    """Keep rows with ``score > value``, or ``score == value`` and ``uid <= uid`` (all ties when uid is None)."""

    value: float
    uid: str | None


def keep_condition(column: str, cut: Cutoff | None) -> Column:
    """Spark condition selecting the rows at or above ``cut`` (nothing when ``cut`` is None)."""
    if cut is None:
        return F.lit(False)
    col = F.col(column)
    if cut.uid is None:
        return col >= F.lit(cut.value)
    return (col > F.lit(cut.value)) | ((col == F.lit(cut.value)) & (F.col("uid") <= F.lit(cut.uid)))


def keep_sql(column: str, cut: Cutoff | None) -> str:
    """The same condition as SQL text, from typed values only."""
    if cut is None:
        return "FALSE"
    col = quote_ident(column)
    value = sql_double(cut.value)
    if cut.uid is None:
        return f"{col} >= {value}"
    return f"({col} > {value} OR ({col} = {value} AND `uid` <= {sql_string(cut.uid)}))"


def sql_double(value: float) -> str:
    """An exact double literal (``repr`` round-trips; the cast keeps it a double, not a decimal)."""
    return f"CAST('{float(value)!r}' AS DOUBLE)"


def top_n_cutoff(
    df: DataFrame,
    column: str,
    n: int,
    *,
    ties: bool = False,
    accuracy: int = 10_000,
    max_band: int = 200_000,
    total: int | None = None,
) -> Cutoff | None:
    """Cut-off keeping the top ``n`` rows of ``df`` by ``column`` (rows where it is null never count).

    Args:
        df: rows with ``uid`` and ``column``.
        column: the score.
        n: rows to keep; exactly n (ties broken by ascending uid), or with ``ties`` every row scoring
            at least the n-th value (DataComp's rule).
        accuracy: ``percentile_approx`` accuracy of the first bracket.
        max_band: largest bracket sorted at once; wider brackets are narrowed first. A population of at most
            this many rows is sorted whole, in one pass (each task keeps its top n, Spark merges them).
        total: the rows of ``df`` where ``column`` is not null, when the caller counted them already.

    Returns:
        None when n <= 0 (keep nothing).
    """
    if n <= 0:
        return None
    scores = df.where(F.col(column).isNotNull()).select(F.col(column).cast("double").alias("s"), "uid")
    total = scores.count() if total is None else total
    if total == 0:
        return None
    n = min(n, total)
    order = (F.col("s").desc(), F.col("uid").asc())
    if total <= max_band:
        last = scores.orderBy(*order).offset(n - 1).limit(1).first()
        assert last is not None, f"top_n_cutoff: {column} has fewer than the {total} non-null rows given"
        return Cutoff(float(last["s"]), None if ties else str(last["uid"]))
    q = 1.0 - n / total
    eps = 2.0 / accuracy
    for attempt in range(8):
        lo_q, hi_q = max(0.0, q - eps), min(1.0, q + eps)
        lo, hi = scores.agg(F.percentile_approx("s", [lo_q, hi_q], accuracy)).first()[0]  # type: ignore[index]
        if lo_q == 0.0:
            lo = scores.agg(F.min("s")).first()[0]  # type: ignore[index]
        if hi_q == 1.0:
            hi = scores.agg(F.max("s")).first()[0]  # type: ignore[index]
        in_band = (F.col("s") >= lo) & (F.col("s") <= hi)
        counts = scores.agg(
            F.sum(F.when(F.col("s") > hi, 1).otherwise(0)).alias("above"),
            F.sum(F.when(in_band, 1).otherwise(0)).alias("band"),
        ).first()
        assert counts is not None
        above, band = int(counts["above"] or 0), int(counts["band"] or 0)
        need = n - above
        found = 1 <= need <= band
        if found and (band <= max_band or attempt >= 4 or eps < 1.0 / accuracy):
            # A bracket wider than max_band here is one long tie: it is sorted all the same.
            last = scores.where(in_band).orderBy(*order).offset(need - 1).limit(1).first()
            assert last is not None
            return Cutoff(float(last["s"]), None if ties else str(last["uid"]))
        eps = eps / 4 if found else min(1.0, eps * 8)
    raise RuntimeError(f"could not bracket the top {n} rows of {column}")  # pragma: no cover - needs 8 misses


@dataclass(frozen=True)
class ClipSelectCriterion:
    """SQL expressions over one row of a pool, with the pool's constants written in as literals."""

    sas_norm: str
    """SAS min-max normalised over the pool."""
    sds_norm: str
    """SDS min-max normalised over the pool (null for a group of one)."""
    score: str
    """The criterion."""
    params: dict[str, object]
    """The constants: ``lam``, the bounds and the means."""


def clipselect_criterion(pool: DataFrame, sas: str, sds: str, lam: float, key: str) -> ClipSelectCriterion:
    """The CLIP-powered selection criterion ``SAS'/mean(SAS') + lam · SDS'/mean(SDS')`` as SQL over one row: the
    one definition behind ``clipsift clipselect``'s columns and the ``clipselect`` selection rule.

    SAS' and SDS' are min-max normalised over the pool's rows with a SAS (bounds from one Spark aggregate, written
    as typed literals); a null SDS (a group of one) counts as 0; a term whose mean is 0 contributes 0: the
    arithmetic of the kernel :func:`clipsift.udfs.kernels.selection_scores`, which the tests hold it to.

    Raises:
        ConfigError: (under ``key``) when no row of the pool has a SAS.
    """
    rows = pool.where(F.col(sas).isNotNull())
    b = rows.agg(F.min(sas), F.max(sas), F.min(sds), F.max(sds)).first()
    if b is None or b[0] is None:
        hint = "score with clipselect.enabled: true, or use clipsift clipselect"
        raise ConfigError(key, f"no ok row of the run has a '{sas}' value; {hint}")

    def normalised(col: str, lo: object, hi: object) -> str:
        if lo is None or hi is None or not float(hi) > float(lo):  # type: ignore[arg-type]
            return f"CASE WHEN {quote_ident(col)} IS NULL THEN NULL ELSE 0.0D END"
        lo_s, hi_s = sql_double(float(lo)), sql_double(float(hi))  # type: ignore[arg-type]
        return f"(({quote_ident(col)} - {lo_s}) / ({hi_s} - {lo_s}))"

    sas_n = normalised(sas, b[0], b[1])
    sds_n = f"COALESCE({normalised(sds, b[2], b[3])}, 0.0D)"  # a group of one has no SDS
    m = rows.agg(F.avg(F.expr(sas_n)), F.avg(F.expr(sds_n))).first()
    assert m is not None
    mean_sas, mean_sds = float(m[0]), float(m[1])
    sas_term = f"({sas_n} / {sql_double(mean_sas)})" if mean_sas != 0 else "0.0D"
    sds_term = f"({sds_n} / {sql_double(mean_sds)})" if mean_sds != 0 else "0.0D"
    params: dict[str, object] = {
        "lam": lam, "sas_min": b[0], "sas_max": b[1], "sds_min": b[2], "sds_max": b[3],
        "sas_norm_mean": mean_sas, "sds_norm_mean": mean_sds,
    }  # fmt: skip
    sds_raw = normalised(sds, b[2], b[3])
    return ClipSelectCriterion(sas_n, sds_raw, f"({sas_term} + {sql_double(lam)} * {sds_term})", params)


@dataclass(frozen=True)
class RankPlan:
    """How :func:`with_ordinal_rank` ranks one column: value buckets and the rows below each bucket."""

    column: str
    bounds: tuple[float, ...]
    """Ascending bucket bounds: a row's bucket is the number of bounds at or below its value, so equal values
    share a bucket and buckets follow the order of the values."""
    offsets: tuple[int, ...]
    """Rows in the buckets below each bucket (one per bucket)."""


def rank_plan(df: DataFrame, column: str, buckets: int, accuracy: int = 10_000) -> RankPlan:
    """The :class:`RankPlan` of one column (:func:`rank_plans`)."""
    return rank_plans(df, [column], buckets, accuracy)[0]


def rank_plans(df: DataFrame, columns: Sequence[str], buckets: int, accuracy: int = 10_000) -> list[RankPlan]:
    """One aggregate over ``df`` for every column's ``percentile_approx`` bounds (nulls ignored) that split its
    rows into about ``buckets`` equal buckets, then one count of the rows per bucket for each column."""
    quantiles = [i / buckets for i in range(1, buckets)]
    found: list[list[float]] = [[] for _ in columns]
    if quantiles:
        got = df.agg(*(F.percentile_approx(c, quantiles, accuracy) for c in columns)).first()
        found = [sorted({float(b) for b in (got[i] or [])}) if got is not None else [] for i in range(len(columns))]
    return [_plan(df.where(F.col(c).isNotNull()), c, bounds) for c, bounds in zip(columns, found, strict=True)]


def _plan(scores: DataFrame, column: str, bounds: list[float]) -> RankPlan:
    if bounds:
        counts = {int(r[0]): int(r[1]) for r in scores.groupBy(_bucket(F.col(column), bounds)).count().collect()}
    else:  # one bucket (a constant would be read as a GROUP BY position)
        counts = {0: scores.count()}
    offsets, below = [], 0
    for b in range(len(bounds) + 1):
        offsets.append(below)
        below += counts.get(b, 0)
    return RankPlan(column, tuple(bounds), tuple(offsets))


def with_ordinal_rank(df: DataFrame, plan: RankPlan, name: str) -> DataFrame:
    """``df``'s rows where the plan's column is not null, with ``name``: the row's exact 0-based position in
    ascending (column, uid) order (ordinal ranks, ties broken by uid, as the authors' ``get_ranks`` over a pool in
    uid order). No task sees more than its bucket: each bucket is ordered in its own task (a window partitioned
    by bucket), and the bucket's offset comes from the plan."""
    col = F.col(plan.column)
    bucket = _bucket(col, list(plan.bounds))
    offset = F.element_at(F.array(*(F.lit(o) for o in plan.offsets)), bucket + 1)
    order = Window.partitionBy(bucket).orderBy(col.asc(), F.col("uid").asc())
    return df.where(col.isNotNull()).withColumn(name, offset.cast("bigint") + F.row_number().over(order) - 1)


def _bucket(col: Column, bounds: list[float], lo: int = 0, hi: int | None = None) -> Column:
    """``lo`` plus the number of ``bounds[lo:hi]`` at or below ``col``: a balanced tree of comparisons (log₂ of
    the bounds deep), so a row is bucketed in a few comparisons, not one per bound."""
    hi = len(bounds) if hi is None else hi
    if lo == hi:
        return F.lit(lo)
    mid = (lo + hi) // 2
    return F.when(col < F.lit(bounds[mid]), _bucket(col, bounds, lo, mid)).otherwise(_bucket(col, bounds, mid + 1, hi))
