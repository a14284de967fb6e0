"""NormSim targets: loaded on the driver (``.npy`` / ``.npz`` / ``.pt``), hashed, and shipped to the executors
(in the UDF closure, or staged once and memory-mapped per worker)."""

from __future__ import annotations

import hashlib
import io as _stdio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from clipsift.jobs.config import ConfigError
from clipsift.udfs.models import first_line, load_weights
from clipsift.udfs.readers import arrow_path
from clipsift.udfs.score import TargetHandle


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
        FileNotFoundError: naming the target.
        ValueError: one line naming the target: the file holds no 2-D array under ``key``, cannot be read, or is
            refused for holding pickled objects (a ``.pt`` pickling more than tensors, an ``.npy`` of objects).
        ImportError: a ``.pt`` target where torch is not installed.
    """
    fs, local = arrow_path(path)
    if fs.get_file_info(local).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"normsim target '{name}': file '{path}' does not exist")
    suffix = Path(local).suffix.lower()
    with fs.open_input_stream(local) as f:
        raw = _stdio.BytesIO(f.read())
    arr: Any
    if suffix in (".npy", ".npz"):
        arr = _load_numpy(name, path, raw, key, archive=suffix == ".npz")
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


def _load_numpy(name: str, path: str, raw: _stdio.BytesIO, key: str | None, archive: bool) -> np.ndarray:
    """The array of a ``.npy``, or array ``key`` of a ``.npz``; pickled (object) arrays are refused, never loaded."""
    what = f"normsim target '{name}': '{path}'"
    try:
        loaded = np.load(raw, allow_pickle=False)
    except Exception as exc:
        raise _numpy_failure(what, exc) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return np.asarray(loaded)
    with loaded as npz:
        if not archive:
            raise ValueError(f"{what} is an .npz archive, not an .npy array; name it .npz")
        picked = _pick_key(name, path, key, list(npz.files))
        try:
            return np.asarray(npz[picked])
        except Exception as exc:
            raise _numpy_failure(what, exc) from None


def _numpy_failure(what: str, exc: Exception) -> ValueError:
    """One line for what ``np.load`` raised: a corrupt archive or header (zipfile, zlib and numpy raise many types),
    or a pickled object array that ``allow_pickle=False`` refuses."""
    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
        return ValueError(f"{what} was refused: it holds pickled Python objects, not numbers; save a float array")
    return ValueError(f"{what} cannot be read by numpy ({type(exc).__name__}: {first_line(exc)})")


def _load_torch(name: str, path: str, raw: _stdio.BytesIO, key: str | None) -> np.ndarray:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"normsim target '{name}': reading '{path}' needs torch; pip install 'clipsift[gpu]' or save it as .npy"
        ) from exc
    fix = "save the target as a tensor or a dict of tensors (torch.save), or as a .npy"
    obj = load_weights(raw, f"normsim target '{name}': '{path}'", fix)
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
