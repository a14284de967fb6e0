"""All storage access of clipsift: pool readers, target loading, Delta writes, table references in SQL.

Reads: DataComp shards (``<shard>.parquet`` + ``<shard>.npz``, row-aligned), embedding tables (Delta
or Parquet, by path or catalog name), target arrays (``.npy``/``.npz``/``.pt``).
Writes: the score table and its runs table (Delta, one partition per run id, re-runnable through
``replaceWhere``), selection tables and DataComp subset files.
"""

from __future__ import annotations

import functools
import hashlib
import io as _stdio
import json
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F

import clipsift
from clipsift.jobs.config import ClipSelectInputConfig, ConfigError, EmbedInputConfig, InputConfig, TableRef
from clipsift.jobs.schemas import POOL_ARROW, POOL_DDL, STATUS
from clipsift.udfs.arrow import half_columns_fn
from clipsift.udfs.ingest import METADATA_COLUMNS, METADATA_FIELDS
from clipsift.udfs.score import TargetHandle

# --------------------------------------------------------------------------------------------------
# Paths and SQL names


def arrow_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or a Hadoop-style URI.

    ``s3a://`` is read as ``s3://``; ``dbfs:/x`` as the FUSE path ``/dbfs/x`` (Databricks).
    """
    if uri.startswith("dbfs:/"):
        uri = "/dbfs/" + uri[len("dbfs:/") :].lstrip("/")
    if uri.startswith(("s3a://", "s3n://")):
        uri = "s3://" + uri.split("://", 1)[1]
    if uri.startswith("file:"):
        uri = uri[len("file:") :]
        uri = "/" + uri.lstrip("/")
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def quote_ident(name: str) -> str:
    """Backtick-quote one SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def sql_table(ref: TableRef) -> str:
    """How SQL names the table: quoted catalog name, or ``delta.`path```."""
    if ref.table is not None:
        return ".".join(quote_ident(p) for p in ref.table.split("."))
    return f"{ref.format}.{quote_ident(str(ref.path))}"


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sibling(ref: TableRef, suffix: str) -> TableRef:
    """The companion table of ``ref`` (``<name>_<suffix>`` beside it), e.g. the runs table."""
    if ref.table is not None:
        return TableRef(table=f"{ref.table}_{suffix}")
    return TableRef(path=f"{str(ref.path).rstrip('/')}_{suffix}")


# --------------------------------------------------------------------------------------------------
# Pool readers


def list_datacomp_shards(path: str) -> list[str]:
    """Paths of the ``*.parquet`` shards in a DataComp metadata folder, sorted."""
    return _list_shards(path, ".parquet", single_file=False)


def _list_shards(path: str, suffix: str, single_file: bool) -> list[str]:
    """Sorted files ending in ``suffix`` of the folder ``path`` (or ``path`` itself when a file and ``single_file``)."""
    fs, root = arrow_path(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input.path '{path}' does not exist")
    if single_file and info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(root, recursive=False)
    files = sorted(i.path for i in fs.get_file_info(selector) if i.path.endswith(suffix))
    if not files:
        raise FileNotFoundError(f"input.path '{path}' holds no {suffix} shards")
    prefix = path.rstrip("/") if "://" in path else None
    return [f"{prefix}/{Path(f).name}" if prefix else f for f in files]


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
                yield from _read_shard(shards[index], img_key, txt_key, rows_per_batch)

    # spark.range with one partition per shard: exactly one shard per task (a repartition of the
    # paths would deal them round-robin from a random start, several to a task).
    return spark.range(0, len(shards), 1, numPartitions=len(shards)).mapInArrow(read, POOL_DDL)


def _read_shard(shard_path: str, img_key: str, txt_key: str, rows_per_batch: int) -> Iterator[pa.RecordBatch]:
    source = Path(shard_path).stem
    fs, local = arrow_path(shard_path)
    try:
        with fs.open_input_file(local) as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in METADATA_COLUMNS if c in parquet.schema_arrow.names]
            meta = parquet.read(columns=["uid", *present])
        uids = meta.column("uid").combine_chunks().cast(pa.string())
    except Exception as exc:
        yield _status_batch([None], source, [None], STATUS.UNREADABLE_SHARD, f"cannot read {shard_path}: {exc}")
        return
    n = len(uids)
    npz_path = local[: -len(".parquet")] + ".npz"
    img: np.ndarray | None = None
    txt: np.ndarray | None = None
    problem = ""
    try:
        with fs.open_input_file(npz_path) as f, np.load(_stdio.BytesIO(f.read()), allow_pickle=False) as npz:
            missing = [k for k in (img_key, txt_key) if k not in npz.files]
            if missing:
                problem = f"{Path(npz_path).name} has no array {missing[0]} (has {', '.join(npz.files)})"
            else:
                img, txt = npz[img_key], npz[txt_key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        problem = f"cannot read {Path(npz_path).name}: {exc}"
    if img is not None and txt is not None and (img.ndim != 2 or txt.ndim != 2):
        problem = f"{img_key}/{txt_key} must be 2-D, got shapes {img.shape} and {txt.shape}"
        img = txt = None
    have = 0 if img is None or txt is None else min(img.shape[0], txt.shape[0])
    if img is not None and txt is not None and (img.shape[0] != n or txt.shape[0] != n):
        problem = f"npz has {img.shape[0]}/{txt.shape[0]} rows ({img_key}/{txt_key}), parquet has {n}"
    for lo in range(0, n, rows_per_batch):
        hi = min(n, lo + rows_per_batch)
        ok_hi = max(lo, min(hi, have))
        rows = np.arange(lo, hi, dtype=np.int64)
        status: list[str | None] = [None] * (ok_hi - lo) + [STATUS.MISSING_EMBEDDING] * (hi - ok_hi)
        error: list[str | None] = [None] * (ok_hi - lo) + [problem or "no embedding"] * (hi - ok_hi)
        yield pa.RecordBatch.from_arrays(
            [
                uids.slice(lo, hi - lo),
                pa.array([source] * (hi - lo), pa.string()),
                pa.array(rows),
                _embedding_array(img, lo, ok_hi, hi),
                _embedding_array(txt, lo, ok_hi, hi),
                pa.array(status, pa.string()),
                pa.array(error, pa.string()),
                *_metadata_arrays(meta.slice(lo, hi - lo)),
            ],
            schema=POOL_ARROW,
        )


def _metadata_arrays(table: pa.Table | None, n: int = 0) -> list[pa.Array]:
    """The metadata columns of ``table`` cast to the pool schema, nulls where it lacks one (or for ``n`` rows)."""
    out = []
    for name, arrow_type, _ in METADATA_FIELDS:
        if table is not None and name in table.column_names:
            out.append(table.column(name).combine_chunks().cast(arrow_type, safe=False))
        else:
            out.append(pa.nulls(table.num_rows if table is not None else n, arrow_type))
    return out


def _embedding_array(m: np.ndarray | None, lo: int, ok_hi: int, hi: int) -> pa.Array:
    """Rows lo..ok_hi of ``m`` as list<float>, then nulls up to hi."""
    n_ok = max(0, ok_hi - lo)
    n_null = hi - lo - n_ok
    if m is None or n_ok == 0:
        return pa.nulls(hi - lo, pa.list_(pa.float32()))
    block = np.ascontiguousarray(m[lo:ok_hi], dtype=np.float32)
    dim = block.shape[1]
    offsets = np.concatenate([np.arange(n_ok + 1) * dim, np.full(n_null, n_ok * dim)]).astype(np.int32)
    mask = np.concatenate([np.zeros(n_ok, bool), np.ones(n_null, bool)])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(block.reshape(-1)), mask=pa.array(mask))


def _status_batch(
    uids: Sequence[str | None], source: str, rows: Sequence[int | None], status: str, error: str
) -> pa.RecordBatch:
    n = len(uids)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(uids, pa.string()),
            pa.array([source] * n, pa.string()),
            pa.array(rows, pa.int64()),
            pa.nulls(n, pa.list_(pa.float32())),
            pa.nulls(n, pa.list_(pa.float32())),
            pa.array([status] * n, pa.string()),
            pa.array([error] * n, pa.string()),
            *_metadata_arrays(None, n),
        ],
        schema=POOL_ARROW,
    )


def read_table(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """Read an embedding table (by catalog name or path) as rows of the pool schema."""
    df = read_table_ref(spark, cfg)
    return as_pool(df, cfg)


def as_pool(df: DataFrame, cfg: InputConfig) -> DataFrame:
    """A DataFrame of embeddings as rows of the pool schema, its columns named by ``cfg`` (``uid_col``,
    ``image_col``, ``text_col``, ``shard_col``, ``metadata_cols``); where it came from does not matter.

    Raises:
        ValueError: when a named column is missing.
    """
    missing = [c for c in (cfg.uid_col, cfg.image_col, cfg.text_col, cfg.shard_col) if c and c not in df.columns]
    if missing:
        raise ValueError(
            f"input '{cfg.label}' has no column {missing[0]!r} (columns: {', '.join(df.columns)}); "
            "set input.uid_col / image_col / text_col / shard_col"
        )
    df = _one_model(df, cfg)
    source = F.col(cfg.shard_col).cast("string") if cfg.shard_col else F.lit(cfg.label)
    types = dict(df.dtypes)
    pairs = (("image_emb", cfg.image_col), ("text_emb", cfg.text_col))
    half = tuple(name for name, col in pairs if types[col] == "binary")

    def embedding(col: str) -> Column:
        return F.col(col) if types[col] == "binary" else F.col(col).cast("array<float>")

    metadata = []
    for name, _, ddl in METADATA_FIELDS:
        column = cfg.metadata_cols.get(name, name)
        value = F.col(column).cast(ddl) if column in df.columns else F.lit(None).cast(ddl)
        metadata.append(value.alias(name))
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
    """The pool as rows of :data:`clipsift.jobs.schemas.POOL_SCHEMA`, from DataComp shards or a table."""
    if cfg.kind == "datacomp":
        return read_datacomp(spark, str(cfg.path), cfg.arch)
    return read_table(spark, cfg)


def detect_dim(df: DataFrame, hint: str) -> int:
    """The most common length of ``image_emb`` (a few malformed rows do not decide it); one aggregate.

    Raises:
        ValueError: when no row has an image embedding; ``hint`` says what to check.
    """
    sizes = df.where(F.col("image_emb").isNotNull()).groupBy(F.size("image_emb").alias("d")).count()
    row = sizes.orderBy(F.col("count").desc(), F.col("d").asc()).first()
    if row is None:
        raise ValueError(f"the input has no image embeddings; {hint}")
    return int(row["d"])


def read_labelled_table(spark: SparkSession, cfg: ClipSelectInputConfig) -> DataFrame:
    """The input of ``clipsift clipselect`` as ``uid, image_emb, text_emb, label`` (text or label null by variant)."""
    df = read_table_ref(spark, cfg)
    wanted = [x for x in (cfg.uid_col, cfg.image_col, cfg.label_col, cfg.text_col) if x]
    missing = [x for x in wanted if x not in df.columns]
    if missing:
        raise ConfigError("input", f"'{cfg.label}' has no column {missing[0]!r} (columns: {', '.join(df.columns)})")
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


# --------------------------------------------------------------------------------------------------
# Image-caption pairs (embed job)

#: Rows of image-caption pairs as the embed job's readers produce them.
PAIRS_DDL = (
    "uid string, caption binary, image binary, image_path string, source string, source_row long, "
    "load_status string, load_error string"
)
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
_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def list_webdataset_shards(path: str) -> list[str]:
    """The ``.tar`` shards of a folder (sorted), or the one ``.tar`` given."""
    return _list_shards(path, ".tar", single_file=True)


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
                yield from _read_tar(path, exts, keys_only, rows_per_batch, wanted.get(path))

    return spark.range(0, len(paths), 1, numPartitions=max(1, len(paths))).mapInArrow(read, PAIRS_DDL)


class ShardReadError(RuntimeError):
    """A shard read failed before the samples an earlier pass read from it: transient, so the task is retried."""


def _read_tar(
    path: str, exts: tuple[str, ...], keys_only: bool, rows_per_batch: int, needed: int | None = None
) -> Iterator[pa.RecordBatch]:
    rows: list[dict[str, Any]] = []
    ordinal = 0

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pylist(rows, schema=PAIRS_ARROW)
        rows.clear()
        return batch

    def sample_row(key: str, members: dict[str, bytes | None]) -> dict[str, Any]:
        uid, errors = key, []
        if "json" in members:
            try:
                meta = json.loads(members["json"] or b"{}")
                found = meta.get("uid") if isinstance(meta, dict) else None
                if isinstance(found, str) and found:
                    uid = found
                elif found is not None:
                    errors.append(f"{key}.json has a uid that is not a string ({found!r}); the key is used as uid")
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                errors.append(f"{key}.json is not valid JSON ({type(exc).__name__}); the key is used as uid")
        image_ext = next((e for e in exts if e in members), None)
        if image_ext is None:
            names = ", ".join(sorted(members))
            errors.append(f"sample '{key}' has no image member ({', '.join(exts)}); members: {names}")
        error = "; ".join(errors) or None
        return {
            "uid": uid,
            "caption": members.get("txt"),
            "image": members.get(image_ext) if image_ext else None,
            "image_path": None,
            "source": path,
            "source_row": ordinal,
            "load_status": None,
            "load_error": error,
        }

    try:
        fs, local = arrow_path(path)
        with fs.open_input_file(local) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            key: str | None = None
            members: dict[str, bytes | None] = {}
            for info in tar:
                if not info.isfile():
                    continue
                m = _WDS_KEY.match(info.name)
                if m is None:
                    continue
                member_key, ext = m.group(1), m.group(2).lower()
                if member_key != key:
                    if key is not None:
                        rows.append(sample_row(key, members))
                        ordinal += 1
                        if len(rows) >= rows_per_batch:
                            yield flush()
                    key, members = member_key, {}
                wanted = ext == "json" or (not keys_only and (ext == "txt" or ext in exts))
                if wanted and ext not in members:
                    f = tar.extractfile(info)
                    members[ext] = f.read() if f is not None else None
                else:
                    members.setdefault(ext, None)
            # tarfile stops quietly at a header cut short: a whole archive ends with a zero block.
            stream = tar.fileobj
            stream.seek(tar.offset)
            end = stream.read(512)
            if len(end) < 512 or end.count(0) != 512:
                raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}: the shard is truncated")
            if key is not None:
                rows.append(sample_row(key, members))
    except (OSError, tarfile.TarError, EOFError) as exc:
        if needed is not None and ordinal < needed:
            raise ShardReadError(
                f"reading tar shard {path} failed after {ordinal} of the {needed} samples an earlier pass read "
                f"({type(exc).__name__}: {exc}); failing the task so that Spark retries it"
            ) from exc
        if rows:
            yield flush()
        broken = {
            "uid": None, "caption": None, "image": None, "image_path": None, "source": path,
            "source_row": None, "load_status": STATUS.UNREADABLE_SHARD,
            "load_error": f"cannot read tar shard {path} after {ordinal} samples: {type(exc).__name__}: {exc}",
        }  # fmt: skip
        rows.append(broken)
    if rows:
        yield flush()


def read_pairs_table(spark: SparkSession, cfg: EmbedInputConfig) -> DataFrame:
    """An image-caption table (bytes or paths) as rows of :data:`PAIRS_DDL`."""
    df = read_table_ref(spark, cfg)
    wanted = [c for c in (cfg.uid_col, cfg.caption_col, cfg.image_col, cfg.image_path_col) if c]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(
            f"input '{cfg.label}' has no column {missing[0]!r} (columns: {', '.join(df.columns)}); "
            "set input.uid_col / caption_col / image_col / image_path_col"
        )
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


@functools.lru_cache(maxsize=16)
def _filesystem(scheme_and_host: str) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(scheme_and_host + "/")
    return fs


def read_bytes(uri: str) -> bytes:
    """All bytes of one file given by local path or URI (the embed job's image fetcher, on executors)."""
    if uri.startswith("/Volumes/") or ("://" not in uri and not uri.startswith(("dbfs:", "file:"))):
        with open(uri, "rb") as f:
            return f.read()
    fs, local = arrow_path(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        scheme, rest = uri.split("://", 1)
        fs = _filesystem(f"{'s3' if scheme in ('s3a', 's3n') else scheme}://{rest.split('/', 1)[0]}")
    with fs.open_input_stream(local) as f:
        return bytes(f.read())


# --------------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """A loaded NormSim target: L2-normalised float32 rows plus provenance."""

    name: str
    matrix: np.ndarray
    sha256: str
    source: str
    rows_dropped: int
    """Target rows dropped for being non-finite or of zero norm."""


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    fs, local = arrow_path(path)
    digest = hashlib.sha256()
    with fs.open_input_stream(local) as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def load_target(name: str, path: str, key: str | None = None) -> Target:
    """Load a target matrix from ``.npy``, ``.npz`` (array ``key``, or the only array) or ``.pt``.

    Rows are L2-normalised; non-finite or zero rows are dropped and counted.

    Raises:
        FileNotFoundError: naming the target and the config key to fix.
        ValueError: when the file holds no 2-D array under ``key``.
    """
    fs, local = arrow_path(path)
    if fs.get_file_info(local).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"normsim target '{name}': file '{path}' does not exist (config key normsim.targets)")
    suffix = Path(local).suffix.lower()
    with fs.open_input_stream(local) as f:
        raw = _stdio.BytesIO(f.read())
    arr: Any
    if suffix == ".npy":
        arr = np.load(raw, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(raw, allow_pickle=False) as npz:
            arr = npz[_pick_key(name, path, key, list(npz.files))]
    else:
        arr = _load_torch(name, path, raw, key)
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"normsim target '{name}': '{path}' must hold a 2-D (rows, dim) array, got shape {arr.shape}")
    mat = arr.astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", mat, mat, dtype=np.float64))
    good = np.isfinite(norms) & (norms > 0) & np.isfinite(mat).all(axis=1)
    mat = (mat[good] / norms[good, None]).astype(np.float32)
    if mat.shape[0] == 0:
        raise ValueError(f"normsim target '{name}': '{path}' holds no usable (finite, non-zero) rows")
    return Target(name=name, matrix=mat, sha256=file_sha256(path), source=path, rows_dropped=int((~good).sum()))


def _pick_key(name: str, path: str, key: str | None, keys: list[str]) -> str:
    if key is not None:
        if key not in keys:
            raise ValueError(f"normsim target '{name}': '{path}' has no array '{key}' (has {', '.join(keys)})")
        return key
    if len(keys) != 1:
        raise ValueError(f"normsim target '{name}': '{path}' holds {keys}; set normsim.targets[].key")
    return keys[0]


def _load_torch(name: str, path: str, raw: _stdio.BytesIO, key: str | None) -> np.ndarray:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"normsim target '{name}': reading '{path}' needs torch; pip install 'clipsift[gpu]' or save it as .npy"
        ) from exc
    obj = torch.load(raw, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        obj = obj[_pick_key(name, path, key, [str(k) for k in obj])]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"normsim target '{name}': '{path}' does not hold a tensor")
    return np.asarray(obj.detach().float().cpu().numpy())


def ship_matrix(
    name: str, matrix: np.ndarray, sha256: str, *, moment: np.ndarray, closure_max_mb: int, staging_dir: str | None
) -> TargetHandle:
    """A matrix for the executors (a NormSim target, k-means centroids): in the UDF closure when it is at most
    ``closure_max_mb``, else written once to ``<staging_dir>/<name>-<sha>.npy`` for each worker to memory-map.

    Raises:
        ConfigError: (``normsim.staging_dir``) when it is larger and no staging folder is set.
    """
    rows = int(matrix.shape[0])
    if matrix.nbytes <= closure_max_mb * (1 << 20):
        return TargetHandle(name, sha256, rows, moment, matrix=matrix)
    if staging_dir is None:
        raise ConfigError(
            "normsim.staging_dir",
            f"'{name}' ({rows:,} rows) takes {matrix.nbytes >> 20} MiB, over normsim.closure_max_mb={closure_max_mb}; "
            "set normsim.staging_dir to a folder every executor can read, or raise normsim.closure_max_mb",
        )
    os.makedirs(staging_dir, exist_ok=True)
    out = os.path.join(staging_dir, f"{name}-{sha256[:16]}.npy")
    if not os.path.exists(out):
        tmp = f"{out[: -len('.npy')]}.tmp{os.getpid()}.npy"
        np.save(tmp, matrix)
        os.replace(tmp, out)
    return TargetHandle(name, sha256, rows, moment, path=out)


# --------------------------------------------------------------------------------------------------
# Delta writes


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


def _save(writer: DataFrameWriter, ref: TableRef) -> None:
    """Run a Delta write to ``ref``: by catalog name or by path."""
    if ref.table is not None:
        writer.saveAsTable(ref.table)
    else:
        writer.save(str(ref.path))


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
    _save(writer, ref)


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
    _save(writer, ref)


def replace_where(df: DataFrame, ref: TableRef, condition: str, partition_by: str | None = None) -> None:
    """Replace the rows of ``ref`` matching ``condition`` with ``df`` in one Delta commit (created on first use)."""
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
    if partition_by is not None:
        writer = writer.partitionBy(partition_by)
    _save(writer, ref)


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
    _save(writer, ref)


def write_subset_npy(uid_pairs: np.ndarray, path: str) -> None:
    """Write DataComp's subset file: a sorted structured array of dtype ``u8,u8``."""
    arr = np.sort(uid_pairs.astype(np.dtype("u8,u8")))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, out)
