"""Embedding checks and L2-normalisation on ingest, vectorised over Arrow batches (``mapInArrow``).

Each row gets a ``status`` (``ok`` or why it cannot be scored) and an ``error`` message; ``ok``
rows get unit-norm float32 embeddings and their original norms. A bad row never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsift.udfs.arrow import from_matrix
from clipsift.udfs.kernels import l2_normalize
from clipsift.udfs.schemas import CHECKED_ARROW, METADATA_COLUMNS, STATUS

#: Per-row ``(status, error)`` object arrays, None where a row is fine.
Problems = tuple[np.ndarray, np.ndarray]


def check_column(arr: pa.Array, dim: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check one list<float> embedding column.

    Returns:
        ``(status, error, unit, norm)``: object arrays of status (None when fine) and message, the
        ``(n, dim)`` float32 normalised rows (zeros where not fine) and the float64 norms (NaN where not fine).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    status = np.full(n, None, dtype=object)
    error = np.full(n, None, dtype=object)
    unit = np.zeros((n, dim), dtype=np.float32)
    norm = np.full(n, np.nan)
    if n == 0:
        return status, error, unit, norm
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = arr.offsets.to_numpy()
    lengths = np.diff(offsets)
    status[~valid] = STATUS.NULL_EMBEDDING
    error[~valid] = f"{what} embedding is null"
    wrong = valid & (lengths != dim)
    for i in np.flatnonzero(wrong):
        status[i] = STATUS.BAD_DIMENSION
        error[i] = f"{what} embedding has {lengths[i]} values, expected {dim}"
    rows = np.flatnonzero(valid & (lengths == dim))
    if rows.size:
        flat = arr.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # null values -> NaN
        mat = flat[offsets[rows][:, None] + np.arange(dim)]
        finite = np.isfinite(mat).all(axis=1)
        normalized, norms = l2_normalize(np.where(finite[:, None], mat, 0.0))
        zero = finite & (norms == 0)
        bad = rows[~finite]
        status[bad] = STATUS.NON_FINITE
        error[bad] = f"{what} embedding holds NaN, infinite or null values"
        status[rows[zero]] = STATUS.ZERO_NORM
        error[rows[zero]] = f"{what} embedding has zero norm"
        good = finite & ~zero
        unit[rows[good]] = normalized[good]
        norm[rows[good]] = norms[good]
    return status, error, unit, norm


def first_problem(
    batch: pa.RecordBatch, dim: int, embeddings: Sequence[tuple[str, str]], earlier: Problems | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``status`` (``ok`` or the first problem) and ``error`` of each row: ``earlier`` problems (a reader's),
    then a null or empty uid, then each embedding column in ``embeddings`` (``(column, what)`` pairs) by
    :func:`check_column`. Also returns each column's ``(unit rows, norms)``.
    """
    n = batch.num_rows
    uid = batch.column("uid")
    uid_null = np.asarray(uid.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    uid_s = np.full(n, None, dtype=object)
    uid_e = np.full(n, None, dtype=object)
    if pa.types.is_string(uid.type) or pa.types.is_large_string(uid.type):
        # "" (or blanks) is no identity: every such row would be a duplicate of the others, or join anything.
        blank = pc.equal(pc.utf8_trim_whitespace(uid), "").fill_null(False)
        uid_empty = np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
        uid_s[uid_empty] = STATUS.NULL_UID
        uid_e[uid_empty] = "uid is empty"
    uid_s[uid_null] = STATUS.NULL_UID
    uid_e[uid_null] = "uid is null"
    problems = [earlier] if earlier is not None else []
    problems.append((uid_s, uid_e))
    checked = []
    for column, what in embeddings:
        s, e, unit, norm = check_column(batch.column(column), dim, what)
        problems.append((s, e))
        checked.append((unit, norm))
    status = np.full(n, STATUS.OK, dtype=object)
    error = np.full(n, None, dtype=object)
    for s, e in reversed(problems):
        has = s != None  # noqa: E711 - elementwise comparison on an object array
        status[has] = s[has]
        error[has] = e[has]
    return status, error, checked


def check_batch(batch: pa.RecordBatch, dim: int) -> pa.RecordBatch:
    """Status, error, normalised embeddings and norms for one batch of pool rows (first problem wins)."""
    load = (
        np.asarray(batch.column("load_status").to_pylist(), dtype=object),
        np.asarray(batch.column("load_error").to_pylist(), dtype=object),
    )
    embeddings = [("image_emb", "image"), ("text_emb", "text")]
    status, error, [(img, img_n), (txt, txt_n)] = first_problem(batch, dim, embeddings, load)
    ok = status == STATUS.OK
    return pa.RecordBatch.from_arrays(
        [
            batch.column("uid"),
            batch.column("source"),
            batch.column("source_row"),
            _masked_lists(img, ok),
            _masked_lists(txt, ok),
            pa.array(status.tolist(), pa.string()),
            pa.array(error.tolist(), pa.string()),
            pa.array(np.where(ok, img_n, np.nan), pa.float64(), mask=~ok),
            pa.array(np.where(ok, txt_n, np.nan), pa.float64(), mask=~ok),
            *(batch.column(name) for name in METADATA_COLUMNS),
        ],
        names=CHECKED_ARROW.names,
    )


def _masked_lists(mat: np.ndarray, keep: np.ndarray) -> pa.Array:
    """Rows of ``mat`` as list<float>, null where not ``keep``."""
    full = from_matrix(mat)
    if keep.all():
        return full
    return pa.ListArray.from_arrays(full.offsets, full.values, mask=pa.array(~keep))


def status_fn(
    dim: int, embeddings: Sequence[tuple[str, str]]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function adding ``status`` and ``error`` (:func:`first_problem`) to rows that keep their
    columns as they are (the CLIP-powered selection job, whose embeddings stay unnormalised)."""

    def mark(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            status, error, _ = first_problem(batch, dim, embeddings)
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(status.tolist(), pa.string()), pa.array(error.tolist(), pa.string())],
                names=[*batch.schema.names, "status", "error"],
            )

    return mark


def check_embeddings_fn(dim: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function from pool rows (``POOL_DDL``) to checked rows (``CHECKED_DDL``), both in
    :mod:`clipsift.udfs.schemas`."""

    def check_embeddings(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield check_batch(batch, dim)

    return check_embeddings
