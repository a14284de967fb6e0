"""DataFrame -> DataFrame transforms of the score job, chained with ``.transform``. No I/O, no actions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import NegClipConfig
from jobs.schemas import LINEAGE_DDL, NEGCLIP_DDL, STATUS
from udfs.ingest import CHECKED_DDL, check_embeddings_fn
from udfs.score import TargetHandle, clip_score_udf, negclip_group_fn, normsim_udf

#: Score columns every score table has (null where the row was not scored or the score not asked for).
BASE_SCORE_COLUMNS = ("clip_score", "negclip_loss", "negclip_r_i2t", "negclip_r_t2i")


def with_checked_embeddings(df: DataFrame, *, dim: int) -> DataFrame:
    """Add ``status``/``error``, L2-normalise the embeddings of ``ok`` rows and keep their norms.

    Problems, first one wins: the reader's ``load_status``, a null uid, then each embedding's null /
    dimension / non-finite / zero norm (:mod:`udfs.ingest`). Embeddings of other rows become null.
    """
    return df.mapInArrow(check_embeddings_fn(dim), CHECKED_DDL)


def with_duplicate_uids(df: DataFrame) -> DataFrame:
    """Mark repeated uids: the first ``ok`` row of a uid (by source, row) stays ``ok``, later ``ok`` ones
    become ``duplicate_uid``. Only rows whose uid repeats are sorted; the repeated uids are broadcast.
    """
    repeated = (
        df.where(F.col("uid").isNotNull())
        .groupBy("uid")
        .count()
        .where(F.col("count") > 1)
        .select("uid", F.lit(True).alias("_repeated"))
    )
    marked = df.join(F.broadcast(repeated), on="uid", how="left")
    order = Window.partitionBy("uid").orderBy(
        (F.col("status") != STATUS.OK).asc(),
        F.col("source").asc_nulls_last(),
        F.col("source_row").asc_nulls_last(),
        F.xxhash64("image_emb", "text_emb"),
    )
    occurrence = F.row_number().over(order)
    dup = (F.col("_occurrence") > 1) & (F.col("status") == STATUS.OK)
    multi = (
        marked.where(F.col("_repeated"))
        .withColumn("_occurrence", occurrence)
        .withColumn(
            "error",
            F.when(dup, F.format_string("uid repeats an earlier row (occurrence %d)", F.col("_occurrence"))).otherwise(
                F.col("error")
            ),
        )
        .withColumn("status", F.when(dup, F.lit(STATUS.DUPLICATE_UID)).otherwise(F.col("status")))
        .drop("_occurrence")
    )
    return marked.where(F.col("_repeated").isNull()).unionByName(multi).drop("_repeated").select(*df.columns)


def with_status(df: DataFrame, *, dim: int) -> DataFrame:
    """Both checks in one: :func:`with_checked_embeddings` then :func:`with_duplicate_uids`.

    The score job runs the two steps itself, persisting the checked rows in between.
    """
    return df.transform(with_checked_embeddings, dim=dim).transform(with_duplicate_uids)


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


def negclip_scores(
    df: DataFrame, *, cfg: NegClipConfig, dim: int, n_groups: int, partition_keys: Mapping[str, int] | None = None
) -> DataFrame:
    """``uid, negclip_loss, negclip_r_i2t, negclip_r_t2i`` of ``ok`` rows, one Arrow task per group.

    Args:
        partition_keys: group name -> a key that Spark's hash partitioning sends to a partition of its
            own (:func:`jobs.score.one_partition_keys`); then every group has a task to itself. Without
            it groups are hashed into shuffle partitions and two groups may share a task.
    """
    fn = negclip_group_fn(
        rounds=cfg.rounds, batch_size=cfg.batch_size, tau=cfg.tau, seed=cfg.seed, dim=dim, block_rows=cfg.block_rows
    )
    rows = df.select("uid", "image_emb", "text_emb", negclip_groups(df, cfg=cfg, n_groups=n_groups).alias("_group"))
    if not partition_keys:
        return rows.groupBy("_group").applyInArrow(fn, NEGCLIP_DDL)
    keys = F.create_map(*[F.lit(x) for g, k in partition_keys.items() for x in (g, k)])
    return (
        rows.withColumn("_key", keys[F.col("_group")].cast("long"))
        .repartition(len(partition_keys), "_key")
        .groupBy("_key")
        .applyInArrow(fn, NEGCLIP_DDL)
    )


def with_lineage(df: DataFrame, *, run_id: str, lineage: dict[str, object]) -> DataFrame:
    """Add ``run_id`` and the ``lineage`` struct (teacher, τ, B, K, seed, grouping, targets, code version)."""
    return df.withColumn("run_id", F.lit(run_id)).withColumn(
        "lineage", F.from_json(F.lit(json.dumps(lineage)), LINEAGE_DDL)
    )
