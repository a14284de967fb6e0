"""All storage access of the jobs, by concern: :mod:`.sources` (the inputs as DataFrames), :mod:`.targets`
(NormSim targets and matrices shipped to executors), :mod:`.tables` (Delta reads and writes, the runs table),
:mod:`.subsets` (DataComp subset files), :mod:`.sql` (SQL names). The executor side of the readers is
:mod:`clipsift.udfs.readers`.

The jobs write ``from clipsift.jobs import io`` and call ``io.read_pool``, ``io.replace_partition``, ...
"""

from clipsift.jobs.io.sources import (
    as_pool,
    detect_dim,
    list_datacomp_shards,
    list_webdataset_shards,
    read_datacomp,
    read_labelled_table,
    read_pairs_table,
    read_pool,
    read_table,
    read_webdataset,
)
from clipsift.jobs.io.sql import quote_ident, sibling, sql_string, sql_table
from clipsift.jobs.io.subsets import SubsetFileError, inspect_subset, subset_uids, uid_pairs, write_subset_npy
from clipsift.jobs.io.tables import (
    RUNS_DDL,
    append_table,
    delete_matching,
    ensure_schema,
    overwrite_table,
    read_table_ref,
    record_run,
    replace_partition,
    replace_where,
    table_bytes,
    table_exists,
)
from clipsift.jobs.io.targets import Target, file_sha256, load_target, ship_matrix

__all__ = [
    "RUNS_DDL",
    "SubsetFileError",
    "Target",
    "append_table",
    "as_pool",
    "delete_matching",
    "detect_dim",
    "ensure_schema",
    "file_sha256",
    "inspect_subset",
    "list_datacomp_shards",
    "list_webdataset_shards",
    "load_target",
    "overwrite_table",
    "quote_ident",
    "read_datacomp",
    "read_labelled_table",
    "read_pairs_table",
    "read_pool",
    "read_table",
    "read_table_ref",
    "read_webdataset",
    "record_run",
    "replace_partition",
    "replace_where",
    "ship_matrix",
    "sibling",
    "sql_string",
    "sql_table",
    "subset_uids",
    "table_bytes",
    "table_exists",
    "uid_pairs",
    "write_subset_npy",
]
