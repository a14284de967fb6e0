"""Spark-tier tests for clipsift.jobs.cutoffs: exact top-n cut-offs with ties, as a Column and as SQL text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from clipsift.jobs.cutoffs import (
    Cutoff,
    keep_condition,
    keep_sql,
    rank_plan,
    sql_double,
    top_n_cutoff,
    with_ordinal_rank,
)

N_ROWS = 300


@pytest.fixture(scope="module")
def scores(spark: SparkSession) -> tuple[DataFrame, pd.DataFrame]:
    """300 rows with heavy ties (8 distinct values, two of them 1 ulp apart), some null scores, shuffled uids."""
    rng = np.random.default_rng(42)
    values = np.array([0.1, 0.2, 0.30000000000000004, 0.3, 0.5, -1.25, 7.0, 1e-300])
    score = values[rng.integers(0, values.size, N_ROWS)].astype(object)
    score[rng.choice(N_ROWS, 12, replace=False)] = None
    uids = [f"{u:08x}" for u in rng.permutation(10_000)[:N_ROWS]]
    pdf = pd.DataFrame({"uid": uids, "score": score})
    df = spark.createDataFrame(list(pdf.itertuples(index=False, name=None)), "uid string, score double").persist()
    df.createOrReplaceTempView("cutoff_scores")
    return df, pdf


def _expected(pdf: pd.DataFrame, n: int) -> set[str]:
    """The top n rows by (score desc, uid asc), nulls never counted."""
    ranked = pdf.dropna(subset=["score"]).astype({"score": float})
    ranked = ranked.sort_values(["score", "uid"], ascending=[False, True], kind="mergesort")
    return set(ranked["uid"].iloc[: max(n, 0)])


def _kept(df: DataFrame, cut: Cutoff | None) -> set[str]:
    return {r["uid"] for r in df.where(keep_condition("score", cut)).select("uid").collect()}


#: Both ways to the cut-off: the population sorted whole (it fits in one bracket), and the percentile bracket.
PATHS = {"whole": 200_000, "bracket": 40}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [1, 2, 37, 150, 287, 288, 1000])
def test_exactly_n_rows_with_ties(scores: tuple[DataFrame, pd.DataFrame], n: int, path: str) -> None:
    df, pdf = scores
    non_null = int(pdf["score"].notna().sum())
    assert non_null == 288
    cut = top_n_cutoff(df, "score", n, max_band=PATHS[path])
    assert cut is not None and cut.uid is not None
    kept = _kept(df, cut)
    assert len(kept) == min(n, non_null)
    assert kept == _expected(pdf, n)


def test_n_zero_and_negative_keep_nothing(scores: tuple[DataFrame, pd.DataFrame]) -> None:
    df, _ = scores
    assert top_n_cutoff(df, "score", 0) is None
    assert top_n_cutoff(df, "score", -3) is None
    assert _kept(df, None) == set()
    assert keep_sql("score", None) == "FALSE"


def test_n_equal_to_total_keeps_every_scored_row(scores: tuple[DataFrame, pd.DataFrame]) -> None:
    df, pdf = scores
    total = int(pdf["score"].notna().sum())
    for n in (total, total + 1, 10 * total):
        assert _kept(df, top_n_cutoff(df, "score", n)) == set(pdf.loc[pdf["score"].notna(), "uid"])


@pytest.mark.parametrize("path", PATHS)
def test_ties_keeps_every_row_at_the_nth_value(scores: tuple[DataFrame, pd.DataFrame], path: str) -> None:
    df, pdf = scores
    scored = pdf.dropna(subset=["score"]).astype({"score": float})
    for n in (1, 37, 150):
        cut = top_n_cutoff(df, "score", n, ties=True, max_band=PATHS[path])
        assert cut is not None and cut.uid is None
        nth = scored["score"].sort_values(ascending=False).iloc[n - 1]
        assert cut.value == nth
        kept = _kept(df, cut)
        assert kept == set(scored.loc[scored["score"] >= nth, "uid"])
        assert len(kept) >= n


def test_one_ulp_apart_values_are_not_merged(spark: SparkSession, scores: tuple[DataFrame, pd.DataFrame]) -> None:
    df, pdf = scores
    above = int((pdf["score"].dropna().astype(float) > 0.3).sum())
    at_big = int((pdf["score"].dropna().astype(float) == 0.30000000000000004).sum())
    cut = top_n_cutoff(df, "score", above, ties=True)  # the last kept row scores 0.30000000000000004
    assert cut is not None and cut.value == 0.30000000000000004
    assert len(_kept(df, cut)) == above
    assert at_big > 0
    via_sql = spark.sql(f"SELECT uid FROM cutoff_scores WHERE {keep_sql('score', cut)}").count()
    assert via_sql == above


@pytest.mark.parametrize("path", PATHS)
def test_everything_tied(spark: SparkSession, path: str) -> None:
    df = spark.createDataFrame([(f"u{i:03d}", 0.5) for i in range(60)], "uid string, score double")
    cut = top_n_cutoff(df, "score", 17, max_band=PATHS[path])
    assert cut == Cutoff(0.5, "u016")
    assert _kept(df, cut) == {f"u{i:03d}" for i in range(17)}
    assert len(_kept(df, top_n_cutoff(df, "score", 17, ties=True, max_band=PATHS[path]))) == 60


def test_total_given_by_the_caller_skips_the_count(scores: tuple[DataFrame, pd.DataFrame]) -> None:
    df, pdf = scores
    non_null = int(pdf["score"].notna().sum())
    for path in PATHS:
        cut = top_n_cutoff(df, "score", 37, max_band=PATHS[path], total=non_null)
        assert _kept(df, cut) == _expected(pdf, 37)


def test_all_null_column(spark: SparkSession) -> None:
    df = spark.createDataFrame([("a", None), ("b", None)], "uid string, score double")
    assert top_n_cutoff(df, "score", 1) is None


@pytest.mark.parametrize(("n", "ties"), [(1, False), (37, False), (150, False), (288, False), (37, True), (150, True)])
def test_keep_sql_equals_keep_condition(
    spark: SparkSession, scores: tuple[DataFrame, pd.DataFrame], n: int, ties: bool
) -> None:
    df, _ = scores
    cut = top_n_cutoff(df, "score", n, ties=ties)
    via_sql = {r["uid"] for r in spark.sql(f"SELECT uid FROM cutoff_scores WHERE {keep_sql('score', cut)}").collect()}
    assert via_sql == _kept(df, cut)
    assert len(via_sql) >= n if ties else len(via_sql) == n


def test_float_column(spark: SparkSession) -> None:
    """A float (single precision) score: the cut-off is its double value and comparisons stay exact."""
    rng = np.random.default_rng(1)
    vals = rng.integers(0, 5, 80).astype(np.float32) / np.float32(3.0)  # not exactly representable in decimal
    rows = [(f"u{i:02d}", float(v)) for i, v in enumerate(vals)]
    df = spark.createDataFrame(rows, "uid string, score float")
    df.createOrReplaceTempView("cutoff_floats")
    for n in (5, 40, 79):
        cut = top_n_cutoff(df, "score", n)
        kept = {r["uid"] for r in df.where(keep_condition("score", cut)).collect()}
        sql = {r["uid"] for r in spark.sql(f"SELECT uid FROM cutoff_floats WHERE {keep_sql('score', cut)}").collect()}
        order = sorted(range(80), key=lambda i: (-float(vals[i]), f"u{i:02d}"))
        assert kept == sql == {f"u{i:02d}" for i in order[:n]}


def test_sql_text_is_typed() -> None:
    assert sql_double(0.1) == "CAST('0.1' AS DOUBLE)"
    assert sql_double(1e-300) == "CAST('1e-300' AS DOUBLE)"
    assert keep_sql("my col", Cutoff(0.5, None)) == "`my col` >= CAST('0.5' AS DOUBLE)"
    assert keep_sql("s", Cutoff(2.0, "it's")) == (
        "(`s` > CAST('2.0' AS DOUBLE) OR (`s` = CAST('2.0' AS DOUBLE) AND `uid` <= 'it\\'s'))"
    )


@pytest.mark.parametrize("buckets", [1, 4, 64])
def test_ordinal_ranks_are_exact_in_any_number_of_buckets(spark: SparkSession, buckets: int) -> None:
    """Ranks from buckets equal the positions in one global (value, uid) order, ties and nulls included."""
    rng = np.random.default_rng(3)
    n = 500
    values = rng.integers(0, 40, n).astype(float)  # many ties, so uid decides inside a value
    values[rng.choice(n, 25, replace=False)] = np.nan
    uids = [f"{u:06x}" for u in rng.permutation(1 << 20)[:n]]
    rows = [(u, None if np.isnan(v) else float(v)) for u, v in zip(uids, values, strict=True)]
    df = spark.createDataFrame(rows, "uid string, score double")
    plan = rank_plan(df, "score", buckets)
    assert len(plan.offsets) == len(plan.bounds) + 1
    if buckets > 1:
        assert len(plan.bounds) > 1  # really split: no task orders all rows
    got = {r["uid"]: r["r"] for r in with_ordinal_rank(df, plan, "r").select("uid", "r").collect()}
    pdf = pd.DataFrame({"uid": uids, "score": values}).dropna().sort_values(["score", "uid"], kind="mergesort")
    assert got == dict(zip(pdf["uid"], range(len(pdf)), strict=True))
