"""Shape and dtype checks shared by the kernels."""

from __future__ import annotations

import numpy as np


def as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(N, d)`` array (no copy when it already is one)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array, got shape {arr.shape}")
    if arr.dtype == np.float32 and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=np.float32)


def l2_normalize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` scaled to unit L2 norm (float32) and the original norms (float64).

    Rows with norm 0 (or non-finite) come back unchanged; callers flag them by their norm.
    """
    arr = as_matrix(x, "x")
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    ok = np.isfinite(norms) & (norms > 0)
    scale = np.ones_like(norms)
    scale[ok] = 1.0 / norms[ok]
    return (arr * scale[:, None]).astype(np.float32, copy=False), norms
