"""The jobs' inputs as DataFrames: pools of embeddings (DataComp shards, tables, a DataFrame in hand) and
image-caption pairs (WebDataset tars, tables). The executor side of each reader is in
:mod:`clipsift.udfs.readers`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from clipsift.jobs.config import ClipSelectInputConfig, ConfigError, EmbedInputConfig, InputConfig, TableRef
from clipsift.jobs.io.tables import read_table_ref
from clipsift.udfs.arrow import half_columns_fn
from clipsift.udfs.readers import list_shards, read_datacomp_shard, read_tar_shard
from clipsift.udfs.schemas import METADATA, PAIRS_DDL, POOL_DDL, spark_type


def list_datacomp_shards(path: str) -> list[str]:
    """Paths of the ``*.parquet`` shards in a DataComp metadata folder, sorted."""
    return list_shards(path, ".parquet", single_file=False)


def read_datacomp(spark: SparkSession, path: str, arch: str, rows_per_batch: int = 4096) -> DataFrame:
    """Read DataComp shards as rows of the pool schema, one task per shard, on the executors.

    Every parquet row comes out exactly once. Rows whose embeddings cannot be had (npz missing,
    unreadable, without the arch's arrays, or shorter than the parquet) carry ``load_status`` and
    ``load_error``; an unreadable parquet gives one row with a null uid saying so.
    """
    shards = list_datacomp_shards(path)
    img_key, txt_key = f"{arch}_img", f"{arch}_txt"

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column(0).to_pylist():
                yield from read_datacomp_shard(shards[index], img_key, txt_key, rows_per_batch)

    # spark.range with one partition per shard: exactly one shard per task (a repartition of the
    # paths would deal them round-robin from a random start, several to a task).
    return spark.range(0, len(shards), 1, numPartitions=len(shards)).mapInArrow(read, POOL_DDL)


def _read_input(spark: SparkSession, ref: TableRef) -> DataFrame:
    """A job's ``input`` table (by catalog name or path), as :func:`~clipsift.jobs.io.tables.read_table_ref` reads it.

    Raises:
        ConfigError: (``input.table`` / ``input.path``) when the table or path does not exist, or Spark cannot read
            it as ``input.format``.
    """
    key = "input.table" if ref.table is not None else "input.path"
    try:
        return read_table_ref(spark, ref)
    except AnalysisException as exc:
        raise ConfigError(key, _unreadable(ref, exc)) from None


def _unreadable(ref: TableRef, exc: AnalysisException) -> str:
    """Why Spark cannot read ``ref``, in one line."""
    condition = (getattr(exc, "getCondition", None) or exc.getErrorClass)() or ""
    if condition == "TABLE_OR_VIEW_NOT_FOUND":
        return f"table '{ref.table}' does not exist; check the name, or give the table's path as input.path"
    if condition == "PATH_NOT_FOUND":
        return f"'{ref.path}' does not exist"
    if condition.startswith("DELTA_") and "NOT_FOUND" in condition:
        return f"'{ref.path}' is not a Delta table (no _delta_log); for a Parquet table set input.format: parquet"
    if condition == "UNABLE_TO_INFER_SCHEMA":
        return f"'{ref.label}' holds no {ref.format} files"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"cannot read '{ref.label}' as {ref.format}: {first}"


def _check_columns(df: DataFrame, label: str, named: Sequence[tuple[str, str | None]]) -> None:
    """Every column ``named`` as ``(config key, column)`` is in ``df``, or a :class:`ConfigError` names its key."""
    for key, column in named:
        if column and column not in df.columns:
            raise ConfigError(key, f"input '{label}' has no column {column!r} (columns: {', '.join(df.columns)})")


def read_table(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """Read an embedding table (by catalog name or path) as rows of the pool schema."""
    df = _read_input(spark, cfg)
    return as_pool(df, cfg)


def as_pool(df: DataFrame, cfg: InputConfig) -> DataFrame:
    """A DataFrame of embeddings as rows of the pool schema, its columns named by ``cfg`` (``uid_col``,
    ``image_col``, ``text_col``, ``shard_col``, ``metadata_cols``); where it came from does not matter.

    Raises:
        ConfigError: (a ``ValueError``) naming the key, e.g. ``input.image_col``, of a column ``df`` lacks.
    """
    named = [(f"input.{name}", getattr(cfg, name)) for name in ("uid_col", "image_col", "text_col", "shard_col")]
    _check_columns(df, cfg.label, named)
    df = _one_model(df, cfg)
    source = F.col(cfg.shard_col).cast("string") if cfg.shard_col else F.lit(cfg.label)
    types = dict(df.dtypes)
    pairs = (("image_emb", cfg.image_col), ("text_emb", cfg.text_col))
    half = tuple(name for name, col in pairs if types[col] == "binary")

    def embedding(col: str) -> Column:
        return F.col(col) if types[col] == "binary" else F.col(col).cast("array<float>")

    metadata = []
    for f in METADATA:
        column, ddl = cfg.metadata_cols.get(f.name, f.name), spark_type(f.type)
        value = F.col(column).cast(ddl) if column in df.columns else F.lit(None).cast(ddl)
        metadata.append(value.alias(f.name))
    pool = df.select(
        F.col(cfg.uid_col).cast("string").alias("uid"),
        source.alias("source"),
        F.lit(None).cast("long").alias("source_row"),
        embedding(cfg.image_col).alias("image_emb"),
        embedding(cfg.text_col).alias("text_emb"),
        F.lit(None).cast("string").alias("load_status"),
        F.lit(None).cast("string").alias("load_error"),
        *metadata,
    )
    # float16 embeddings (clipsift embed's dtype: float16) are stored as binary: widen them on the executors.
    return pool.mapInArrow(half_columns_fn(half), POOL_DDL) if half else pool


def _one_model(df: DataFrame, cfg: InputConfig) -> DataFrame:
    """Keep the rows of ``input.model`` of a table that holds several models' embeddings."""
    if "model_id" not in df.columns:
        if cfg.model is not None:
            raise ConfigError("input.model", f"input '{cfg.label}' has no model_id column; remove input.model")
        return df
    if cfg.model is not None:
        return df.where(F.col("model_id") == cfg.model)
    models = [r["model_id"] for r in df.select("model_id").distinct().limit(3).collect()]
    if len(models) > 1:
        raise ConfigError(
            "input.model",
            f"input '{cfg.label}' holds embeddings of several models ({', '.join(map(str, models))}, ...); "
            "set input.model to the model_id to score",
        )
    return df


def read_pool(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """The pool as rows of :data:`clipsift.udfs.schemas.POOL_ARROW`, from DataComp shards or a table."""
    if cfg.kind == "datacomp":
        return read_datacomp(spark, str(cfg.path), cfg.arch)
    return read_table(spark, cfg)


def detect_dim(df: DataFrame, hint: str, key: str = "input.image_col") -> int:
    """The most common length of ``image_emb`` (a few malformed rows do not decide it); one aggregate.

    Raises:
        ConfigError: (``key``) when no row has an image embedding; ``hint`` says what to check.
    """
    sizes = df.where(F.col("image_emb").isNotNull()).groupBy(F.size("image_emb").alias("d")).count()
    row = sizes.orderBy(F.col("count").desc(), F.col("d").asc()).first()
    if row is None:
        raise ConfigError(key, f"no row of the input has an image embedding; {hint}")
    return int(row["d"])


def read_labelled_table(spark: SparkSession, cfg: ClipSelectInputConfig) -> DataFrame:
    """The input of ``clipsift clipselect`` as ``uid, image_emb, text_emb, label`` (text or label null by variant)."""
    df = _read_input(spark, cfg)
    named = [(f"input.{name}", getattr(cfg, name)) for name in ("uid_col", "image_col", "label_col", "text_col")]
    _check_columns(df, cfg.label, named)
    if cfg.model is not None:
        if "model_id" not in df.columns:
            raise ConfigError("input.model", f"input '{cfg.label}' has no model_id column; remove input.model")
        df = df.where(F.col("model_id") == cfg.model)
    label = F.col(cfg.label_col).cast("long") if cfg.label_col else F.lit(None).cast("long")
    text = F.col(cfg.text_col).cast("array<float>") if cfg.text_col else F.lit(None).cast("array<float>")
    return df.select(
        F.col(cfg.uid_col).cast("string").alias("uid"),
        F.col(cfg.image_col).cast("array<float>").alias("image_emb"),
        text.alias("text_emb"),
        label.alias("label"),
    )


def list_webdataset_shards(path: str) -> list[str]:
    """The ``.tar`` shards of a folder (sorted), or the one ``.tar`` given."""
    return list_shards(path, ".tar", single_file=True)


def read_webdataset(
    spark: SparkSession,
    shards: Sequence[str],
    image_extensions: Sequence[str],
    keys_only: bool = False,
    rows_per_batch: int = 256,
    needed: Mapping[str, int] | None = None,
) -> DataFrame:
    """Read WebDataset tar shards (img2dataset's layout) as rows of :data:`PAIRS_DDL`, one task per shard.

    A sample is the run of members sharing a key (``dir/000123.jpg``, ``.txt``, ``.json``): the image
    is the first member with one of ``image_extensions``, the caption the ``.txt`` bytes, the uid the
    ``.json``'s ``uid`` (else the key). A sample without an image keeps its row (a null image); an
    unreadable or broken tar gives the samples read so far plus one row with a null uid and
    ``load_status = unreadable_shard``. ``keys_only`` skips image and caption bytes (headers and
    ``.json`` members only), for a cheap pass over the uids.

    ``needed`` (shard -> samples wanted from its start, as an earlier keys pass found them): a read error before
    that many samples is not the shard's own defect (the keys pass got further) but a transient one, e.g. an
    object store dropping the connection: the task fails, so Spark retries it, instead of the rows going missing.
    """
    paths = list(shards)
    exts = tuple(e.lower().lstrip(".") for e in image_extensions)
    wanted = dict(needed or {})

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column(0).to_pylist():
                path = paths[index]
                yield from read_tar_shard(path, exts, keys_only, rows_per_batch, wanted.get(path))

    return spark.range(0, len(paths), 1, numPartitions=max(1, len(paths))).mapInArrow(read, PAIRS_DDL)


def read_pairs_table(spark: SparkSession, cfg: EmbedInputConfig) -> DataFrame:
    """An image-caption table (bytes or paths) as rows of :data:`PAIRS_DDL`."""
    df = _read_input(spark, cfg)
    keys = ("uid_col", "caption_col", "image_col", "image_path_col")
    _check_columns(df, cfg.label, [(f"input.{name}", getattr(cfg, name)) for name in keys])
    caption_type = dict(df.dtypes)[cfg.caption_col]
    caption = F.col(cfg.caption_col)
    caption = caption if caption_type == "binary" else caption.cast("string").cast("binary")
    image = F.col(cfg.image_col).cast("binary") if cfg.image_col else F.lit(None).cast("binary")
    image_path = F.col(cfg.image_path_col).cast("string") if cfg.image_path_col else F.lit(None).cast("string")
    return df.select(
        F.col(cfg.uid_col).cast("string").alias("uid"),
        caption.alias("caption"),
        image.alias("image"),
        image_path.alias("image_path"),
        F.lit(cfg.label).alias("source"),
        F.lit(None).cast("long").alias("source_row"),
        F.lit(None).cast("string").alias("load_status"),
        F.lit(None).cast("string").alias("load_error"),
    )
