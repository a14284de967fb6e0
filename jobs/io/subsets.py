"""DataComp subset files: a ``.npy`` of dtype ``u8,u8``, one uid per row (the first field is the uid's first 16 hex
characters, the second its last 16), as DataComp's baselines write them and as DFN's and HYPE's subsets are
published. Written by ``export_npy``, read by the ``import`` selection rule. No Spark here.

Reading streams the file through pyarrow's filesystems (local, ``s3://``, ``gs://``, ``hdfs://``, FUSE mounts such
as ``/Volumes``), so a subset of any size is read in bounded memory, and the bytes hashed are the bytes read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from clipsift.udfs.readers import arrow_path

SUBSET_DTYPE = np.dtype("u8,u8")
ROW_BYTES = SUBSET_DTYPE.itemsize


class SubsetFileError(ValueError):
    """A file that is not a DataComp subset ``.npy``; the message says what is wrong and what is expected."""


@dataclass(frozen=True)
class SubsetFile:
    """What one full read of a subset file found."""

    path: str
    rows: int
    """uids in the file, duplicates included."""
    sha256: str
    """Hex sha256 of the file's bytes."""
    sorted: bool
    """Whether the uids are in ascending order (DataComp writes them sorted; readers must not rely on it)."""


def write_subset_npy(uid_pairs: np.ndarray, path: str) -> None:
    """Write DataComp's subset file: a sorted structured array of dtype ``u8,u8``."""
    arr = np.sort(uid_pairs.astype(SUBSET_DTYPE))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, out)


def inspect_subset(path: str, chunk_rows: int = 1 << 20) -> SubsetFile:
    """Read a subset file once, end to end: check its format, hash it, count its rows and check their order.

    Raises:
        FileNotFoundError: no file at ``path``.
        SubsetFileError: not a ``.npy``, a dtype other than ``u8,u8``, not one-dimensional, no rows, or shorter
            than its header says.
    """
    rows, ordered = 0, True
    last: tuple[int, int] | None = None
    with _open(path) as (stream, digest):
        for chunk in _chunks(stream, path, chunk_rows):
            hi, lo = chunk["f0"], chunk["f1"]
            if last is not None:
                hi = np.concatenate([[last[0]], hi])
                lo = np.concatenate([[last[1]], lo])
            up = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))
            ordered = ordered and bool(up.all())
            last = (int(hi[-1]), int(lo[-1]))
            rows += len(chunk)
        sha = digest.hexdigest()
    if rows == 0:
        raise SubsetFileError(f"{path} holds no uid (an empty subset selects nothing)")
    return SubsetFile(path, rows, sha, ordered)


def subset_uids(path: str, chunk_rows: int = 1 << 20) -> Iterator[pa.StringArray]:
    """The file's uids as 32 lowercase hex characters (DataComp's uid strings), ``chunk_rows`` at a time, in file
    order, duplicates included."""
    with _open(path) as (stream, _):
        for chunk in _chunks(stream, path, chunk_rows):
            yield uid_strings(chunk)


def uid_strings(pairs: np.ndarray) -> pa.StringArray:
    """``u8,u8`` rows as 32-character lowercase hex strings, without a Python loop: the big-endian bytes of the two
    fields, hex-encoded, cut every 32 characters."""
    n = len(pairs)
    raw = np.empty((n, 16), dtype=np.uint8)
    raw[:, :8] = pairs["f0"].astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = pairs["f1"].astype(">u8").view(np.uint8).reshape(n, 8)
    text = raw.tobytes().hex().encode("ascii")
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int64)
    array = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))
    return array.cast(pa.string())


def uid_pairs(uids: list[str]) -> np.ndarray:
    """The inverse of :func:`uid_strings` for 32-hex-character uids."""
    pairs = [(int(u[:16], 16), int(u[16:], 16)) for u in uids]
    return np.array(pairs, dtype=SUBSET_DTYPE) if pairs else np.zeros(0, dtype=SUBSET_DTYPE)


class _Hashing:
    """A read-only stream that hashes what is read through it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = bytes(self.stream.read(n) if n >= 0 else self.stream.read())
        self.digest.update(data)
        return data


@contextmanager
def _open(path: str) -> Iterator[tuple[BinaryIO, Any]]:
    """The file as a stream that hashes what is read, and its running sha256."""
    fs, local = arrow_path(path)
    if fs.get_file_info(local).type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {path}")
    with fs.open_input_stream(local) as raw:
        stream = _Hashing(raw)
        yield stream, stream.digest  # type: ignore[misc]


def _chunks(stream: BinaryIO, path: str, chunk_rows: int) -> Iterator[np.ndarray]:
    dtype, rows = _header(stream, path)
    left = rows
    while left > 0:
        take = min(chunk_rows, left)
        data = stream.read(take * ROW_BYTES)
        if len(data) != take * ROW_BYTES:
            raise SubsetFileError(f"{path} is truncated: its header says {rows} rows, the file ends before")
        left -= take
        yield np.frombuffer(data, dtype=dtype).astype(SUBSET_DTYPE, copy=False)
    stream.read()  # hash any trailing bytes too


def _header(stream: BinaryIO, path: str) -> tuple[np.dtype, int]:
    expected = "expected a DataComp subset: a .npy of dtype u8,u8 (np.save of a structured array of two uint64)"
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError) as exc:
        raise SubsetFileError(f"{path} is not a .npy file ({exc}); {expected}") from None
    fields = sorted((dtype.fields or {}).values(), key=lambda f: f[1])  # (type, offset) by offset
    if dtype.itemsize != ROW_BYTES or len(fields) != 2 or any(t.kind != "u" or t.itemsize != 8 for t, *_ in fields):
        raise SubsetFileError(f"{path} has dtype {dtype}; {expected}")
    if len(shape) != 1:
        raise SubsetFileError(f"{path} has shape {shape}; {expected}, one-dimensional")
    return np.dtype([("f0", fields[0][0]), ("f1", fields[1][0])]), int(shape[0])
