"""Embedding checks on ingest (clipsift.udfs.ingest), fed plain Arrow arrays: no Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clipsift.udfs.ingest import check_batch, check_column, status_fn
from clipsift.udfs.schemas import METADATA_COLUMNS, POOL_ARROW

LIST = pa.list_(pa.float32())


def _batch(images: list[list[float] | None], texts: list[list[float] | None], uids: list[str | None]) -> pa.RecordBatch:
    n = len(uids)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(uids, pa.string()),
            pa.array(["s"] * n),
            pa.array(range(n), pa.int64()),
            pa.array(images, LIST),
            pa.array(texts, LIST),
            pa.array([None] * n, pa.string()),
            pa.array([None] * n, pa.string()),
            *(pa.nulls(n, field.type) for field in POOL_ARROW if field.name in METADATA_COLUMNS),
        ],
        schema=POOL_ARROW,
    )


def test_each_problem_gets_its_status_and_message() -> None:
    good = [1.0, 0.0]
    batch = _batch(
        [[3.0, 4.0], None, [1.0], [float("nan"), 1.0], [0.0, 0.0], good, good, [float("inf"), 0.0]],
        [good, good, good, good, good, good, None, good],
        ["a", "b", "c", "d", "e", None, "g", "h"],
    )
    out = check_batch(batch, 2).to_pydict()
    assert out["status"] == [
        "ok", "null_embedding", "bad_dimension", "non_finite_embedding", "zero_norm", "null_uid",
        "null_embedding", "non_finite_embedding",
    ]  # fmt: skip
    assert out["error"][0] is None
    assert all(e for e in out["error"][1:])
    assert "text" in out["error"][6] and "image" in out["error"][1]
    assert "has 1 values, expected 2" in out["error"][2]
    assert out["image_emb"][0] == pytest.approx([0.6, 0.8])
    assert out["image_norm"][0] == pytest.approx(5.0)
    assert all(v is None for v in out["image_emb"][1:])
    assert out["uid"] == ["a", "b", "c", "d", "e", None, "g", "h"]


def test_reader_status_wins() -> None:
    batch = _batch([[1.0, 0.0]], [[0.0, 1.0]], ["a"])
    cols = [*batch.columns[:5], pa.array(["missing_embedding"]), pa.array(["npz has 0 rows"]), *batch.columns[7:]]
    out = check_batch(pa.RecordBatch.from_arrays(cols, schema=POOL_ARROW), 2).to_pydict()
    assert out["status"] == ["missing_embedding"] and out["error"] == ["npz has 0 rows"]


def test_normalised_rows_have_unit_norm_and_keep_direction() -> None:
    rng = np.random.default_rng(0)
    mat = rng.standard_normal((50, 16)).astype(np.float32) * 7
    status, _, unit, norm = check_column(pa.array(list(mat), LIST), 16, "image")
    assert all(s is None for s in status)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit * norm[:, None], mat, rtol=1e-5, atol=1e-5)


def test_null_values_inside_an_array_are_not_finite() -> None:
    status, error, _, _ = check_column(pa.array([[1.0, None]], LIST), 2, "text")
    assert status[0] == "non_finite_embedding" and "text" in error[0]


def test_empty_batch() -> None:
    out = check_batch(_batch([], [], []), 4)
    assert out.num_rows == 0


def test_metadata_columns_pass_through() -> None:
    batch = _batch([[1.0, 0.0], None], [[0.0, 1.0], [1.0, 0.0]], ["a", "b"])
    text = pa.array(["a dog", None], pa.string())
    width = pa.array([640, 10], pa.int32())
    cols = [
        text if f.name == "text" else width if f.name == "original_width" else c
        for f, c in zip(POOL_ARROW, batch.columns, strict=True)
    ]
    out = check_batch(pa.RecordBatch.from_arrays(cols, schema=POOL_ARROW), 2).to_pydict()
    assert out["text"] == ["a dog", None] and out["original_width"] == [640, 10]
    assert out["status"] == ["ok", "null_embedding"] and out["original_height"] == [None, None]


def test_empty_uid_is_refused_like_a_null_uid() -> None:
    good = [1.0, 0.0]
    batch = _batch([good] * 4, [good] * 4, ["", "a", " \t", None])
    out = check_batch(batch, 2).to_pydict()
    assert out["status"] == ["null_uid", "ok", "null_uid", "null_uid"]
    assert out["error"] == ["uid is empty", None, "uid is empty", "uid is null"]
    marked = next(status_fn(2, [("image_emb", "image")])(iter([batch]))).to_pydict()
    assert marked["status"] == out["status"]
