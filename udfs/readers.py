"""Readers that run on the executors (and the listing the driver does first): DataComp shards, WebDataset tars,
single files by path or URI. pyarrow and numpy only, no Spark: each yields Arrow batches of a schema in
:mod:`clipsift.udfs.schemas`, and a bad shard or sample becomes rows with a status, never an exception (except a
transient read error, which fails the task so that Spark retries it).
"""

from __future__ import annotations

import functools
import io as _stdio
import json
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clipsift.udfs.schemas import METADATA, METADATA_COLUMNS, PAIRS_ARROW, POOL_ARROW, STATUS


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

def list_shards(path: str, suffix: str, single_file: bool) -> list[str]:
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

# DataComp shards: <shard>.parquet beside <shard>.npz


def read_datacomp_shard(
    shard_path: str, img_key: str, txt_key: str, rows_per_batch: int
) -> Iterator[pa.RecordBatch]:
    """One DataComp shard as pool rows (:data:`~clipsift.udfs.schemas.POOL_ARROW`): every parquet row once; rows
    without embeddings (npz missing, unreadable, short, without the arch's arrays) carry ``load_status``."""
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
    for f in METADATA:
        if table is not None and f.name in table.column_names:
            out.append(table.column(f.name).combine_chunks().cast(f.type, safe=False))
        else:
            out.append(pa.nulls(table.num_rows if table is not None else n, f.type))
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

# WebDataset tars (img2dataset's layout)

WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")

class ShardReadError(RuntimeError):
    """A shard read failed before the samples an earlier pass read from it: transient, so the task is retried."""


def read_tar_shard(
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
                m = WDS_KEY.match(info.name)
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
