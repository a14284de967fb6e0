"""Zero-copy conversion between Arrow list arrays and numpy matrices."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa


def to_matrix(arr: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """``(n, dim)`` float32 view of a list<float> array whose rows all have ``dim`` values and no nulls.

    Raises:
        ValueError: on nulls or ragged rows (the job filters those rows out before scoring).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ValueError("embedding column holds nulls; only rows with status 'ok' may be scored")
    if len(arr) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    offsets = arr.offsets.to_numpy()
    if not np.all(np.diff(offsets) == dim):
        raise ValueError(f"embedding rows must all have {dim} values")
    flat = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    values = flat.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(len(arr), dim)


def from_matrix(m: np.ndarray) -> pa.ListArray:
    """list<float> array with one row per row of the ``(n, d)`` matrix ``m``."""
    mat = np.ascontiguousarray(m, dtype=np.float32)
    offsets = np.arange(mat.shape[0] + 1, dtype=np.int32) * mat.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(mat.reshape(-1)))


def half_to_lists(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``list<float>`` rows from ``binary`` rows of little-endian float16 values (``embed.dtype: float16``).

    Nulls stay null; a row whose byte length is odd (not float16 data) becomes an empty list, which the
    ingest checks report as ``bad_dimension``.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return pa.array([], pa.list_(pa.float32()))
    arr = arr.cast(pa.binary())
    _validity, offset_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offset_buf, dtype=np.int32)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    good = (lengths % 2 == 0) & ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    keep = np.repeat(good, lengths)
    raw = data[offsets[0] : offsets[-1]][keep]
    values = raw.view("<f2").astype(np.float32)
    out_offsets = np.concatenate([[0], np.cumsum(np.where(good, lengths // 2, 0))]).astype(np.int32)
    mask = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return pa.ListArray.from_arrays(pa.array(out_offsets), pa.array(values), mask=pa.array(mask))


def half_columns_fn(columns: tuple[str, ...]) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function turning the named float16 ``binary`` columns into ``list<float>``."""

    def convert(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            names = batch.schema.names
            arrays = [half_to_lists(c) if name in columns else c for name, c in zip(names, batch.columns, strict=True)]
            yield pa.RecordBatch.from_arrays(arrays, names=names)

    return convert
