"""DataFrame -> DataFrame transforms of the score job, chained with ``.transform``. No I/O, no actions."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import NegClipConfig
from jobs.schemas import LINEAGE_DDL, NEGCLIP_DDL, STATUS
from udfs.score import TargetHandle, clip_score_udf, negclip_group_fn, normsim_udf

#: Score columns every score table has (null where the row was not scored or the score not asked for).
BASE_SCORE_COLUMNS = ("clip_score", "negclip_loss", "negclip_r_i2t", "negclip_r_t2i")


def _norm(arr: Column) -> Column:
    return F.sqrt(F.aggregate(arr, F.lit(0.0).cast("double"), lambda acc, x: acc + x.cast("double") * x))


def _embedding_problem(arr: Column, dim: int, what: str) -> tuple[Column, Column]:
    """(status, error) of one embedding column, null when it is fine."""
    size = F.size(arr)
    non_finite = F.exists(arr, lambda x: F.isnan(x) | x.isin(float("inf"), float("-inf")) | x.isNull())
    checks = [
        (arr.isNull(), F.lit(STATUS.NULL_EMBEDDING), F.lit(f"{what} embedding is null")),
        (
            size != dim,
            F.lit(STATUS.BAD_DIMENSION),
            F.format_string(f"{what} embedding has %d values, expected {dim}", size),
        ),
        (non_finite, F.lit(STATUS.NON_FINITE), F.lit(f"{what} embedding holds NaN, infinite or null values")),
        (_norm(arr) == 0, F.lit(STATUS.ZERO_NORM), F.lit(f"{what} embedding has zero norm")),
    ]
    status: Column = F.lit(None).cast("string")
    error: Column = F.lit(None).cast("string")
    for cond, s, e in reversed(checks):
        status = F.when(cond, s).otherwise(status)
        error = F.when(cond, e).otherwise(error)
    return status, error


def with_status(df: DataFrame, *, dim: int) -> DataFrame:
    """Add ``status``/``error`` (first problem wins) and L2-normalise the embeddings of ``ok`` rows.

    Problems, in order: the reader's ``load_status``, a null uid, a repeated uid (every occurrence
    after the first by source and row), then each embedding's null / dimension / non-finite / zero norm.
    Also adds ``image_norm`` and ``text_norm`` (the norms before normalising).
    """
    order = Window.partitionBy("uid").orderBy(
        F.col("source").asc_nulls_last(), F.col("source_row").asc_nulls_last(), F.xxhash64("image_emb", "text_emb")
    )
    img_status, img_error = _embedding_problem(F.col("image_emb"), dim, "image")
    txt_status, txt_error = _embedding_problem(F.col("text_emb"), dim, "text")
    occurrence = F.when(F.col("uid").isNotNull(), F.row_number().over(order))
    checks = [
        (F.col("load_status").isNotNull(), F.col("load_status"), F.col("load_error")),
        (F.col("uid").isNull(), F.lit(STATUS.NULL_UID), F.lit("uid is null")),
        (
            occurrence > 1,
            F.lit(STATUS.DUPLICATE_UID),
            F.format_string("uid repeats an earlier row (occurrence %d)", occurrence),
        ),
        (img_status.isNotNull(), img_status, img_error),
        (txt_status.isNotNull(), txt_status, txt_error),
    ]
    status: Column = F.lit(STATUS.OK)
    error: Column = F.lit(None).cast("string")
    for cond, s, e in reversed(checks):
        status = F.when(cond, s).otherwise(status)
        error = F.when(cond, e).otherwise(error)
    ok = status == STATUS.OK
    img_norm, txt_norm = _norm(F.col("image_emb")), _norm(F.col("text_emb"))
    return (
        df.withColumn("status", status)
        .withColumn("error", error)
        .withColumn("image_norm", F.when(ok, img_norm))
        .withColumn("text_norm", F.when(ok, txt_norm))
        .withColumn(
            "image_emb", F.when(ok, F.transform("image_emb", lambda x: (x / F.col("image_norm")).cast("float")))
        )
        .withColumn("text_emb", F.when(ok, F.transform("text_emb", lambda x: (x / F.col("text_norm")).cast("float"))))
        .drop("load_status", "load_error")
    )


def with_clip_score(df: DataFrame, *, dim: int) -> DataFrame:
    """Add ``clip_score``: the cosine of the (normalised) image and caption embeddings."""
    return df.withColumn("clip_score", clip_score_udf(dim)("image_emb", "text_emb"))


def normsim_column(name: str, p: str) -> str:
    """Column name of NormSim_p against target ``name``."""
    return f"normsim_{p}_{name}"


def with_normsim(
    df: DataFrame, *, targets: Sequence[TargetHandle], norms: tuple[str, ...], dim: int, signed: bool, block_size: int
) -> DataFrame:
    """Add ``normsim_<p>_<target>`` for each target and each p in ``norms``."""
    for handle in targets:
        tmp = f"_normsim_{handle.name}"
        df = df.withColumn(tmp, normsim_udf(handle, norms, dim, signed, block_size)("image_emb"))
        for p in norms:
            df = df.withColumn(normsim_column(handle.name, p), F.col(f"{tmp}.normsim_{p}"))
        df = df.drop(tmp)
    return df


def negclip_groups(df: DataFrame, *, cfg: NegClipConfig, n_groups: int) -> Column:
    """The grouping column of the batch plan: the input shard, or a seeded random group of the pool."""
    if cfg.grouping == "shard":
        return F.col("source")
    return F.pmod(F.xxhash64(F.col("uid"), F.lit(cfg.seed)), F.lit(n_groups)).cast("string")


def negclip_scores(df: DataFrame, *, cfg: NegClipConfig, dim: int, n_groups: int) -> DataFrame:
    """``uid, negclip_loss, negclip_r_i2t, negclip_r_t2i`` of ``ok`` rows, one Arrow task per group."""
    fn = negclip_group_fn(
        rounds=cfg.rounds, batch_size=cfg.batch_size, tau=cfg.tau, seed=cfg.seed, dim=dim, block_rows=cfg.block_rows
    )
    return (
        df.select("uid", "image_emb", "text_emb", negclip_groups(df, cfg=cfg, n_groups=n_groups).alias("_group"))
        .groupBy("_group")
        .applyInArrow(fn, NEGCLIP_DDL)
    )


def with_lineage(df: DataFrame, *, run_id: str, lineage: dict[str, object]) -> DataFrame:
    """Add ``run_id`` and the ``lineage`` struct (teacher, τ, B, K, seed, grouping, targets, code version)."""
    import json

    return df.withColumn("run_id", F.lit(run_id)).withColumn(
        "lineage", F.from_json(F.lit(json.dumps(lineage)), LINEAGE_DDL)
    )
