"""``clipsift embed``: image-caption pairs in, unit open_clip embeddings per (uid, model) out, resumable.

Reads:  WebDataset tar shards (img2dataset's layout: ``key.jpg|png|webp`` + ``key.txt`` + ``key.json``
        with a ``uid``), or a Delta/Parquet table with a uid, a caption and image bytes or image paths.
Writes: the embedding table (``output``; Delta, partitioned by ``model_id``; exactly one row per uid and
        model, with ``image_emb``/``text_emb``, statuses and the model's provenance), the rejects table
        ``<output>_rejects`` (input rows that cannot have a row of their own: null or repeated uid,
        unreadable shard) and the runs table ``<output>_runs``.

A run embeds only the uids the table lacks for this model, and commits every few shards (or
``rows_per_commit`` rows), so a crash loses at most the commit in flight and a rerun, or a run over
new shards, picks up where the table stands. Every input row ends up in exactly one place: the
embedding table (this run or an earlier one) or the rejects table; the job checks it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

import clipsift
from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, EmbedConfig, ModelConfig, to_dict
from clipsift.jobs.session import failpoint, job_description, job_main, session_conf
from clipsift.udfs.embed import RETRYABLE, embed_fn, output_ddl
from clipsift.udfs.models import ModelIdentity, ModelLoadError, ModelSpec, identify
from clipsift.udfs.schemas import STATUS

LOG = logging.getLogger("clipsift.embed")

#: Columns of the embedding table, in order.
OUTPUT_COLUMNS = (
    "uid", "model_id", "image_emb", "text_emb", "status", "image_status", "text_status", "error", "caption",
    "image_width", "image_height", "source", "source_row", "model_name", "pretrained", "checkpoint_sha256",
    "precision", "device", "image_size", "embed_dim", "embedding_dtype", "run_id", "embedded_at",
)  # fmt: skip
#: Input columns carried through the embedding UDF unchanged.
PASSTHROUGH = ("source", "source_row", "load_error")
PASSTHROUGH_DDL = "source string, source_row long, load_error string"


@dataclass(frozen=True)
class EmbedResult:
    """What a run did; ``rows_in == already_done + embedded + rejected`` always holds."""

    run_id: str
    model_id: str
    rows_in: int
    already_done: int
    embedded: int
    rejected: int
    by_status: dict[str, int]
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def model_spec(cfg: ModelConfig) -> ModelSpec:
    """The executor-side model spec of the config (a custom config's JSON travels as text)."""
    return ModelSpec(
        name=cfg.name,
        pretrained=cfg.pretrained,
        config_json=Path(cfg.config_json).read_text() if cfg.config_json else None,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
        threads=cfg.threads,
    )


def run(spark: SparkSession, cfg: EmbedConfig) -> EmbedResult:
    """Embed what ``cfg.output`` lacks of ``cfg.input`` for ``cfg.model``, a commit at a time."""
    started = time.time()
    started_at = datetime.now(timezone.utc)
    run_id = f"embed-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    io.ensure_schema(spark, cfg.output)
    with job_description(spark, f"clipsift embed {run_id}: list input rows"):
        # First, so a missing input path, table or column stops the run before the model is built.
        keys, shards = _input_keys(spark, cfg)
    spec = model_spec(cfg.model)
    try:
        ident = identify(spec)
    except ModelLoadError as exc:
        raise ConfigError("model", str(exc)) from None
    LOG.info("run %s: model %s (image size %d, dim %d)", run_id, ident.model_id, ident.image_size, ident.embed_dim)

    model_filter = F.col("model_id") == ident.model_id
    exists = io.table_exists(spark, cfg.output)
    with job_description(spark, f"clipsift embed {run_id}: list input rows"):
        keys = keys.persist(StorageLevel.MEMORY_AND_DISK)
        rows_in = keys.count()
        kept, rejects = _split_rows(spark, cfg, keys)
        if exists and cfg.embed.retry_failed:
            _drop_retryable(spark, cfg, ident.model_id, kept)
        done = io.read_table_ref(spark, cfg.output).where(model_filter).select("uid") if exists else None
        todo = kept if done is None else kept.join(done, on="uid", how="left_anti")
        todo = todo.persist(StorageLevel.MEMORY_AND_DISK)
        n_todo = todo.count()
        sources = shards if cfg.input.kind == "webdataset" else [cfg.input.label]
        n_rejected = _write_rejects(rejects, cfg, ident, run_id, sources)
    already_done = rows_in - n_rejected - n_todo
    LOG.info("run %s: %d rows in, %d already embedded, %d rejected, %d to embed", run_id, rows_in, already_done,
             n_rejected, n_todo)  # fmt: skip

    udf = embed_fn(spec, cfg.embed)  # image paths: read_bytes, refusing files over embed.max_image_bytes unread
    # Arrow batches of one image batch each: the UDF's batches line up with the model's.
    arrow_batch = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.embed.image_batch_size)}
    try:
        chunks = _chunks(cfg, todo, shards, n_todo)
        for i, (label, rows) in enumerate(chunks):
            t0 = time.time()
            description = f"clipsift embed {run_id}: commit {i + 1}/{len(chunks)} ({label})"
            with job_description(spark, description), session_conf(spark, arrow_batch):
                io.append_table(_embed(rows, udf, cfg, ident, run_id, started_at), cfg.output, partition_by="model_id")
            failpoint("embed:committed")  # one commit of the run's embeddings done, the others and the runs row not
            LOG.info("run %s: commit %d/%d (%s) in %.1f s", run_id, i + 1, len(chunks), label, time.time() - t0)
    finally:
        keys.unpersist()
        todo.unpersist()

    by_status: dict[str, int] = {}
    if n_todo:
        mine = io.read_table_ref(spark, cfg.output).where(model_filter & (F.col("run_id") == run_id))
        by_status = {r["status"]: int(r["count"]) for r in mine.groupBy("status").count().collect()}
    embedded = sum(by_status.values())
    seconds = time.time() - started
    result = EmbedResult(
        run_id=run_id,
        model_id=ident.model_id,
        rows_in=rows_in,
        already_done=already_done,
        embedded=embedded,
        rejected=n_rejected,
        by_status=by_status,
        seconds=seconds,
    )
    _record_run(spark, cfg, ident, result, started_at)
    if embedded != n_todo:
        raise RuntimeError(f"run {run_id}: {n_todo} rows were to be embedded but {embedded} were written")
    return result


def _input_keys(spark: SparkSession, cfg: EmbedConfig) -> tuple[DataFrame, list[str]]:
    """One row per input row: ``uid, source, source_row, load_status, load_error``; and the shards.

    No image bytes are read: tar headers and ``.json`` members only, or a table's uid column.
    """
    columns = ("uid", "source", "source_row", "load_status", "load_error")
    if cfg.input.kind == "webdataset":
        shards = io.list_webdataset_shards(str(cfg.input.path))
        keys = io.read_webdataset(spark, shards, cfg.input.image_extensions, keys_only=True)
        return keys.select(*columns), shards
    return io.read_pairs_table(spark, cfg.input).select(*columns), []


def _row_hash() -> Column:
    """Content hash that orders the rows of a repeated uid of a table (which has no row order of its own)."""
    return F.xxhash64("caption", "image", "image_path")


def _split_rows(spark: SparkSession, cfg: EmbedConfig, keys: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(kept, rejects)``: the rows that get an embedding row, and the ones that cannot.

    Rejected: a null uid, a shard that cannot be read, and every row of a repeated uid but the first
    (by source and row; a table's rows by content hash). The repeated uids are found on the uid column
    alone; only their rows are ranked, so a pool without repeats pays one aggregation.
    ``kept`` has ``uid, source, source_row, row_hash`` (the hash only for a table's repeated uids).
    """
    bad = F.col("load_status").isNotNull() | F.col("uid").isNull()
    rejects = keys.where(bad).select(
        "uid",
        "source",
        "source_row",
        F.coalesce("load_status", F.lit(STATUS.NULL_UID)).alias("status"),
        F.coalesce("load_error", F.lit("uid is null")).alias("error"),
    )
    valid = keys.where(~bad)
    repeated = valid.groupBy("uid").count().where(F.col("count") > 1).select("uid")
    no_hash = F.lit(None).cast("long").alias("row_hash")
    if repeated.isEmpty():
        return valid.select("uid", "source", "source_row", no_hash), rejects
    if cfg.input.kind == "webdataset":
        rows = valid.join(F.broadcast(repeated), on="uid").select("uid", "source", "source_row", no_hash)
    else:
        pairs = io.read_pairs_table(spark, cfg.input)
        rows = pairs.join(F.broadcast(repeated), on="uid").select(
            "uid", "source", "source_row", _row_hash().alias("row_hash")
        )
    order = Window.partitionBy("uid").orderBy("source", "source_row", "row_hash")
    ranked = rows.withColumn("_rank", F.row_number().over(order))
    first = ranked.where(F.col("_rank") == 1).drop("_rank")
    later = ranked.where(F.col("_rank") > 1).select(
        "uid",
        "source",
        "source_row",
        F.lit(STATUS.DUPLICATE_UID).alias("status"),
        F.lit("uid repeats an earlier input row; only the first one (by source and row) is embedded").alias("error"),
    )
    unique = valid.join(F.broadcast(repeated), on="uid", how="left_anti").select("uid", "source", "source_row", no_hash)
    return unique.unionByName(first), rejects.unionByName(later)


def _drop_retryable(spark: SparkSession, cfg: EmbedConfig, model_id: str, kept: DataFrame) -> None:
    """Delete this model's rows that failed for reasons that may pass, when this run's input has their uid
    (so they are embedded again now); failed rows of uids outside this input stay as they are."""
    retry = ", ".join(io.sql_string(s) for s in RETRYABLE)
    failed = (
        io.read_table_ref(spark, cfg.output)
        .where((F.col("model_id") == model_id) & F.expr(f"image_status IN ({retry}) OR text_status IN ({retry})"))
        .select("uid")
        .join(kept.select("uid"), on="uid", how="left_semi")
    )
    io.delete_matching(spark, cfg.output, failed, key="uid", condition=f"t.model_id = {io.sql_string(model_id)}")


def _write_rejects(
    rejects: DataFrame, cfg: EmbedConfig, ident: ModelIdentity, run_id: str, sources: Sequence[str]
) -> int:
    """Replace this model's rejects from this run's sources with the ones found now; returns their count.

    Rejects of other sources (shards or tables of earlier runs) stay.
    """
    provenance = (F.lit(ident.model_id).alias("model_id"), F.lit(run_id).alias("run_id"))
    out = rejects.select("uid", "source", "source_row", "status", "error", *provenance)
    ref = io.sibling(cfg.output, "rejects")
    listed = ", ".join(io.sql_string(s) for s in sources)
    condition = f"model_id = {io.sql_string(ident.model_id)} AND source IN ({listed})"
    io.replace_where(out, ref, condition, partition_by="model_id")
    spark = rejects.sparkSession
    mine = io.read_table_ref(spark, ref).where(
        (F.col("model_id") == ident.model_id) & F.col("source").isin(list(sources))
    )
    return int(mine.count())


def task_slots(spark: SparkSession, floor: int = 8) -> int:
    """How many tasks the session runs at once (Spark's default parallelism: its executors' cores), at least
    ``floor``; ``floor`` where the session does not say (Spark Connect has no SparkContext)."""
    try:
        return max(floor, int(spark.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect raises a not-implemented error of its own
        value = spark.conf.get("spark.default.parallelism", None)
        return max(floor, int(value)) if value else floor


def _chunks(cfg: EmbedConfig, todo: DataFrame, shards: Sequence[str], n_todo: int) -> list[tuple[str, DataFrame]]:
    """The rows to embed, one DataFrame per Delta commit."""
    spark = todo.sparkSession
    if n_todo == 0:
        return []
    if cfg.input.kind == "webdataset":
        # Per shard, how far its wanted rows reach: a read error before that is transient (the keys pass got there).
        last = todo.groupBy("source").agg(F.max("source_row").alias("last")).collect()
        needed = {str(r["source"]): int(r["last"]) + 1 for r in last}
        todo_shards = [s for s in shards if s in needed]
        step = cfg.embed.shards_per_commit or task_slots(spark)
        out = []
        for lo in range(0, len(todo_shards), step):
            group = todo_shards[lo : lo + step]
            rows = io.read_webdataset(spark, group, cfg.input.image_extensions, needed={s: needed[s] for s in group})
            wanted = todo.where(F.col("source").isin(group)).select("source", "source_row")
            label = f"shards {lo + 1}-{lo + len(group)} of {len(todo_shards)}"
            out.append((label, rows.join(F.broadcast(wanted), on=["source", "source_row"], how="left_semi")))
        return out
    n_chunks = max(1, math.ceil(n_todo / cfg.embed.rows_per_commit))
    pairs = io.read_pairs_table(spark, cfg.input)
    bounds = uid_bounds(todo, n_chunks, n_todo)
    out = []
    for j in range(len(bounds) + 1):
        in_range = F.lit(True)
        if j > 0:
            in_range = in_range & (F.col("uid") >= F.lit(bounds[j - 1]))
        if j < len(bounds):
            in_range = in_range & (F.col("uid") < F.lit(bounds[j]))
        wanted = todo.where(in_range).select("uid", F.col("row_hash").alias("_kept_hash"))
        rows = pairs.where(in_range).join(wanted, on="uid", how="inner")
        # A repeated uid keeps only its first row: the content hash picks it (computed only for those rows).
        rows = rows.where(F.col("_kept_hash").isNull() | (_row_hash() == F.col("_kept_hash"))).drop("_kept_hash")
        rows = rows.dropDuplicates(["uid"])  # rows identical in content tie on the hash: keep one
        out.append((f"uid range {j + 1} of {len(bounds) + 1}", rows))
    return out


def uid_bounds(todo: DataFrame, n_chunks: int, n_todo: int, sample_per_chunk: int = 200) -> list[str]:
    """Up to ``n_chunks − 1`` increasing uids that cut ``todo`` into ranges of about equal size.

    A commit reads the rows of one uid range: on an input table clustered by uid (Delta ``ZORDER BY``/liquid
    clustering, or files sorted by uid) the file and row-group statistics skip the other files, so each file is
    read about once; on an unclustered table each commit scans the table. From a seeded sample of the uids.
    """
    if n_chunks <= 1 or n_todo == 0:
        return []
    fraction = min(1.0, n_chunks * sample_per_chunk / n_todo)
    sample = sorted(r["uid"] for r in todo.select("uid").sample(fraction=fraction, seed=17).collect())
    if not sample:
        return []
    cuts = {sample[(len(sample) * j) // n_chunks] for j in range(1, n_chunks)}
    return sorted(c for c in cuts if c > sample[0])


def _embed(
    rows: DataFrame, udf: object, cfg: EmbedConfig, ident: ModelIdentity, run_id: str, started_at: datetime
) -> DataFrame:
    """Embed rows of :data:`~clipsift.udfs.schemas.PAIRS_DDL` and add provenance: the table's columns, in order."""
    image_col = "image" if cfg.input.image_path_col is None else "image_path"
    out = rows.select("uid", "caption", image_col, *PASSTHROUGH).mapInArrow(
        udf,  # type: ignore[arg-type]
        output_ddl(cfg.embed.dtype, PASSTHROUGH_DDL),
    )
    error = F.when(F.col("load_error").isNull(), F.col("error")).otherwise(
        F.concat_ws("; ", F.col("load_error"), F.col("error"))
    )
    return out.select(
        "uid",
        F.lit(ident.model_id).alias("model_id"),
        "image_emb",
        "text_emb",
        "status",
        "image_status",
        "text_status",
        error.alias("error"),
        "caption",
        "image_width",
        "image_height",
        "source",
        "source_row",
        F.lit(ident.name).alias("model_name"),
        F.lit(ident.pretrained).cast("string").alias("pretrained"),
        F.lit(ident.checkpoint_sha256).cast("string").alias("checkpoint_sha256"),
        "precision",
        "device",
        F.lit(ident.image_size).alias("image_size"),
        F.lit(ident.embed_dim).alias("embed_dim"),
        F.lit(cfg.embed.dtype).alias("embedding_dtype"),
        F.lit(run_id).alias("run_id"),
        F.lit(started_at).cast("timestamp").alias("embedded_at"),
    )


def _record_run(
    spark: SparkSession, cfg: EmbedConfig, ident: ModelIdentity, result: EmbedResult, started_at: datetime
) -> None:
    record = spark.createDataFrame(
        [
            (
                result.run_id,
                ident.model_id,
                started_at,
                float(result.seconds),
                cfg.input.label,
                result.rows_in,
                result.already_done,
                result.embedded,
                result.rejected,
                float(result.rows_per_second),
                json.dumps(result.by_status, sort_keys=True),
                json.dumps(to_dict(cfg), sort_keys=True),
                json.dumps(asdict(ident), sort_keys=True),
                clipsift.__version__,
            )
        ],
        "run_id string, model_id string, started_at timestamp, seconds double, input string, rows_in bigint, "
        "already_done bigint, embedded bigint, rejected bigint, rows_per_second double, rows_by_status string, "
        "config string, model string, code_version string",
    )
    io.replace_partition(record, io.sibling(cfg.output, "runs"), "run_id", result.run_id)


def summary(result: EmbedResult) -> str:
    """The one-paragraph report printed at the end of a run."""
    failed = {k: v for k, v in sorted(result.by_status.items()) if k != "ok"}
    failures = ", ".join(f"{k} {v}" for k, v in failed.items()) or "none"
    return (
        f"clipsift embed: run {result.run_id}, model {result.model_id}: {result.rows_in} rows in; "
        f"{result.already_done} already embedded, {result.embedded} embedded now "
        f"({result.by_status.get('ok', 0)} ok; failed: {failures}), {result.rejected} rejected "
        f"(see the _rejects table); {result.seconds:.1f} s, {result.rows_per_second:.1f} rows/s"
    )


def _log_to_stderr() -> None:
    """Progress lines of clipsift's loggers on stderr (open_clip's own INFO chatter stays off)."""
    logger = logging.getLogger("clipsift")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift embed --config embed.yaml [--set key=value ...]``; 2 on a bad config or path."""
    _log_to_stderr()
    return job_main("clipsift embed", EmbedConfig, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
