"""Spark-tier tests for clipsift.jobs.io: DataComp shard reader, table reader, targets, Delta writes, subset files."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import InputConfig, TableRef
from clipsift.udfs.readers import arrow_path
from clipsift.udfs.schemas import METADATA_COLUMNS, POOL_DDL, STATUS

DIM = 4


def _uids(n: int, tag: str) -> list[str]:
    return [hashlib.md5(f"{tag}-{i}".encode()).hexdigest() for i in range(n)]


def _shard(folder: Path, stem: str, uids: list[str], arrays: dict[str, np.ndarray] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"uid": pa.array(uids, pa.string()), "text": [f"t{i}" for i in range(len(uids))]}),
        folder / f"{stem}.parquet",
    )
    if arrays is not None:
        np.savez(folder / f"{stem}.npz", **arrays)


def _emb(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, DIM)).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32)


def _rows(spark: SparkSession, path: Path, rows_per_batch: int = 4096) -> list[dict[str, Any]]:
    df = io.read_datacomp(spark, str(path), "b32", rows_per_batch=rows_per_batch)
    return [r.asDict() for r in df.collect()]


def test_read_datacomp_tiny_shard(spark: SparkSession, tmp_path: Path) -> None:
    uids = _uids(5, "a")
    img, txt = _emb(5, 0)
    _shard(tmp_path, "00000", uids, {"b32_img": img, "b32_txt": txt, "l14_img": np.zeros((5, 8), np.float32)})
    df = io.read_datacomp(spark, str(tmp_path), "b32")
    assert df.schema.simpleString() == spark.createDataFrame([], POOL_DDL).schema.simpleString()
    rows = sorted((r.asDict() for r in df.collect()), key=lambda r: r["source_row"])
    assert [r["uid"] for r in rows] == uids
    assert [r["source_row"] for r in rows] == list(range(5))
    assert {r["source"] for r in rows} == {"00000"}
    assert all(r["load_status"] is None and r["load_error"] is None for r in rows)
    np.testing.assert_array_equal(np.array([r["image_emb"] for r in rows], np.float32), img)
    np.testing.assert_array_equal(np.array([r["text_emb"] for r in rows], np.float32), txt)


def test_read_datacomp_several_shards_and_batches(spark: SparkSession, tmp_path: Path) -> None:
    expected = {}
    for s, n in enumerate((7, 3, 1)):
        uids = _uids(n, f"s{s}")
        img, txt = _emb(n, s)
        _shard(tmp_path, f"{s:05d}", uids, {"b32_img": img, "b32_txt": txt})
        for i, u in enumerate(uids):
            expected[u] = (f"{s:05d}", i, img[i])
    rows = _rows(spark, tmp_path, rows_per_batch=2)
    assert len(rows) == 11
    got = {r["uid"]: (r["source"], r["source_row"], np.array(r["image_emb"], np.float32)) for r in rows}
    assert got.keys() == expected.keys()
    for u, (src, row, vec) in expected.items():
        assert got[u][:2] == (src, row)
        np.testing.assert_array_equal(got[u][2], vec)


def test_read_datacomp_problems_become_statuses(spark: SparkSession, tmp_path: Path) -> None:
    short_img, short_txt = _emb(3, 1)
    _shard(tmp_path, "00000", _uids(5, "short"), {"b32_img": short_img, "b32_txt": short_txt})
    _shard(tmp_path, "00001", _uids(2, "none"), None)
    _shard(tmp_path, "00002", _uids(2, "l14"), {"l14_img": np.ones((2, DIM)), "l14_txt": np.ones((2, DIM))})
    _shard(tmp_path, "00003", _uids(2, "flat"), {"b32_img": np.ones(2), "b32_txt": np.ones(2)})
    (tmp_path / "00004.parquet").write_bytes(b"this is not parquet at all")
    (tmp_path / "00004.npz").write_bytes(b"nor is this an npz")
    (tmp_path / "00005.npz").write_bytes(b"an npz without parquet is ignored")
    (tmp_path / "00006.parquet").write_bytes(b"PAR1")  # truncated parquet
    rows = _rows(spark, tmp_path)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == {"00000", "00001", "00002", "00003", "00004", "00006"}

    short = sorted(by_source["00000"], key=lambda r: r["source_row"])
    assert [r["load_status"] for r in short] == [None, None, None, STATUS.MISSING_EMBEDDING, STATUS.MISSING_EMBEDDING]
    assert all(r["image_emb"] is None and r["text_emb"] is None for r in short[3:])
    assert all("3" in r["load_error"] and "5" in r["load_error"] for r in short[3:])
    np.testing.assert_array_equal(np.array([r["image_emb"] for r in short[:3]], np.float32), short_img)

    for stem, needle in (("00001", "00001.npz"), ("00002", "b32_img"), ("00003", "2-D")):
        got = by_source[stem]
        assert len(got) == 2
        assert all(r["load_status"] == STATUS.MISSING_EMBEDDING for r in got), stem
        assert all(r["uid"] is not None and needle in r["load_error"] for r in got), (stem, got[0]["load_error"])

    for stem in ("00004", "00006"):
        (bad,) = by_source[stem]
        assert bad["uid"] is None and bad["source_row"] is None
        assert bad["load_status"] == STATUS.UNREADABLE_SHARD
        assert f"{stem}.parquet" in bad["load_error"]


@pytest.mark.parametrize(
    ("n", "have", "rows_per_batch"),
    [
        (5, 3, 3),
        (5, 3, 2),
        (6, 0, 2),
    ],
)
def test_read_datacomp_short_npz_across_batches(
    spark: SparkSession, tmp_path: Path, n: int, have: int, rows_per_batch: int
) -> None:
    """Rows missing from the npz still come out exactly once when they span several reader batches."""
    img, txt = _emb(have, 2)
    _shard(tmp_path, "00000", _uids(n, "x"), {"b32_img": img, "b32_txt": txt} if have else None)
    rows = _rows(spark, tmp_path, rows_per_batch=rows_per_batch)
    assert sorted(r["source_row"] for r in rows) == list(range(n))
    statuses = [r["load_status"] for r in sorted(rows, key=lambda r: r["source_row"])]
    assert statuses == [None] * have + [STATUS.MISSING_EMBEDDING] * (n - have)


def test_list_datacomp_shards_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.list_datacomp_shards(str(tmp_path / "nope"))
    (tmp_path / "a.npz").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"no \.parquet"):
        io.list_datacomp_shards(str(tmp_path))
    for stem in ("00002", "00000", "00001"):
        (tmp_path / f"{stem}.parquet").write_bytes(b"x")
    assert [Path(p).name for p in io.list_datacomp_shards(str(tmp_path))] == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]


def test_read_table_maps_columns(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "emb")
    spark.createDataFrame(
        [(1, "a", [1.0, 2.0], [3.0, 4.0]), (2, "b", None, [5.0, 6.0])],
        "id int, part string, img array<double>, txt array<double>",
    ).write.format("parquet").save(path)
    cfg = InputConfig(
        kind="table", path=path, format="parquet", uid_col="id", image_col="img", text_col="txt", shard_col="part"
    )
    df = io.read_table(spark, cfg)
    assert df.columns == [
        "uid", "source", "source_row", "image_emb", "text_emb", "load_status", "load_error", *METADATA_COLUMNS
    ]  # fmt: skip
    rows = {r["uid"]: r for r in df.collect()}
    assert rows["1"]["source"] == "a" and rows["1"]["image_emb"] == [1.0, 2.0]
    assert rows["2"]["image_emb"] is None and rows["2"]["text_emb"] == [5.0, 6.0]
    assert dict(df.dtypes)["image_emb"] == "array<float>"

    no_shard = io.read_table(
        spark, InputConfig(kind="table", path=path, format="parquet", uid_col="id", image_col="img", text_col="txt")
    )
    assert {r["source"] for r in no_shard.collect()} == {path}

    with pytest.raises(ValueError, match="'image_emb'"):
        io.read_table(spark, InputConfig(kind="table", path=path, format="parquet", uid_col="id"))


# --------------------------------------------------------------------------------------------------
# Targets


def test_load_target_npy_normalises_and_drops_bad_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mat = rng.normal(size=(6, DIM)).astype(np.float32) * np.array([[0.5], [2], [3], [1], [7], [1]], np.float32)
    mat[3] = 0.0
    mat[5, 1] = np.nan
    np.save(tmp_path / "t.npy", mat)
    t = io.load_target("tgt", str(tmp_path / "t.npy"))
    assert t.name == "tgt" and t.rows_dropped == 2
    assert t.matrix.dtype == np.float32 and t.matrix.shape == (4, DIM)
    np.testing.assert_allclose(np.linalg.norm(t.matrix, axis=1), 1.0, atol=1e-6)
    keep = mat[[0, 1, 2, 4]].astype(np.float64)
    np.testing.assert_allclose(t.matrix, keep / np.linalg.norm(keep, axis=1, keepdims=True), atol=1e-6)
    assert t.sha256 == hashlib.sha256((tmp_path / "t.npy").read_bytes()).hexdigest()


def test_load_target_npz_keys(tmp_path: Path) -> None:
    a, b = np.eye(3, DIM, dtype=np.float32), 2 * np.eye(2, DIM, dtype=np.float32)
    np.savez(tmp_path / "two.npz", a=a, b=b)
    np.savez(tmp_path / "one.npz", only=b)
    np.testing.assert_array_equal(io.load_target("t", str(tmp_path / "two.npz"), "b").matrix, np.eye(2, DIM))
    np.testing.assert_array_equal(io.load_target("t", str(tmp_path / "one.npz")).matrix, np.eye(2, DIM))
    with pytest.raises(ValueError, match=r"normsim.targets\[\].key"):
        io.load_target("t", str(tmp_path / "two.npz"))
    with pytest.raises(ValueError, match="no array 'c'"):
        io.load_target("t", str(tmp_path / "two.npz"), "c")


def test_load_target_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="normsim target 'gone'"):
        io.load_target("gone", str(tmp_path / "gone.npy"))
    np.save(tmp_path / "flat.npy", np.ones(4, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        io.load_target("flat", str(tmp_path / "flat.npy"))
    np.save(tmp_path / "zero.npy", np.zeros((3, DIM), np.float32))
    with pytest.raises(ValueError, match="no usable"):
        io.load_target("zero", str(tmp_path / "zero.npy"))


# --------------------------------------------------------------------------------------------------
# Writes and names


def test_replace_partition_is_rerunnable(spark: SparkSession, tmp_path: Path) -> None:
    ref = TableRef(path=str(tmp_path / "scores"))
    assert not io.table_exists(spark, ref)

    def frame(run: str, values: list[float]) -> Any:
        return spark.createDataFrame(
            [(f"u{i}", v, run) for i, v in enumerate(values)], "uid string, s double, run_id string"
        )

    io.replace_partition(frame("r1", [1.0, 2.0, 3.0]), ref, "run_id", "r1")
    io.replace_partition(frame("r2", [9.0]), ref, "run_id", "r2")
    io.replace_partition(frame("r1", [4.0, 5.0]), ref, "run_id", "r1")  # rerun of r1: replaces, never appends
    assert io.table_exists(spark, ref)
    got = sorted((r["run_id"], r["uid"], r["s"]) for r in io.read_table_ref(spark, ref).collect())
    assert got == [("r1", "u0", 4.0), ("r1", "u1", 5.0), ("r2", "u0", 9.0)]

    wider = frame("r3", [7.0]).withColumn("extra", F.lit(1))
    io.replace_partition(wider, ref, "run_id", "r3")  # new columns merge into the schema
    df = io.read_table_ref(spark, ref)
    assert "extra" in df.columns and df.count() == 4


def test_overwrite_table(spark: SparkSession, tmp_path: Path) -> None:
    ref = TableRef(path=str(tmp_path / "sel"))
    io.overwrite_table(spark.createDataFrame([("a",), ("b",)], "uid string"), ref)
    io.overwrite_table(spark.createDataFrame([("c", 1)], "uid string, n int"), ref)
    assert [tuple(r) for r in io.read_table_ref(spark, ref).collect()] == [("c", 1)]


def test_names() -> None:
    assert io.quote_ident("a`b") == "`a``b`"
    assert io.sql_table(TableRef(table="cat.db.t")) == "`cat`.`db`.`t`"
    assert io.sql_table(TableRef(path="/x/y")) == "delta.`/x/y`"
    assert io.sql_string("it's \\ ok") == "'it\\'s \\\\ ok'"
    assert io.sibling(TableRef(path="/x/scores/"), "runs") == TableRef(path="/x/scores_runs")
    assert io.sibling(TableRef(table="db.scores"), "runs") == TableRef(table="db.scores_runs")
    _fs, local = arrow_path("dbfs:/mnt/x")
    assert local == "/dbfs/mnt/x"
    assert arrow_path("file:///tmp/a")[1] == "/tmp/a"


def test_write_subset_npy(tmp_path: Path) -> None:
    pairs = np.array([(3, 1), (1, 9), (1, 2), (2**64 - 1, 0)], dtype=np.dtype("u8,u8"))
    out = tmp_path / "sub" / "subset.npy"
    io.write_subset_npy(pairs, str(out))
    arr = np.load(out)
    assert arr.dtype == np.dtype("u8,u8")
    assert arr.tolist() == [(1, 2), (1, 9), (3, 1), (2**64 - 1, 0)]
    assert [p.name for p in out.parent.iterdir()] == ["subset.npy"]


def test_run_record_time_is_the_instant_whatever_the_driver_time_zone(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timestamps are written from aware UTC datetimes: a driver in another time zone records the same instant."""
    import time
    from datetime import datetime, timezone

    started = datetime(2026, 11, 22, 21, 0, 5, tzinfo=timezone.utc)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        io.record_run(
            spark, TableRef(path=str(tmp_path / "scores")), run_id="r1", started_at=started, seconds=1.0,
            input_label="x", rows_in=3, by_status={"ok": 3}, config={}, lineage={},
        )  # fmt: skip
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    row = (
        spark.read.format("delta")
        .load(str(tmp_path / "scores_runs"))
        .select(F.unix_timestamp("started_at").alias("epoch"))
        .first()
    )
    assert row is not None and row["epoch"] == int(started.timestamp())


def test_task_slots_follow_the_session(spark: SparkSession) -> None:
    from clipsift.jobs.embed import task_slots

    assert task_slots(spark, floor=1) == spark.sparkContext.defaultParallelism
    assert task_slots(spark) == max(8, spark.sparkContext.defaultParallelism)


def test_uid_bounds_cut_the_rows_into_even_ranges(spark: SparkSession) -> None:
    from clipsift.jobs.embed import uid_bounds

    todo = spark.range(10_000).select(F.sha1(F.col("id").cast("string")).alias("uid"))
    bounds = uid_bounds(todo, 8, 10_000)
    assert bounds == sorted(bounds) and 1 <= len(bounds) <= 7
    edges = [None, *bounds, None]
    sizes = []
    for lo, hi in itertools.pairwise(edges):
        cond = F.lit(True)
        if lo is not None:
            cond = cond & (F.col("uid") >= lo)
        if hi is not None:
            cond = cond & (F.col("uid") < hi)
        sizes.append(todo.where(cond).count())
    assert sum(sizes) == 10_000  # every uid in exactly one range
    assert len(bounds) == 7 and max(sizes) < 2 * 10_000 / 8
    assert uid_bounds(todo, 1, 10_000) == [] and uid_bounds(todo, 4, 0) == []


NASTY = ["plain", "it's", "a`b", "back\\slash", "x'; DROP TABLE t; --", "/* c */", "tab\tnew\nline", "ünï", "\\'"]


def test_sql_string_and_quote_ident_round_trip_in_spark(spark: SparkSession) -> None:
    """What sql_string writes Spark reads back as the same string, and a quoted name is one column of that name:
    no value or name from a config can end a literal or an identifier early."""
    from clipsift.jobs.io import quote_ident, sql_string

    for text in NASTY:
        row = spark.sql(f"SELECT {sql_string(text)} AS v").first()
        assert row is not None and row["v"] == text, text
        assert spark.sql(f"SELECT 1 AS {quote_ident(text)}").columns == [text], text
