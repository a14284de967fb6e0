"""``clipsift reshard``: a selection's samples copied out of the pool's WebDataset tars (or image table) into new
shards, exactly once, resumable.

Reads:  the selection (a view, or a selection name in ``<scores>_selections``), the pool's tars (the layout
        ``clipsift embed`` reads; their headers and ``.json`` members first, then only the selected members) or
        an image table (bytes or paths).
Writes: WebDataset tars (or Parquet files) of ``samples_per_shard`` samples in ``output.path``; the manifest Delta
        table (one row per shard: samples, bytes, sha256, uids, the config id) and the missing table (one row per
        selected uid not written, with its reason). Every selected uid is in exactly one of the two.

Shard names and bytes follow from the config alone, so a killed run rerun with the same config writes the shards
its manifest lacks, the same bytes an unbroken run writes, and no sample twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, TableRef, to_dict
from clipsift.jobs.config.reshard import ReshardConfig
from clipsift.jobs.session import Progress, failpoint, job_description, job_main, session_conf
from clipsift.udfs.readers import arrow_path
from clipsift.udfs.reshard import REASON, RESULT_ARROW, TEMP_MARK, copy_fn, file_digest, write_fn
from clipsift.udfs.schemas import spark_ddl

LOG = logging.getLogger("clipsift.reshard")

#: The manifest table: one row per output shard of a config.
MANIFEST_DDL = (
    "config_id string, shard int, name string, path string, format string, samples bigint, bytes bigint, "
    "sha256 string, uids array<string>, sources array<string>, run_id string, written_at timestamp"
)
#: The missing table: one row per selected uid that is not in the output.
MISSING_DDL = (
    "config_id string, uid string, source string, source_row bigint, shard int, reason string, error string, "
    "run_id string"
)
PLAN_DDL = "source string, source_row bigint, uid string, shard int, position bigint, extra string, image binary, " \
    "image_path string, caption binary"  # fmt: skip
COPIED_DDL = (
    "shard int, position bigint, uid string, source string, source_row bigint, source_key string, image binary, "
    "image_ext string, caption binary, meta binary, extra string, reason string, error string"
)
#: Groups of the shuffled order (``shuffle: true``): positions are counted per group, so no task sees all rows.
SHUFFLE_GROUPS = 1024
#: Each row's hash is taken modulo this before summing (a sum of 2**23 of them cannot overflow a long).
HASH_MOD = 1 << 40
#: Samples per Arrow batch between the stages (image bytes ride in them).
ROWS_PER_BATCH = 64


@dataclass(frozen=True)
class ReshardResult:
    """What a run did; ``selected == written + missing`` always holds (the job checks it)."""

    run_id: str
    config_id: str
    selected: int
    written: int
    missing: int
    shards: int
    shards_written: int
    shards_kept: int
    written_now: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        """Samples this run wrote per second of the whole run (locating included)."""
        return self.written_now / self.seconds if self.seconds > 0 else 0.0


def run(spark: SparkSession, cfg: ReshardConfig) -> ReshardResult:
    """Write the shards of ``cfg`` that its manifest lacks, then check that every selected uid is accounted for."""
    started = time.time()
    started_at = datetime.now(timezone.utc)
    run_id = f"reshard-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    manifest_ref, missing_ref = cfg.output.tables()
    for ref in (manifest_ref, missing_ref):
        io.ensure_schema(spark, ref)
    with job_description(spark, f"clipsift reshard {run_id}: locate the selected samples"):
        selection, identity = read_selection(spark, cfg)
        extra = _extra_columns(cfg, selection)
        located, tars = _locate(spark, cfg, selection, extra)
        located = located.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _run(spark, cfg, run_id, started, identity, located, tars, manifest_ref, missing_ref)
    finally:
        located.unpersist()


def _run(
    spark: SparkSession,
    cfg: ReshardConfig,
    run_id: str,
    started: float,
    identity: dict[str, object],
    located: DataFrame,
    tars: int,
    manifest_ref: TableRef,
    missing_ref: TableRef,
) -> ReshardResult:
    out = cfg.output
    progress = Progress(spark, f"clipsift reshard {run_id}")
    with progress.step("locate the selected samples") as counts:
        stats = located.agg(
            F.count(F.lit(1)).alias("selected"),
            F.count(F.when(F.col("reason").isNull(), 1)).alias("ok"),
            F.coalesce(F.sum(F.xxhash64("uid", "source", "source_row", "reason", "extra") % HASH_MOD), F.lit(0)).alias(
                "h"
            ),
        ).first()
        assert stats is not None
        counts["rows"] = int(stats["selected"])
    selected, n_ok = int(stats["selected"]), int(stats["ok"])
    config_id = _config_id(cfg, identity, selected, int(stats["h"]))
    n_shards = math.ceil(n_ok / out.samples_per_shard)
    LOG.info("run %s: config %s: %d selected, %d located, %d shards", run_id, config_id, selected, n_ok, n_shards)

    with progress.step("plan: finished shards, positions, uids not found"):
        _check_config(spark, cfg, config_id, manifest_ref, missing_ref)
        _remove_temporaries(out.path)
        done = _finished_shards(spark, cfg, config_id, manifest_ref, n_shards)
        plan = _plan(located, cfg, n_shards).persist(StorageLevel.MEMORY_AND_DISK)
        missing_now = located.where(F.col("reason").isNotNull()).select(
            "uid", "source", "source_row", F.lit(None).cast("int").alias("shard"), "reason", "error"
        )
        _replace(missing_now, missing_ref, config_id, run_id, "`shard` IS NULL")
        # Shards with missing rows recorded by an earlier run: replaced even when this run finds none there.
        lost_before = {
            int(r["shard"])
            for r in _of_config(spark, missing_ref, config_id, MISSING_DDL).where(F.col("shard").isNotNull())
            .select("shard").distinct().collect()
        }  # fmt: skip

    todo = [s for s in range(n_shards) if s not in done]
    step = out.shards_per_commit
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(ROWS_PER_BATCH)}
    for lo in range(0, len(todo), step):
        group = todo[lo : lo + step]
        label = f"shards {group[0]}-{group[-1]} ({lo + len(group)} of {len(todo)} to write)"
        with progress.step(label) as counts, session_conf(spark, settings):
            outcome = _write_group(plan, cfg, group, tars).persist(StorageLevel.MEMORY_AND_DISK)
            try:
                in_group = f"`shard` IN ({', '.join(str(s) for s in group)})"
                lost = outcome.where(F.col("kind") == "missing")
                if lost_before.intersection(group) or not lost.isEmpty():
                    _replace(lost.select("uid", "source", "source_row", "shard", "reason", "error"), missing_ref,
                             config_id, run_id, in_group)  # fmt: skip
                failpoint("reshard:shards-written")  # files written, the manifest does not list them yet
                shards = outcome.where(F.col("kind") == "shard").select(
                    "shard", "name", F.lit(_join(out.path, "")).alias("_dir"), F.lit(out.format).alias("format"),
                    "samples", "bytes", "sha256", "uids", "sources",
                )  # fmt: skip
                shards = shards.withColumn("path", F.concat("_dir", "name")).drop("_dir")
                _replace(shards, manifest_ref, config_id, run_id, in_group, written_at=True)
                counts["rows"] = sum(int(r["samples"]) for r in shards.select("samples").collect())  # a row per shard
            finally:
                outcome.unpersist()
        failpoint("reshard:committed")  # a commit of shards recorded, the others not written yet
    plan.unpersist()

    now = F.when(F.col("run_id") == run_id, F.col("samples"))
    written_row = (
        _of_config(spark, manifest_ref, config_id, MANIFEST_DDL)
        .agg(
            F.coalesce(F.sum("samples"), F.lit(0)).alias("n"),
            F.count(F.lit(1)).alias("shards"),
            F.coalesce(F.sum(now), F.lit(0)).alias("now"),
        )
        .first()
    )
    assert written_row is not None
    written, shards_listed = int(written_row["n"]), int(written_row["shards"])
    missing = _of_config(spark, missing_ref, config_id, MISSING_DDL).count()
    result = ReshardResult(
        run_id=run_id, config_id=config_id, selected=selected, written=written, missing=missing, shards=n_shards,
        shards_written=len(todo), shards_kept=len(done), written_now=int(written_row["now"]),
        seconds=time.time() - started,
    )  # fmt: skip
    if written + missing != selected or shards_listed != n_shards:
        raise RuntimeError(
            f"run {run_id}: {selected} uids selected but {written} written and {missing} missing "
            f"({shards_listed} of {n_shards} shards in the manifest)"
        )
    return result


# The selection


def read_selection(spark: SparkSession, cfg: ReshardConfig) -> tuple[DataFrame, dict[str, object]]:
    """The selection's rows (one per uid) and what names it in the config id.

    Raises:
        ConfigError: (``selection.*``) the view, the selections table or the selection does not exist, or the rows
            have no ``uid`` column.
    """
    sel = cfg.selection
    identity: dict[str, object]
    if sel.view is not None:
        if not spark.catalog.tableExists(sel.view):
            raise ConfigError("selection.view", f"no view or table '{sel.view}'; run clipsift select first")
        df, identity = spark.table(sel.view), {"view": sel.view}
    else:
        assert sel.scores is not None
        ref = io.sibling(sel.scores, "selections")
        if not io.table_exists(spark, ref):
            raise ConfigError("selection.scores", f"no selections table '{ref.label}'; run clipsift select first")
        recorded = io.read_table_ref(spark, ref).where(F.col("name") == F.lit(sel.name))
        if sel.run_id is not None:
            recorded = recorded.where(F.col("run_id") == sel.run_id)
        row = recorded.orderBy(F.col("created_at").desc()).select("run_id", "view", "sql").first()
        if row is None:
            which = f" of run {sel.run_id}" if sel.run_id else ""
            raise ConfigError("selection.name", f"no selection '{sel.name}'{which} in '{ref.label}'")
        view = str(row["view"])
        # The recorded SQL reads the score table itself: the selection is there even where the view is not.
        df = spark.table(view) if spark.catalog.tableExists(view) else spark.sql(str(row["sql"]))
        identity = {"name": sel.name, "scores": sel.scores.label, "run_id": str(row["run_id"])}
    if "uid" not in df.columns:
        raise ConfigError("selection", f"the selection has no uid column (columns: {', '.join(df.columns)})")
    return df, identity


def _extra_columns(cfg: ReshardConfig, selection: DataFrame) -> list[str]:
    types = dict(selection.dtypes)
    if cfg.output.columns is None:
        return [c for c, t in selection.dtypes if t in ("float", "double", "boolean") and c != "uid"]
    for i, c in enumerate(cfg.output.columns):
        if c not in types:
            have = ", ".join(selection.columns)
            raise ConfigError(f"output.columns[{i}]", f"the selection has no column '{c}' (columns: {have})")
    return list(cfg.output.columns)


def _extra(columns: Sequence[str]) -> Column:
    """The selection's columns as one JSON object (copied into each sample's ``.json``)."""
    if not columns:
        return F.lit("{}")
    return F.to_json(F.struct(*[F.col(c) for c in columns]), {"ignoreNullFields": "false"})


# Locating the selected samples


def _locate(
    spark: SparkSession, cfg: ReshardConfig, selection: DataFrame, extra: Sequence[str]
) -> tuple[DataFrame, int]:
    """One row per selected uid: ``uid, extra, source, source_row, image, image_path, caption, reason, error``
    (``reason`` set where the uid cannot be written: not in the pool, no image); and the number of input tars.

    WebDataset: one task per tar reads its headers and ``.json`` members (no image bytes); a uid found in several
    samples is taken from the first (by tar, then sample), as ``clipsift embed`` does.
    """
    sel = selection.where(F.col("uid").isNotNull()).select(
        F.col("uid").cast("string").alias("uid"), _extra(extra).alias("extra")
    )
    sel = sel.dropDuplicates(["uid"])
    pool = cfg.pool
    if pool.kind == "webdataset":
        tars = io.list_webdataset_shards(str(pool.path))
        keys = io.read_webdataset(spark, tars, pool.image_extensions, keys_only=True).where(F.col("uid").isNotNull())
        no_image = F.coalesce(F.col("load_error").contains("has no image member"), F.lit(False))
        found = keys.select(
            "uid", "source", "source_row", no_image.alias("_no_image"), F.col("load_error").alias("_err")
        )
        null_bytes = (F.lit(None).cast("binary"), F.lit(None).cast("string"), F.lit(None).cast("binary"))
    else:
        tars = []
        pairs = io.read_pairs_table(spark, pool)
        found = pairs.select("uid", "source", "source_row", (F.col("image").isNull() & F.col("image_path").isNull())
                             .alias("_no_image"), F.lit(None).cast("string").alias("_err"), "image", "image_path",
                             "caption")  # fmt: skip
        null_bytes = None
    first = Window.partitionBy("uid").orderBy("source", "source_row")
    found = found.withColumn("_n", F.row_number().over(first)).where(F.col("_n") == 1).drop("_n")
    rows = sel.join(found, "uid", "left")
    if null_bytes is not None:
        rows = rows.select("*", null_bytes[0].alias("image"), null_bytes[1].alias("image_path"),
                           null_bytes[2].alias("caption"))  # fmt: skip
    reason = (
        F.when(F.col("source").isNull(), F.lit(REASON.NOT_IN_POOL))
        .when(F.col("_no_image"), F.lit(REASON.NO_IMAGE))
        .otherwise(F.lit(None).cast("string"))
    )
    error = (
        F.when(F.col("source").isNull(), F.lit(f"no sample of the pool {pool.label} has this uid"))
        .when(F.col("_no_image"), F.coalesce(F.col("_err"), F.lit("the row's image is null")))
        .otherwise(F.lit(None).cast("string"))
    )
    located = rows.select(
        "uid", "extra", "source", "source_row", "image", "image_path", "caption",
        reason.alias("reason"), error.alias("error"),
    )  # fmt: skip
    return located, len(tars)


# The plan: an output shard and position for every located uid


def _plan(located: DataFrame, cfg: ReshardConfig, n_shards: int) -> DataFrame:
    """``located``'s writable rows with ``shard`` and ``position`` (0..n-1 in output order): the pool's order (tar,
    sample) or, with ``shuffle``, a seeded hash of the uid (a table's rows: always so). Positions are counted per
    group (a tar, or one of :data:`SHUFFLE_GROUPS` hash groups): a small count per group on the driver, then a
    window per group, so no task holds the whole selection."""
    out = cfg.output
    ok = located.where(F.col("reason").isNull())
    if out.shuffle or cfg.pool.kind == "table":  # a table has no order of its own: by hash, then uid
        h = F.xxhash64(F.lit(out.seed), F.col("uid"))
        ok = ok.withColumn("_group", F.pmod(h, F.lit(SHUFFLE_GROUPS)).cast("string")).withColumn("_order", h)
    else:
        ok = ok.withColumn("_group", F.col("source")).withColumn("_order", F.col("source_row"))
    counts = sorted((str(r["_group"]), int(r["count"])) for r in ok.groupBy("_group").count().collect())
    offsets, total = [], 0
    for group, count in counts:
        offsets.append((group, total))
        total += count
    spark = located.sparkSession
    offset_df = spark.createDataFrame(offsets or [("", 0)], "_group string, _offset bigint")
    rank = F.row_number().over(Window.partitionBy("_group").orderBy("_order", "uid")) - 1
    plan = ok.join(F.broadcast(offset_df), "_group").withColumn("position", F.col("_offset") + rank)
    plan = plan.withColumn("shard", F.floor(F.col("position") / F.lit(out.samples_per_shard)).cast("int"))
    return plan.select("source", "source_row", "uid", "shard", "position", "extra", "image", "image_path", "caption")


def _write_group(plan: DataFrame, cfg: ReshardConfig, group: Sequence[int], tars: int) -> DataFrame:
    """Copy the samples of the output shards ``group`` (each input tar read by one task, only its selected
    members), then write each shard in one task. Rows of :data:`~clipsift.udfs.reshard.RESULT_ARROW`."""
    pool, out = cfg.pool, cfg.output
    rows = plan.where(F.col("shard").isin(list(group)))
    exts = tuple(e.lower().lstrip(".") for e in pool.image_extensions)
    copy = copy_fn(pool.kind, exts, out.encode, ROWS_PER_BATCH)
    if pool.kind == "webdataset":
        rows = rows.repartition(max(1, tars), "source").sortWithinPartitions("source", "source_row")
    copied = rows.mapInArrow(copy, COPIED_DDL)
    by_shard = copied.repartition(len(group), "shard").sortWithinPartitions("shard", "position")
    return by_shard.mapInArrow(write_fn(out.path, out.format, out.samples_per_shard), spark_ddl(RESULT_ARROW))


# Config identity, resume and the tables


def _config_id(cfg: ReshardConfig, identity: dict[str, object], selected: int, fingerprint: int) -> str:
    """What the output's bytes depend on: the selection (its name and run, and a fingerprint of its located rows),
    the pool and the output settings but the path and commit size."""
    out = to_dict(cfg.output)
    for name in ("path", "shards_per_commit", "manifest", "overwrite"):
        out.pop(name)
    basis = {"selection": identity, "selected": selected, "fingerprint": fingerprint, "pool": to_dict(cfg.pool),
             "output": out}  # fmt: skip
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def _of_config(spark: SparkSession, ref: TableRef, config_id: str, ddl: str) -> DataFrame:
    """This config's rows of the manifest or missing table (none before the table exists)."""
    if not io.table_exists(spark, ref):
        return spark.createDataFrame([], ddl)
    return io.read_table_ref(spark, ref).where(F.col("config_id") == config_id)


def _check_config(
    spark: SparkSession, cfg: ReshardConfig, config_id: str, manifest_ref: TableRef, missing_ref: TableRef
) -> None:
    """Refuse to add this config's shards to a folder holding another config's (or, with ``overwrite``, remove
    those shards and their manifest and missing rows)."""
    if not io.table_exists(spark, manifest_ref):
        return
    others = io.read_table_ref(spark, manifest_ref).where(F.col("config_id") != config_id)
    found = [str(r["config_id"]) for r in others.select("config_id").distinct().limit(3).collect()]
    if not found:
        return
    if not cfg.output.overwrite:
        raise ConfigError(
            "output.path",
            f"'{cfg.output.path}' holds the shards of another config ({', '.join(found)}; this one is {config_id}: "
            "the selection, pool or output settings differ); write to a new folder, or set output.overwrite: true",
        )
    fs, _ = arrow_path(cfg.output.path)
    for r in others.select("path").collect():  # one row per shard
        _, local = arrow_path(str(r["path"]))
        if fs.get_file_info(local).type == pafs.FileType.File:
            fs.delete_file(local)
    for ref in (manifest_ref, missing_ref):
        if io.table_exists(spark, ref):
            empty = spark.createDataFrame([], MANIFEST_DDL if ref is manifest_ref else MISSING_DDL)
            io.replace_where(empty, ref, f"`config_id` != {io.sql_string(config_id)}")


def _remove_temporaries(path: str) -> None:
    """Delete the half-written files a killed run left (names with :data:`TEMP_MARK`)."""
    fs, root = arrow_path(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if TEMP_MARK in info.base_name and info.type == pafs.FileType.File:
            fs.delete_file(info.path)


def _finished_shards(spark: SparkSession, cfg: ReshardConfig, config_id: str, ref: TableRef, n: int) -> set[int]:
    """The shards of this config that the manifest lists and whose file is there with its recorded sha256 (the
    files are hashed on the executors, one task per few shards)."""
    if not io.table_exists(spark, ref):
        return set()
    listed = io.read_table_ref(spark, ref).where((F.col("config_id") == config_id) & (F.col("shard") < n))
    listed = listed.select("shard", "path", "bytes", "sha256")

    def check(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ok = []
            for row in batch.to_pylist():
                got = file_digest(row["path"])
                ok.append(got is not None and got == (row["bytes"], row["sha256"]))
            yield pa.RecordBatch.from_arrays([batch.column(0), pa.array(ok, pa.bool_())], names=["shard", "ok"])

    checked = listed.repartition(max(1, min(64, n))).mapInArrow(check, "shard int, ok boolean")
    return {int(r["shard"]) for r in checked.where("ok").collect()}  # one row per shard


def _replace(
    df: DataFrame, ref: TableRef, config_id: str, run_id: str, condition: str, written_at: bool = False
) -> None:
    """Replace this config's rows of ``ref`` matching ``condition`` with ``df`` (one Delta commit)."""
    df = df.withColumn("config_id", F.lit(config_id)).withColumn("run_id", F.lit(run_id))
    if written_at:
        df = df.withColumn("written_at", F.current_timestamp())
    df = df.select(*_columns(MANIFEST_DDL if written_at else MISSING_DDL))
    io.replace_where(df, ref, f"`config_id` = {io.sql_string(config_id)} AND {condition}")


def _columns(ddl: str) -> list[str]:
    """The column names of a DDL string (its types hold no commas)."""
    return [part.split()[0] for part in ddl.split(",")]


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift reshard --config reshard.yaml [--set key=value ...]``; 2 on a bad config or path."""
    return job_main("clipsift reshard", ReshardConfig, run, _summary, argv)


def _summary(result: ReshardResult) -> str:
    return (
        f"clipsift reshard: run {result.run_id} (config {result.config_id}): {result.selected} selected, "
        f"{result.written} written in {result.shards} shards ({result.shards_written} written now, "
        f"{result.shards_kept} kept), {result.missing} missing; {result.samples_per_second:,.0f} samples/s"
    )


if __name__ == "__main__":
    sys.exit(main())
