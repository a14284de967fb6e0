"""Zero-copy conversion between Arrow list arrays and numpy matrices."""

from __future__ import annotations

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
