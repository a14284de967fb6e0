"""Row schemas and status values shared by the readers, the UDFs and the jobs (no Spark here).

Each schema is declared once, in Arrow (what the executor functions build); :func:`spark_ddl` derives the Spark
DDL string that ``mapInArrow`` and ``createDataFrame`` take.
"""

from __future__ import annotations

import pyarrow as pa


class STATUS:
    """Values of the ``status`` column; every row of a score table has exactly one."""

    OK = "ok"
    UNREADABLE_SHARD = "unreadable_shard"
    """A shard that cannot be read: its parquet (one row, null uid), its npz present but corrupt or not numbers, or a
    metadata column that does not convert (every row of the parquet)."""
    MISSING_EMBEDDING = "missing_embedding"
    BAD_METADATA = "bad_metadata"
    """A DataComp shard's metadata value the pool schema cannot hold (``original_width`` of 2**40, a width of 7.5):
    the value is null, never the wrapped or truncated one, and the row is not scored."""
    NULL_UID = "null_uid"
    """uid is null, empty or only whitespace."""
    DUPLICATE_UID = "duplicate_uid"
    NULL_EMBEDDING = "null_embedding"
    BAD_DIMENSION = "bad_dimension"
    NON_FINITE = "non_finite_embedding"
    ZERO_NORM = "zero_norm"
    MISSING_LABEL = "missing_label"
    """``clipsift clipselect``: a labelled run's row without a label."""
    BAD_LABEL = "bad_label"
    """``clipsift clipselect``: a label outside ``[0, len(classes))``."""


_SPARK_TYPES = {
    pa.string(): "string",
    pa.binary(): "binary",
    pa.bool_(): "boolean",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.float32(): "float",
    pa.float64(): "double",
}


def spark_type(arrow_type: pa.DataType) -> str:
    """The Spark SQL type of an Arrow type (the ones clipsift's rows use, and lists of them)."""
    if pa.types.is_list(arrow_type):
        return f"array<{spark_type(arrow_type.value_type)}>"
    if arrow_type not in _SPARK_TYPES:
        raise TypeError(f"no Spark type for Arrow {arrow_type}")
    return _SPARK_TYPES[arrow_type]


def spark_ddl(schema: pa.Schema) -> str:
    """``name type, ...``: the Spark DDL of an Arrow schema."""
    return ", ".join(f"{f.name} {spark_type(f.type)}" for f in schema)


_EMBEDDING = pa.list_(pa.float32())

#: Pair metadata carried from the pool to the score table (DataComp's parquet names; null where unknown).
METADATA = pa.schema(
    [
        ("text", pa.string()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("clip_b32_similarity_score", pa.float64()),
        ("clip_l14_similarity_score", pa.float64()),
    ]
)
METADATA_COLUMNS = tuple(METADATA.names)

#: Rows of a pool as the readers produce them.
POOL_ARROW = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("image_emb", _EMBEDDING),
        ("text_emb", _EMBEDDING),
        ("load_status", pa.string()),
        ("load_error", pa.string()),
        *METADATA,
    ]
)
POOL_DDL = spark_ddl(POOL_ARROW)

#: Pool rows after the embedding checks (:func:`clipsift.udfs.ingest.check_batch`).
CHECKED_ARROW = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("image_emb", _EMBEDDING),
        ("text_emb", _EMBEDDING),
        ("status", pa.string()),
        ("error", pa.string()),
        ("image_norm", pa.float64()),
        ("text_norm", pa.float64()),
        *METADATA,
    ]
)
CHECKED_DDL = spark_ddl(CHECKED_ARROW)

#: Rows of image-caption pairs as the embed job's readers produce them.
PAIRS_ARROW = pa.schema(
    [
        ("uid", pa.string()),
        ("caption", pa.binary()),
        ("image", pa.binary()),
        ("image_path", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("load_status", pa.string()),
        ("load_error", pa.string()),
    ]
)
PAIRS_DDL = spark_ddl(PAIRS_ARROW)
