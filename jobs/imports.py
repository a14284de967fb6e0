"""Selection rule ``import``: a uid set made elsewhere (DFN's or HYPE's DataComp subset ``.npy``, a table of uids,
another run's view) landed in the Delta table ``<scores>_imports`` (``import_id``, ``uid``; partitioned by
``import_id``), so the selection's view stays plain SQL over tables clipsift owns.

``import_id`` is a function of the content: the sha256 of a subset file, or of a table's label, row count and
order-free sum of uid hashes. Importing the same content again reuses the landed rows (checked by count); other
content lands under its own id, so a view over an earlier import keeps reading what it read.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, ImportSource, TableRef
from clipsift.jobs.io import quote_ident, sql_string


@dataclass(frozen=True)
class Imported:
    """One imported uid set and what its import found; recorded in the selection's ``cutoffs``."""

    import_id: str
    source: str
    kind: str
    """``npy`` or ``table``."""
    sha256: str | None
    """sha256 of the subset file (``npy`` only)."""
    uids: int
    """Rows read, duplicates included."""
    distinct: int
    duplicates: int
    null_uids: int
    """Rows of a table source with a null uid (dropped)."""
    absent: int
    """Distinct uids not among the pool's rows (not ``ok`` in every run used, or not in the pool at all)."""
    in_pool: int
    sorted: bool | None
    """Whether a subset file's uids were in ascending order (None for tables)."""

    def record(self) -> dict[str, object]:
        return asdict(self)


def import_uids(
    spark: SparkSession, source: ImportSource, imports: TableRef, pool: DataFrame, pool_rows: int, key: str
) -> Imported:
    """Land ``source``'s uids in ``imports`` (unless already there) and count them against the ``pool``'s uids
    (``pool_rows`` rows).

    Raises:
        ConfigError: (under ``key``) a missing or malformed source, or one with no uid in the pool.
    """
    land = _land_npy if source.npy is not None else _land_table
    landed_as = land(spark, source, imports, key)
    landed = _landed(spark, imports, landed_as.import_id).select("uid").distinct()
    distinct = landed.count()
    absent = landed.join(pool.select("uid"), "uid", "left_anti").count()
    if distinct == absent:
        raise ConfigError(
            key,
            f"none of the {distinct} uids of {source.label} is among the pool's {pool_rows} rows (ok in every run "
            "used); is it a subset of this pool? uids are compared as text: DataComp's are 32 lowercase hex characters",
        )
    rows, nulls = landed_as.rows, landed_as.null_uids
    return Imported(
        landed_as.import_id, source.label, "npy" if source.npy is not None else "table", landed_as.sha256, rows,
        distinct, rows - nulls - distinct, nulls, absent, distinct - absent, landed_as.sorted,
    )  # fmt: skip


@dataclass(frozen=True)
class _Landed:
    """What landing a source found: its content id, rows read (null uids included) and, for a file, its hash and
    order."""

    import_id: str
    rows: int
    null_uids: int = 0
    sha256: str | None = None
    sorted: bool | None = None


def import_condition(imports: TableRef, import_id: str) -> str:
    """The SQL condition keeping a pool's rows whose uid was imported under ``import_id``."""
    return f"`uid` IN (SELECT `uid` FROM {io.sql_table(imports)} WHERE `import_id` = {sql_string(import_id)})"


def _landed(spark: SparkSession, imports: TableRef, import_id: str) -> DataFrame:
    return io.read_table_ref(spark, imports).where(F.col("import_id") == import_id)


def _count_landed(spark: SparkSession, imports: TableRef, import_id: str) -> int:
    return _landed(spark, imports, import_id).count() if io.table_exists(spark, imports) else -1


def _land_npy(spark: SparkSession, source: ImportSource, imports: TableRef, key: str) -> _Landed:
    path, key = str(source.npy), f"{key}.npy"
    try:
        info = io.inspect_subset(path)
    except FileNotFoundError as exc:
        raise ConfigError(key, f"{exc}; give the path of a DataComp subset file") from None
    except io.SubsetFileError as exc:
        raise ConfigError(key, str(exc)) from None
    import_id = f"npy-{info.sha256}"
    if _count_landed(spark, imports, import_id) != info.rows:
        condition = f"`import_id` = {sql_string(import_id)}"
        for i, uids in enumerate(io.subset_uids(path)):
            chunk = spark.createDataFrame(
                pa.table({"import_id": pa.array([import_id] * len(uids), pa.string()), "uid": uids})
            )
            if i == 0:
                io.replace_where(chunk, imports, condition, partition_by="import_id")
            else:
                io.append_table(chunk, imports, partition_by="import_id")
    return _Landed(import_id, info.rows, sha256=info.sha256, sorted=info.sorted)


def _land_table(spark: SparkSession, source: ImportSource, imports: TableRef, key: str) -> _Landed:
    ref = source.table_ref()
    assert ref is not None
    where = "table" if source.table is not None else "path"
    if not _exists(spark, ref):
        raise ConfigError(f"{key}.{where}", f"no table or view at {ref.label}; check the {where}")
    df = io.read_table_ref(spark, ref)
    if source.uid_column not in df.columns:
        raise ConfigError(
            f"{key}.uid_column", f"{ref.label} has no column '{source.uid_column}' (has {', '.join(df.columns)})"
        )
    uids = df.select(F.col(quote_ident(source.uid_column)).cast("string").alias("uid"))
    stats = uids.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count("uid").alias("named"),
        F.sum(F.xxhash64("uid").cast("decimal(38,0)")).alias("hash_sum"),
    ).first()
    assert stats is not None
    rows, named = int(stats["rows"]), int(stats["named"])
    if named == 0:
        raise ConfigError(f"{key}.{where}", f"{ref.label} holds no uid (an empty import selects nothing)")
    basis = f"{ref.label}|{named}|{stats['hash_sum']}"
    import_id = f"table-{hashlib.sha256(basis.encode()).hexdigest()}"
    if _count_landed(spark, imports, import_id) != named:
        rows_df = uids.where(F.col("uid").isNotNull()).select(F.lit(import_id).alias("import_id"), "uid")
        io.replace_where(rows_df, imports, f"`import_id` = {sql_string(import_id)}", partition_by="import_id")
    return _Landed(import_id, rows, null_uids=rows - named)


def _exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.table is not None or ref.format == "delta":
        return io.table_exists(spark, ref)
    try:
        io.read_table_ref(spark, ref).schema  # noqa: B018 - a Parquet path exists when Spark can infer its schema
    except Exception:
        return False
    return True
