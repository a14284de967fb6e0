"""Delta tables: reads by name or path, atomic partition replaces, appends, the runs table. Every table clipsift
writes goes through here."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from typing import Any

import pyarrow.fs as pafs
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession

import clipsift
from clipsift.jobs.config import OutputRef, TableRef
from clipsift.jobs.io.sql import quote_ident, sibling, sql_string, sql_table
from clipsift.udfs.readers import arrow_path


def read_table_ref(spark: SparkSession, ref: TableRef) -> DataFrame:
    """A table by catalog name, or by path in its format (the input configs are table references too)."""
    if ref.table is not None:
        return spark.read.table(ref.table)
    return spark.read.format(ref.format).load(ref.path)


def table_exists(spark: SparkSession, ref: TableRef) -> bool:
    """Whether the table (name or Delta path) exists."""
    if ref.table is not None:
        return bool(spark.catalog.tableExists(ref.table))
    fs, local = arrow_path(str(ref.path).rstrip("/") + "/_delta_log")
    return bool(fs.get_file_info(local).type == pafs.FileType.Directory)


def table_bytes(spark: SparkSession, ref: TableRef) -> int:
    """Bytes of the table's current files (Delta's ``DESCRIBE DETAIL``: metadata only, no data read); 0 when the
    table's format does not say."""
    row = spark.sql(f"DESCRIBE DETAIL {sql_table(ref)}").select("sizeInBytes").first()
    return int(row[0] or 0) if row is not None else 0


#: Delta's optimistic-concurrency conflicts (and a table created by a concurrent writer between our check and
#: our create): the commit lost a race, the data is fine; the write is tried again on the new snapshot.
CONFLICTS = (
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
    "ConcurrentWriteException", "ConcurrentTransactionException", "MetadataChangedException",
    "ProtocolChangedException", "DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
    "TABLE_OR_VIEW_ALREADY_EXISTS", "TableAlreadyExistsException",
)  # fmt: skip
COMMIT_ATTEMPTS = 6


def _save(writer: DataFrameWriter, ref: TableRef, spark: SparkSession) -> None:
    """Run a Delta write to ``ref``: by catalog name or by path; then set an :class:`OutputRef`'s properties.

    A commit that loses a race with another writer of the same table (two runs at once) is tried again, up to
    :data:`COMMIT_ATTEMPTS` times with growing, jittered waits; each attempt is one atomic Delta commit, so a
    reader sees either the old rows or the new ones. Replaces keyed by ``replaceWhere`` then act on the snapshot
    they commit to (a second run of the same run id replaces the first one's rows, never adds to them).
    """
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            if ref.table is not None:
                writer.saveAsTable(ref.table)
            else:
                writer.save(str(ref.path))
            break
        except Exception as exc:
            if attempt == COMMIT_ATTEMPTS - 1 or not is_conflict(exc):
                raise
            time.sleep(random.uniform(0.5, 1.5) * 2**attempt)
    if isinstance(ref, OutputRef) and ref.properties:
        pairs = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in sorted(ref.properties.items()))
        spark.sql(f"ALTER TABLE {sql_table(ref)} SET TBLPROPERTIES ({pairs})")


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost commit race (:data:`CONFLICTS`), as raised through py4j or Spark's captured errors."""
    text = f"{type(exc).__name__} {exc}"
    return any(name in text for name in CONFLICTS)


def ensure_schema(spark: SparkSession, where: TableRef | str | None) -> None:
    """Create a schema when it does not exist yet (a local catalog starts with ``default`` only), so that a run
    fails or succeeds on it before its compute, not after: ``where`` is a table (its ``[catalog.]schema``, when
    named by catalog) or a ``[catalog.]schema`` name."""
    if isinstance(where, TableRef):
        if where.table is None or "." not in where.table:
            return
        where = where.table.rsplit(".", 1)[0]
    if where:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {'.'.join(quote_ident(p) for p in where.split('.'))}")


def replace_partition(df: DataFrame, ref: TableRef, column: str, value: str) -> None:
    """Write ``df`` as the rows of ``ref`` where ``column = value``, replacing any earlier ones.

    One atomic Delta commit: a rerun replaces its own rows and never duplicates them; other
    values of ``column`` are untouched; new columns are merged into the schema.
    """
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{quote_ident(column)} = {sql_string(value)}")
        .option("mergeSchema", "true")
        .partitionBy(column)
    )
    _save(writer, ref, df.sparkSession)


#: The runs table beside a score table (``<output>_runs``): one row per run of ``clipsift score``/``clipselect``.
RUNS_DDL = (
    "run_id string, started_at timestamp, seconds double, input string, rows bigint, rows_by_status string, "
    "config string, lineage string, code_version string"
)


def record_run(
    spark: SparkSession,
    scores: TableRef,
    *,
    run_id: str,
    started_at: datetime,
    seconds: float,
    input_label: str,
    rows_in: int,
    by_status: dict[str, int],
    config: dict[str, Any],
    lineage: dict[str, Any],
) -> None:
    """Write this run's row of ``<scores>_runs`` (replacing an earlier one of the same run id).

    ``clipsift select`` finds the latest run there; the config and lineage make the run reproducible.
    """
    record = spark.createDataFrame(
        [
            (
                run_id, started_at, float(seconds), input_label, int(rows_in),
                json.dumps(by_status, sort_keys=True), json.dumps(config, sort_keys=True),
                json.dumps(lineage, sort_keys=True), clipsift.__version__,
            )
        ],
        RUNS_DDL,
    )  # fmt: skip
    replace_partition(record, sibling(scores, "runs"), "run_id", run_id)


def append_table(df: DataFrame, ref: TableRef, partition_by: str | None = None) -> None:
    """Append ``df`` to a Delta table in one commit (created on first use)."""
    writer = df.write.format("delta").mode("append")
    if partition_by is not None:
        writer = writer.partitionBy(partition_by)
    _save(writer, ref, df.sparkSession)


def replace_where(df: DataFrame, ref: TableRef, condition: str, partition_by: str | None = None) -> None:
    """Replace the rows of ``ref`` matching ``condition`` with ``df`` in one Delta commit (created on first use)."""
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
    if partition_by is not None:
        writer = writer.partitionBy(partition_by)
    _save(writer, ref, df.sparkSession)


def delete_matching(spark: SparkSession, ref: TableRef, keys: DataFrame, key: str, condition: str) -> None:
    """Delete the rows of ``ref`` whose ``key`` is in ``keys`` and that satisfy ``condition`` (on alias ``t``).

    One Delta ``MERGE ... WHEN MATCHED THEN DELETE`` commit.
    """
    from delta.tables import DeltaTable

    table = DeltaTable.forName(spark, ref.table) if ref.table is not None else DeltaTable.forPath(spark, str(ref.path))
    match = f"t.{quote_ident(key)} = s.{quote_ident(key)} AND {condition}"
    table.alias("t").merge(keys.alias("s"), match).whenMatchedDelete().execute()


def overwrite_table(df: DataFrame, ref: TableRef) -> None:
    """Replace a whole Delta table (selection materialisations)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    _save(writer, ref, df.sparkSession)
