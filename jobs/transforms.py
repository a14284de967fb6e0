"""DataFrame -> DataFrame transforms of the score and clipselect jobs, chained with ``.transform``.

No I/O, no actions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

from clipsift.jobs.config import NegClipConfig
from clipsift.udfs.clipselect import AdapterWeights, sas_batch_fn, sds_group_fn
from clipsift.udfs.ingest import check_embeddings_fn
from clipsift.udfs.schemas import CHECKED_DDL, STATUS
from clipsift.udfs.score import (
    NEGCLIP_COLUMNS,
    NegClipSettings,
    TargetHandle,
    clip_score_udf,
    negclip_group_fn,
    negclip_partition_fn,
    normsim_udf,
)


def with_checked_embeddings(df: DataFrame, *, dim: int) -> DataFrame:
    """Add ``status``/``error``, L2-normalise the embeddings of ``ok`` rows and keep their norms.

    Problems, first one wins: the reader's ``load_status``, a null uid, then each embedding's null /
    dimension / non-finite / zero norm (:mod:`clipsift.udfs.ingest`). Embeddings of other rows become null.
    """
    return df.mapInArrow(check_embeddings_fn(dim), CHECKED_DDL)


#: The order that decides which row of a repeated uid stays ``ok`` in a pool: the first by shard and row.
POOL_ORDER = ("source", "source_row")


def with_duplicate_uids(df: DataFrame, *, order: Sequence[str] = POOL_ORDER) -> DataFrame:
    """Mark repeated uids: the first ``ok`` row of a uid (by the ``order`` columns, then the embeddings' hash)
    stays ``ok``, later ``ok`` ones become ``duplicate_uid``. Rows that are not ``ok`` keep their status.

    Only rows whose uid repeats are sorted; the repeated uids, and then the rows to demote, are broadcast and
    joined back, so every row stays in its partition (a DataComp shard stays whole in its task, which lets
    negCLIPLoss score it where it is).
    """
    rid = df.withColumn("_dup_row", F.monotonically_increasing_id())
    repeated = (
        df.where(F.col("uid").isNotNull())
        .groupBy("uid")
        .count()
        .where(F.col("count") > 1)
        .select("uid", F.lit(True).alias("_repeated"))
    )
    window = Window.partitionBy("uid").orderBy(
        (F.col("status") != STATUS.OK).asc(),
        *(F.col(c).asc_nulls_last() for c in order),
        F.xxhash64("image_emb", "text_emb"),
        F.col("_dup_row"),
    )
    demoted = (
        rid.join(F.broadcast(repeated), on="uid", how="inner")
        .select("_dup_row", "status", F.row_number().over(window).alias("_occurrence"))
        .where((F.col("_occurrence") > 1) & (F.col("status") == STATUS.OK))
        .select("_dup_row", "_occurrence")
    )
    dup = F.col("_occurrence").isNotNull()
    return (
        rid.join(F.broadcast(demoted), on="_dup_row", how="left")
        .withColumn(
            "error",
            F.when(dup, F.format_string("uid repeats an earlier row (occurrence %d)", F.col("_occurrence"))).otherwise(
                F.col("error")
            ),
        )
        .withColumn("status", F.when(dup, F.lit(STATUS.DUPLICATE_UID)).otherwise(F.col("status")))
        .select(*df.columns)
    )


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
    df: DataFrame,
    *,
    targets: Sequence[TargetHandle],
    norms: tuple[str, ...],
    dim: int,
    signed: bool,
    block_size: int,
    device: str = "auto",
    precision: str = "fp32",
) -> DataFrame:
    """Add ``normsim_<p>_<target>`` for each target and each p in ``norms`` (NormSim∞ on ``device``)."""
    for handle in targets:
        tmp = f"_normsim_{handle.name}"
        udf = normsim_udf(handle, norms, dim, signed, block_size, device=device, precision=precision)
        df = df.withColumn(tmp, udf("image_emb"))
        for p in norms:
            df = df.withColumn(normsim_column(handle.name, p), F.col(f"{tmp}.normsim_{p}"))
        df = df.drop(tmp)
    return df


def negclip_groups(df: DataFrame, *, cfg: NegClipConfig, n_groups: int) -> Column:
    """The grouping column of the batch plan: the input shard, or a seeded random group of the pool."""
    if cfg.grouping == "shard":
        return F.col("source")
    return F.pmod(F.xxhash64(F.col("uid"), F.lit(cfg.seed)), F.lit(n_groups)).cast("string")


def with_negclip(
    df: DataFrame,
    *,
    cfg: NegClipConfig,
    dim: int,
    n_groups: int,
    aligned: bool = False,
    partition_keys: Mapping[str, int] | None = None,
    keep_embeddings: bool = False,
) -> DataFrame:
    """Add ``negclip_loss``, ``negclip_r_i2t``, ``negclip_r_t2i`` to ``ok`` rows: one Arrow pass per group.

    Every column of ``df`` passes through the pass (no join back); the embeddings only with ``keep_embeddings``.

    Args:
        aligned: the partitions of ``df`` already hold whole groups (``grouping: shard`` on DataComp shards, each
            read by one task, with no shuffle since): each partition is scored where it is, no shuffle.
        partition_keys: group name -> a key that Spark's hash partitioning sends to a partition of its own
            (:func:`clipsift.jobs.score.one_partition_keys`); then every group has a task to itself. Without it groups
            are hashed into shuffle partitions and two groups may share a task. Unused when ``aligned``.
    """
    settings = NegClipSettings(
        rounds=cfg.rounds, batch_size=cfg.batch_size, tau=cfg.tau, seed=cfg.seed, dim=dim, block_rows=cfg.block_rows,
        device=cfg.device, precision=cfg.precision,
    )  # fmt: skip
    drop = () if keep_embeddings else ("image_emb", "text_emb")
    fields = [f for f in df.schema.fields if f.name not in drop]
    schema = StructType([*fields, *(StructField(c, DoubleType()) for c in NEGCLIP_COLUMNS)])
    rows = df.withColumn("_group", negclip_groups(df, cfg=cfg, n_groups=n_groups))
    if aligned:
        return rows.mapInArrow(negclip_partition_fn(settings, "_group", drop), schema)
    fn = negclip_group_fn(settings, (*drop, "_group", "_key"))
    if not partition_keys:
        return rows.groupBy("_group").applyInArrow(fn, schema)
    keys = F.create_map(*[F.lit(x) for g, k in partition_keys.items() for x in (g, k)])
    return (
        rows.withColumn("_key", keys[F.col("_group")].cast("long"))
        .repartition(len(partition_keys), "_key")
        .groupBy("_key")
        .applyInArrow(fn, schema)
    )


def with_lineage(df: DataFrame, *, run_id: str, lineage: dict[str, object], ddl: str) -> DataFrame:
    """Add ``run_id`` and the ``lineage`` struct of type ``ddl`` (the score job's :data:`LINEAGE_DDL`)."""
    return df.withColumn("run_id", F.lit(run_id)).withColumn("lineage", F.from_json(F.lit(json.dumps(lineage)), ddl))


# --------------------------------------------------------------------------------------------------
# CLIP-powered selection (ALGORITHMS.md §4): clipsift clipselect, and the label-free variant in clipsift score

#: Raw CLIP-powered selection scores; their min-max normalised forms and the criterion come from
#: :func:`clipsift.jobs.cutoffs.clipselect_criterion` (``clipsift clipselect``, and the ``clipselect`` selection rule).
CLIPSELECT_COLUMNS = ("sas", "sds")


def with_sas(df: DataFrame, *, weights: AdapterWeights, prompts: np.ndarray | None) -> DataFrame:
    """Add ``sas``: cosine of the adapted image and the adapted prompt of its ``label`` (``prompts``), or of the
    adapted caption embedding ``text_emb`` when ``prompts`` is None (label-free). One Arrow pass, no shuffle."""
    schema = StructType([*df.schema.fields, StructField("sas", DoubleType())])
    return df.mapInArrow(sas_batch_fn(weights, prompts, df.columns), schema)


def with_sds(df: DataFrame, *, weights: AdapterWeights, k: int, group: str, key: str) -> DataFrame:
    """Add ``sds``: mean distance to the ``k − 1`` nearest adapted images of the same ``group`` (one Arrow task
    per group, exact blocked kNN), joined back on the unique ``key``. A singleton group gets null."""
    parts = (
        df.select(key, group, "image_emb")
        .groupBy(group)
        .applyInArrow(sds_group_fn(weights, k, key), f"{key} {dict(df.dtypes)[key]}, sds double")
    )
    return df.join(parts, on=key, how="left")
