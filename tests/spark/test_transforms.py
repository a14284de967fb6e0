"""Spark-tier tests for clipsift.jobs.transforms on frames of a handful of rows."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession

from clipsift.jobs.config import NegClipConfig
from clipsift.jobs.score import LINEAGE_DDL
from clipsift.jobs.transforms import (
    normsim_column,
    with_clip_score,
    with_lineage,
    with_negclip,
    with_normsim,
    with_status,
)
from clipsift.udfs.kernels import batch_plan, negclip_loss, normsim, second_moment
from clipsift.udfs.schemas import METADATA_COLUMNS, POOL_DDL, STATUS
from clipsift.udfs.score import TargetHandle

DIM = 4
NAN, INF = float("nan"), float("inf")
GOOD = [1.0, 0.0, 0.0, 0.0]

# (key, uid, source, source_row, image_emb, text_emb, load_status, load_error) -> expected status
CASES: list[tuple[str, tuple[Any, ...], str]] = [
    ("ok", ("a", "s", 0, [3.0, 0.0, 4.0, 0.0], [0.0, 2.0, 0.0, 0.0], None, None), STATUS.OK),
    ("load", ("b", "t", 0, None, None, STATUS.MISSING_EMBEDDING, "npz short"), STATUS.MISSING_EMBEDDING),
    ("unreadable", (None, "u", None, None, None, STATUS.UNREADABLE_SHARD, "cannot read"), STATUS.UNREADABLE_SHARD),
    ("null_uid", (None, "s", 1, GOOD, GOOD, None, None), STATUS.NULL_UID),
    ("dup", ("a", "s", 5, GOOD, GOOD, None, None), STATUS.DUPLICATE_UID),
    ("img_null", ("c", "s", 2, None, GOOD, None, None), STATUS.NULL_EMBEDDING),
    ("txt_null", ("d", "s", 3, GOOD, None, None, None), STATUS.NULL_EMBEDDING),
    ("img_dim", ("e", "s", 4, [1.0, 2.0, 3.0], GOOD, None, None), STATUS.BAD_DIMENSION),
    ("txt_dim", ("f", "s", 6, GOOD, [1.0, 2.0, 3.0, 4.0, 5.0], None, None), STATUS.BAD_DIMENSION),
    ("img_nan", ("g", "s", 7, [1.0, NAN, 0.0, 0.0], GOOD, None, None), STATUS.NON_FINITE),
    ("txt_inf", ("h", "s", 8, GOOD, [0.0, -INF, 1.0, 0.0], None, None), STATUS.NON_FINITE),
    ("img_null_elem", ("i", "s", 9, [1.0, None, 0.0, 0.0], GOOD, None, None), STATUS.NON_FINITE),
    ("img_zero", ("j", "s", 10, [0.0, 0.0, 0.0, 0.0], GOOD, None, None), STATUS.ZERO_NORM),
    ("txt_zero", ("k", "s", 11, GOOD, [0.0, 0.0, 0.0, 0.0], None, None), STATUS.ZERO_NORM),
    # The image's problem wins over the caption's; the load status wins over everything.
    ("both_bad", ("l", "s", 12, None, [NAN, 0.0, 0.0, 0.0], None, None), STATUS.NULL_EMBEDDING),
    ("load_first", ("m", "s", 13, [NAN, 0.0, 0.0, 0.0], None, STATUS.MISSING_EMBEDDING, "x"), STATUS.MISSING_EMBEDDING),
    # Of a repeated uid, the first ok row by (source, source_row) stays ok, later ok rows are duplicates;
    # rows with their own problem keep it.
    ("dup_first_bad", ("n", "s", 14, [0.0, 0.0, 0.0, 0.0], GOOD, None, None), STATUS.ZERO_NORM),
    ("dup_first_ok", ("n", "s", 15, GOOD, GOOD, None, None), STATUS.OK),
    ("dup_later", ("n", "s", 20, GOOD, GOOD, None, None), STATUS.DUPLICATE_UID),
    ("bad_pair_1", ("q", "s", 18, None, GOOD, None, None), STATUS.NULL_EMBEDDING),
    ("bad_pair_2", ("q", "s", 19, [1.0, 2.0, 3.0], GOOD, None, None), STATUS.BAD_DIMENSION),
    ("tri_3", ("p", "t", 1, GOOD, GOOD, None, None), STATUS.DUPLICATE_UID),
    ("tri_1", ("p", "s", 16, [0.0, 0.0, 5.0, 0.0], GOOD, None, None), STATUS.OK),
    ("tri_2", ("p", "s", 17, GOOD, GOOD, None, None), STATUS.DUPLICATE_UID),
]


def _frame(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    """Pool rows from (uid, source, source_row, image, text, load_status, load_error); no metadata."""
    return spark.createDataFrame([(*row, *([None] * len(METADATA_COLUMNS))) for row in rows], POOL_DDL)


@pytest.fixture(scope="module")
def checked(spark: SparkSession) -> dict[str, dict[str, Any]]:
    df = _frame(spark, [row for _, row, _ in CASES]).transform(with_status, dim=DIM)
    assert "load_status" not in df.columns and "load_error" not in df.columns
    out = [r.asDict() for r in df.collect()]
    assert len(out) == len(CASES)
    by_key = {}
    for key, row, _ in CASES:
        (match,) = [r for r in out if (r["uid"], r["source"], r["source_row"]) == row[:3]]
        by_key[key] = match
    return by_key


@pytest.mark.parametrize(("key", "expected"), [(k, s) for k, _, s in CASES])
def test_with_status_each_case(checked: dict[str, dict[str, Any]], key: str, expected: str) -> None:
    row = checked[key]
    assert row["status"] == expected
    if expected == STATUS.OK:
        assert row["error"] is None
        assert row["image_emb"] is not None and row["text_emb"] is not None
        assert math.isclose(np.linalg.norm(row["image_emb"]), 1.0, abs_tol=1e-6)
        assert math.isclose(np.linalg.norm(row["text_emb"]), 1.0, abs_tol=1e-6)
    else:
        assert row["error"], key
    if expected not in (STATUS.OK, STATUS.DUPLICATE_UID):
        # Duplicates were scorable rows; the job drops their embeddings itself.
        assert row["image_emb"] is None and row["text_emb"] is None
        assert row["image_norm"] is None and row["text_norm"] is None


def test_with_status_messages(checked: dict[str, dict[str, Any]]) -> None:
    assert checked["load"]["error"] == "npz short"
    assert checked["unreadable"]["error"] == "cannot read"
    assert "image" in checked["img_null"]["error"] and "text" in checked["txt_null"]["error"]
    assert "3 values, expected 4" in checked["img_dim"]["error"]
    assert "5 values, expected 4" in checked["txt_dim"]["error"]
    assert "occurrence 2" in checked["dup"]["error"]
    assert "occurrence 2" in checked["tri_2"]["error"] and "occurrence 3" in checked["tri_3"]["error"]
    assert "occurrence 2" in checked["dup_later"]["error"]
    assert "image" in checked["both_bad"]["error"]


def test_with_status_normalises_and_records_norms(checked: dict[str, dict[str, Any]]) -> None:
    ok = checked["ok"]
    assert ok["image_norm"] == pytest.approx(5.0) and ok["text_norm"] == pytest.approx(2.0)
    np.testing.assert_allclose(ok["image_emb"], [0.6, 0.0, 0.8, 0.0], atol=1e-7)
    np.testing.assert_allclose(ok["text_emb"], [0.0, 1.0, 0.0, 0.0], atol=1e-7)
    assert checked["tri_1"]["image_norm"] == pytest.approx(5.0)
    np.testing.assert_allclose(checked["tri_1"]["image_emb"], [0.0, 0.0, 1.0, 0.0])


def test_with_status_random_rows_have_unit_norm(spark: SparkSession) -> None:
    rng = np.random.default_rng(7)
    img = rng.normal(size=(20, DIM)) * rng.uniform(0.01, 50, size=(20, 1))
    txt = rng.normal(size=(20, DIM)) * rng.uniform(0.01, 50, size=(20, 1))
    rows = [(f"u{i}", "s", i, img[i].tolist(), txt[i].tolist(), None, None) for i in range(20)]
    out = {r["uid"]: r for r in _frame(spark, rows).transform(with_status, dim=DIM).collect()}
    for i in range(20):
        r = out[f"u{i}"]
        assert r["status"] == STATUS.OK
        # Norms are computed from the float32 values Spark holds.
        assert r["image_norm"] == pytest.approx(np.linalg.norm(img[i].astype(np.float32)), rel=1e-6)
        np.testing.assert_allclose(r["image_emb"], img[i] / np.linalg.norm(img[i]), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(np.array(r["text_emb"], np.float64)), 1.0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Scores on a few normalised rows


@pytest.fixture(scope="module")
def small_ok(spark: SparkSession) -> tuple[DataFrame, list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 23
    uids = [f"{rng.integers(1 << 60):016x}" for _ in range(n)]
    img = rng.normal(size=(n, DIM)).astype(np.float32)
    txt = rng.normal(size=(n, DIM)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    rows = [(u, f"shard{i % 2}", i, img[i].tolist(), txt[i].tolist()) for i, u in enumerate(uids)]
    df = spark.createDataFrame(
        rows, "uid string, source string, source_row long, image_emb array<float>, text_emb array<float>"
    )
    return df, uids, img, txt


def test_with_clip_score(small_ok: tuple[DataFrame, list[str], np.ndarray, np.ndarray]) -> None:
    df, uids, img, txt = small_ok
    got = {r["uid"]: r["clip_score"] for r in df.transform(with_clip_score, dim=DIM).collect()}
    expected = (img.astype(np.float64) * txt).sum(axis=1)
    np.testing.assert_allclose([got[u] for u in uids], expected, atol=1e-7)


def test_with_normsim(small_ok: tuple[DataFrame, list[str], np.ndarray, np.ndarray]) -> None:
    df, uids, img, _ = small_ok
    target = np.random.default_rng(5).normal(size=(6, DIM)).astype(np.float32)
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    handle = TargetHandle("tg", "sha", 6, second_moment(target), matrix=target)
    out = df.transform(with_normsim, targets=[handle], norms=("2", "inf"), dim=DIM, signed=False, block_size=4)
    assert normsim_column("tg", "2") in out.columns and normsim_column("tg", "inf") in out.columns
    assert "_normsim_tg" not in out.columns
    rows = {r["uid"]: r for r in out.collect()}
    for p, col in ((2, "normsim_2_tg"), (math.inf, "normsim_inf_tg")):
        expected = normsim(img, target, p)
        np.testing.assert_allclose([rows[u][col] for u in uids], expected, atol=1e-6)
    # p = inf is the maximum |cosine|; the brute force in float64:
    brute = np.abs(img.astype(np.float64) @ target.T.astype(np.float64)).max(axis=1)
    np.testing.assert_allclose([rows[u]["normsim_inf_tg"] for u in uids], brute, atol=1e-6)


@pytest.mark.parametrize(("grouping", "aligned"), [("shard", False), ("shard", True), ("pool", False)])
def test_with_negclip_per_group(
    small_ok: tuple[DataFrame, list[str], np.ndarray, np.ndarray], grouping: str, aligned: bool
) -> None:
    df, uids, img, txt = small_ok
    if aligned:  # whole shards per partition, as the DataComp reader gives them
        df = df.repartition(3, "source")
    cfg = NegClipConfig(rounds=2, batch_size=4, tau=0.05, seed=11, grouping=grouping)  # type: ignore[arg-type]
    out = df.transform(with_negclip, cfg=cfg, dim=DIM, n_groups=1, aligned=aligned)
    assert out.columns == ["uid", "source", "source_row", "negclip_loss", "negclip_r_i2t", "negclip_r_t2i"]
    got = {r["uid"]: r for r in out.collect()}
    assert len(got) == len(uids) and set(got) == set(uids)
    assert all((got[u]["source"], got[u]["source_row"]) == (f"shard{i % 2}", i) for i, u in enumerate(uids))
    kept = df.transform(with_negclip, cfg=cfg, dim=DIM, n_groups=1, aligned=aligned, keep_embeddings=True)
    assert {"image_emb", "text_emb"} <= set(kept.columns)
    groups = (
        [[i for i in range(len(uids)) if i % 2 == g] for g in (0, 1)]
        if grouping == "shard"
        else [list(range(len(uids)))]
    )
    for members in groups:
        order = sorted(members, key=lambda i: uids[i])
        plan = batch_plan([uids[i] for i in order], 2, 4, 11)
        parts = negclip_loss(img[order], txt[order], plan, tau=0.05, return_parts=True)
        assert isinstance(parts, dict)
        for j, i in enumerate(order):
            r = got[uids[i]]
            assert r["negclip_loss"] == pytest.approx(parts["negclip_loss"][j], abs=1e-9)
            assert r["negclip_r_i2t"] == pytest.approx(parts["r_i2t"][j], abs=1e-9)
            assert r["negclip_r_t2i"] == pytest.approx(parts["r_t2i"][j], abs=1e-9)


def test_with_lineage(spark: SparkSession) -> None:
    lineage = {
        "teacher": "b32", "normalized": True, "tau": 0.01, "batch_size": 8, "rounds": 2, "seed": 3,
        "grouping": "shard", "targets": [{"name": "t", "sha256": "abc", "rows": 5}], "code_version": "0.1.0",
        "baselines": '{"config": {"basic": true}}', "clipselect": '{"adapters": "identity", "k": 50}',
    }  # fmt: skip
    df = spark.createDataFrame([("a",)], "uid string").transform(
        with_lineage, run_id="run-x", lineage=lineage, ddl=LINEAGE_DDL
    )
    (row,) = df.collect()
    assert row["run_id"] == "run-x"
    got = json.loads(json.dumps(row["lineage"].asDict(recursive=True)))
    assert got == lineage
