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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    if isinstance(fs, pafs.LocalFileSystem):
        # pyarrow's listing leaves out a symlink whose target is gone; listed, it reads as an unreadable shard
        # instead of its rows vanishing without a word.
        files = sorted(os.path.join(root, name) for name in os.listdir(root) if name.endswith(suffix))
    else:
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


class FileTooLargeError(OSError):
    """A file over the byte limit of :func:`read_bytes`: it was not read (or read no further than the limit)."""

    def __init__(self, uri: str, size: int | None, limit: int) -> None:
        held = f"{size:,} bytes" if size is not None else "more bytes"
        super().__init__(f"{uri} holds {held}, over the limit of {limit:,}; not read")
        self.uri = uri
        self.size = size
        self.limit = limit


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """All bytes of one file given by local path or URI (the embed job's image fetcher, on executors).

    Args:
        uri: a local path, ``/Volumes/...``, ``dbfs:/``, ``file:``, ``s3a://``, ``gs://``, ``hdfs://``, ...
        max_bytes: the most bytes to return. A file whose size is larger is refused before any byte is read; a
            file that holds more than its size said (it grew, or a special file that reports no size) is read no
            further than ``max_bytes + 1`` bytes. None reads the whole file.

    Raises:
        FileTooLargeError: the file holds more than ``max_bytes`` bytes.
        OSError: the file cannot be read (missing, no permission, a store's error).
    """
    if uri.startswith("/Volumes/") or ("://" not in uri and not uri.startswith(("dbfs:", "file:"))):
        with open(uri, "rb") as f:
            return _read_capped(f, os.fstat(f.fileno()).st_size, uri, max_bytes)
    fs, local = arrow_path(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        scheme, rest = uri.split("://", 1)
        fs = _filesystem(f"{'s3' if scheme in ('s3a', 's3n') else scheme}://{rest.split('/', 1)[0]}")
    # A random-access file knows its size from opening it (one metadata request on an object store, as a stream's).
    with fs.open_input_file(local) as f:
        return _read_capped(f, f.size(), uri, max_bytes)


def _read_capped(f: Any, size: int, uri: str, max_bytes: int | None) -> bytes:
    """The bytes of the open file ``f`` of ``size`` bytes (as its metadata says), at most ``max_bytes`` of them."""
    if max_bytes is None:
        return bytes(f.read())
    if size > max_bytes:
        raise FileTooLargeError(uri, size, max_bytes)
    want = size + 1  # one byte past the size: a file that holds more than it said shows it
    data = bytes(f.read(want))
    if len(data) == want:
        data += bytes(f.read(max_bytes + 1 - want))
    if len(data) > max_bytes:
        raise FileTooLargeError(uri, None, max_bytes)
    return data


# DataComp shards: <shard>.parquet beside <shard>.npz


def read_datacomp_shard(shard_path: str, img_key: str, txt_key: str, rows_per_batch: int) -> Iterator[pa.RecordBatch]:
    """One DataComp shard as pool rows (:data:`~clipsift.udfs.schemas.POOL_ARROW`): every parquet row once.

    Rows without embeddings (npz missing, short, without the arch's arrays) carry ``missing_embedding``; every row
    of a shard whose npz is there but cannot be decoded (corrupt, a bare ``.npy``, not numbers) or whose metadata
    column does not convert carries ``unreadable_shard``; a metadata value out of its column's range,
    ``bad_metadata``. A parquet that cannot be read gives one ``unreadable_shard`` row with a null uid. Nothing the
    files hold raises.
    """
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
    status = np.full(n, None, dtype=object)
    error = np.full(n, None, dtype=object)
    metadata, lost, broken = _pool_metadata(meta)
    npz_uri = shard_path[: -len(".parquet")] + ".npz"
    img, txt, missing, unreadable = _read_npz(fs, local[: -len(".parquet")] + ".npz", npz_uri, img_key, txt_key)
    if broken or unreadable:
        status[:] = STATUS.UNREADABLE_SHARD
        error[:] = f"cannot read {shard_path}: {broken}" if broken else unreadable
        img = txt = None
    have = 0 if img is None or txt is None else min(img.shape[0], txt.shape[0])
    if img is not None and txt is not None and (img.shape[0] != n or txt.shape[0] != n):
        missing = f"npz has {img.shape[0]}/{txt.shape[0]} rows ({img_key}/{txt_key}), parquet has {n}"
    if not (broken or unreadable):
        status[have:] = STATUS.MISSING_EMBEDDING
        error[have:] = missing or "no embedding"
        bad = (lost != None) & (status == None)  # noqa: E711 - elementwise comparison on object arrays
        status[bad] = STATUS.BAD_METADATA
        error[bad] = lost[bad]
    for lo in range(0, n, rows_per_batch):
        hi = min(n, lo + rows_per_batch)
        ok_hi = max(lo, min(hi, have))
        yield pa.RecordBatch.from_arrays(
            [
                uids.slice(lo, hi - lo),
                pa.array([source] * (hi - lo), pa.string()),
                pa.array(np.arange(lo, hi, dtype=np.int64)),
                _embedding_array(img, lo, ok_hi, hi),
                _embedding_array(txt, lo, ok_hi, hi),
                pa.array(status[lo:hi].tolist(), pa.string()),
                pa.array(error[lo:hi].tolist(), pa.string()),
                *(column.slice(lo, hi - lo) for column in metadata),
            ],
            schema=POOL_ARROW,
        )


def _read_npz(
    fs: pafs.FileSystem, local: str, uri: str, img_key: str, txt_key: str
) -> tuple[np.ndarray | None, np.ndarray | None, str, str]:
    """``(img, txt, missing, unreadable)`` of a shard's npz: the two 2-D numeric arrays, or why not.

    ``missing``: the embeddings are not there (no npz, no array of the arch, not 2-D); ``unreadable``: the npz is
    there but does not decode (anything np.load or the arrays raise: zlib.error, BadZipFile, tokenize.TokenError
    from a mangled header, ...; a bare ``.npy``; arrays that are not real numbers).
    """
    name = Path(uri).name
    try:
        with fs.open_input_file(local) as f:
            data = f.read()
    except FileNotFoundError as exc:
        return None, None, f"cannot read {name}: {exc}", ""
    except Exception as exc:
        return None, None, "", f"cannot read {uri}: {type(exc).__name__}: {exc}"
    try:
        loaded = np.load(_stdio.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return None, None, "", f"cannot read {uri}: it is not an .npz archive (np.load gives a single array)"
        with loaded as npz:
            absent = [k for k in (img_key, txt_key) if k not in npz.files]
            if absent:
                return None, None, f"{name} has no array {absent[0]} (has {', '.join(npz.files)})", ""
            img, txt = npz[img_key], npz[txt_key]
    except Exception as exc:  # a corrupt archive raises whatever its decoder meets first
        return None, None, "", f"cannot read {uri}: {type(exc).__name__}: {exc}"
    odd = [f"{k} is {m.dtype}" for k, m in ((img_key, img), (txt_key, txt)) if m.dtype.kind not in "fiu"]
    if odd:
        return None, None, "", f"cannot read {uri}: its embeddings are not numbers ({', '.join(odd)})"
    if img.ndim != 2 or txt.ndim != 2:
        return None, None, f"{img_key}/{txt_key} must be 2-D, got shapes {img.shape} and {txt.shape}", ""
    return img, txt, "", ""


def _pool_metadata(table: pa.Table) -> tuple[list[pa.Array], np.ndarray, str]:
    """The metadata columns of ``table`` in the pool schema's types (nulls where it lacks one).

    Returns:
        ``(columns, lost, broken)``: ``lost`` holds per row the message for a value its type cannot hold
        (``original_width`` of 2**40, a width of 7.5; that value becomes null, never the wrapped one), None where
        all are kept; ``broken`` names a column that does not convert at all (strings that are not numbers, a
        list), "" when all do; that column is then null. A binary ``text`` is decoded as UTF-8 with invalid
        bytes replaced (U+FFFD): the caption is metadata, and a stray byte is no reason not to score the pair.
    """
    n = table.num_rows
    lost = np.full(n, None, dtype=object)
    broken: list[str] = []
    out = []
    for f in METADATA:
        if f.name not in table.column_names:
            out.append(pa.nulls(n, f.type))
            continue
        column = table.column(f.name).combine_chunks()
        binary = pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
        try:
            if pa.types.is_string(f.type) and binary:
                out.append(_utf8(column))
                continue
            cast = column.cast(f.type, safe=False)
        except Exception as exc:  # ArrowInvalid ("n/a" as a number), ArrowNotImplementedError (a list), ...
            broken.append(f"column {f.name} ({column.type}) does not convert to {f.type}: {exc}")
            out.append(pa.nulls(n, f.type))
            continue
        if pa.types.is_integer(f.type) and _is_number(column.type):
            # The unsafe cast wraps (2**40 -> 0) and truncates (7.5 -> 7): keep only the values it gives back.
            kept = pc.equal(cast.cast(column.type, safe=False), column).fill_null(True)
            changed = ~np.asarray(kept.to_numpy(zero_copy_only=False), dtype=bool)
            for i in np.flatnonzero(changed):
                note = f"{f.name} is {column[int(i)].as_py()!r}, not a whole number that fits {f.type}"
                lost[i] = note if lost[i] is None else f"{lost[i]}; {note}"
            if changed.any():
                cast = pc.if_else(pa.array(changed), pa.scalar(None, f.type), cast)
        out.append(cast)
    return out, lost, "; ".join(broken)


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _utf8(column: pa.Array) -> pa.Array:
    """A binary column as strings, invalid UTF-8 replaced by U+FFFD (a cast would keep the bytes as they are, and
    the column would then fail Arrow's validation in any reader)."""
    try:
        return column.cast(pa.string(), safe=True)
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()], pa.string())


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
            *(pa.nulls(n, f.type) for f in METADATA),
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
    """One WebDataset tar shard as rows of :data:`~clipsift.udfs.schemas.PAIRS_ARROW`, one per sample (the run of
    members sharing a key); see :func:`clipsift.jobs.io.sources.read_webdataset` for the columns.

    A shard that cannot be read to its end gives the samples read so far plus one ``unreadable_shard`` row (null
    uid) whose error counts them and names the sample it could not finish; a read error before ``needed`` samples
    raises :class:`ShardReadError` instead (transient: the task is retried).
    """
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

    key: str | None = None  # the sample being read, until its row is appended
    members: dict[str, bytes | None] = {}
    before: set[str] | None = None  # the members of the sample appended last
    data_end = 0  # where the data of the last member of ``key`` ends
    try:
        fs, local = arrow_path(path)
        with fs.open_input_file(local) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
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
                        before = set(members)
                        if len(rows) >= rows_per_batch:
                            yield flush()
                    key, members = member_key, {}
                wanted = ext == "json" or (not keys_only and (ext == "txt" or ext in exts))
                if wanted and ext not in members:
                    f = tar.extractfile(info)
                    members[ext] = f.read() if f is not None else None
                else:
                    members.setdefault(ext, None)
                data_end = info.offset_data + info.size
            # tarfile stops quietly at a header cut short: a whole archive ends with a zero block.
            stream = tar.fileobj
            stream.seek(tar.offset)
            end = stream.read(512)
            if len(end) < 512 or end.count(0) != 512:
                # Without it the shard may have been cut anywhere, between two members of its last sample too. That
                # sample is kept when its members are whole and include those of the sample before it (img2dataset
                # writes the same members for each sample); otherwise the error below names it.
                if key is not None and before is not None and set(members) >= before and _whole(stream, data_end):
                    rows.append(sample_row(key, members))
                    ordinal += 1
                    key = None
                raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}: the shard may be truncated")
            if key is not None:
                rows.append(sample_row(key, members))
                key = None
    except (OSError, tarfile.TarError, EOFError) as exc:
        if needed is not None and ordinal < needed:
            raise ShardReadError(
                f"reading tar shard {path} failed after {ordinal} of the {needed} samples an earlier pass read "
                f"({type(exc).__name__}: {exc}); failing the task so that Spark retries it"
            ) from exc
        if rows:
            yield flush()
        dropped = "" if key is None else f"; sample '{key}' ({', '.join(sorted(members))}) is incomplete, not read"
        broken = {
            "uid": None, "caption": None, "image": None, "image_path": None, "source": path,
            "source_row": None, "load_status": STATUS.UNREADABLE_SHARD,
            "load_error": f"cannot read tar shard {path} after {ordinal} samples: {type(exc).__name__}: {exc}{dropped}",
        }  # fmt: skip
        rows.append(broken)
    if rows:
        yield flush()


def _whole(stream: Any, end: int) -> bool:
    """Whether ``stream`` (seekable) holds its bytes up to ``end``."""
    if end <= 0:
        return True
    stream.seek(end - 1)
    return len(stream.read(1)) == 1
