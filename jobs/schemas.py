"""Schemas and status values shared by the jobs."""

from __future__ import annotations

import pyarrow as pa

from clipsift.udfs import ingest


class STATUS:
    """Values of the ``status`` column; every row of a score table has exactly one."""

    OK = ingest.OK
    UNREADABLE_SHARD = "unreadable_shard"
    MISSING_EMBEDDING = "missing_embedding"
    NULL_UID = ingest.NULL_UID
    DUPLICATE_UID = "duplicate_uid"
    NULL_EMBEDDING = ingest.NULL_EMBEDDING
    BAD_DIMENSION = ingest.BAD_DIMENSION
    NON_FINITE = ingest.NON_FINITE
    ZERO_NORM = ingest.ZERO_NORM


#: Rows of a pool as the readers produce them (Spark DDL and the matching Arrow schema).
POOL_DDL = (
    "uid string, source string, source_row long, image_emb array<float>, text_emb array<float>, "
    f"load_status string, load_error string, {ingest.METADATA_DDL}"
)
POOL_ARROW = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("image_emb", pa.list_(pa.float32())),
        ("text_emb", pa.list_(pa.float32())),
        ("load_status", pa.string()),
        ("load_error", pa.string()),
        *((name, arrow_type) for name, arrow_type, _ in ingest.METADATA_FIELDS),
    ]
)
