"""Jobs-tier tests of ``clipsift.jobs.score.run``: scores equal the kernels, reruns are deterministic and
idempotent, and bad input comes out row for row with a status."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, ScoreConfig, TableRef, from_dict
from clipsift.jobs.score import NORMSIM2D_COLUMN, run
from clipsift.udfs.kernels import batch_plan, clip_score, l2_normalize, negclip_loss, normsim, normsim2_dynamic
from clipsift.udfs.schemas import STATUS

SCORE_COLUMNS = ["clip_score", "negclip_loss", "negclip_r_i2t", "negclip_r_t2i"]
ATOL = 1e-6


def _run_frame(spark: SparkSession, output: str, run_id: str) -> pd.DataFrame:
    return spark.read.format("delta").load(output).where(F.col("run_id") == run_id).drop("lineage").toPandas()


def _negclip_reference(uids: list[str], img: np.ndarray, txt: np.ndarray, neg: dict[str, Any]) -> pd.DataFrame:
    """negCLIPLoss parts of one group by the kernels, rows in uid order (as the job orders a group)."""
    order = sorted(range(len(uids)), key=lambda i: uids[i])
    sorted_uids = [uids[i] for i in order]
    plan = batch_plan(sorted_uids, neg["rounds"], neg["batch_size"], neg["seed"])
    parts = negclip_loss(img[order], txt[order], plan, tau=neg["tau"], return_parts=True)
    assert isinstance(parts, dict)
    return pd.DataFrame(
        {
            "negclip_loss": parts["negclip_loss"],
            "negclip_r_i2t": parts["r_i2t"],
            "negclip_r_t2i": parts["r_t2i"],
            "kernel_clip_score": parts["clip_score"],
        },
        index=pd.Index(sorted_uids, name="uid"),
    )


def _unit_rows(mat: np.ndarray) -> np.ndarray:
    m = mat.astype(np.float64)
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Scores equal the kernels


def test_every_row_scored_once(scored: Any) -> None:
    frame = scored.frame
    assert scored.result.rows_in == scored.result.rows_out == 800
    assert scored.result.by_status == {STATUS.OK: 800}
    assert len(frame) == 800 and frame["uid"].is_unique
    assert (frame["status"] == STATUS.OK).all() and frame["error"].isna().all()
    assert frame[[*SCORE_COLUMNS, "normsim_2_tgt", "normsim_inf_tgt"]].notna().all().all()
    assert set(frame["run_id"]) == {scored.result.run_id}


def test_scores_equal_kernels_per_shard(scored: Any, pool_shards: dict[str, Any]) -> None:
    frame = scored.frame.set_index("uid")
    neg = scored.data["negclip"]
    for stem, shard in pool_shards.items():
        rows = frame.loc[shard.uids]
        assert (rows["source"] == stem).all()
        assert rows["source_row"].tolist() == list(range(len(shard.uids)))
        np.testing.assert_allclose(rows["image_norm"], 1.0, atol=1e-6)
        np.testing.assert_allclose(rows["clip_score"], clip_score(shard.img, shard.txt), atol=ATOL, rtol=0)
        ref = _negclip_reference(shard.uids, shard.img, shard.txt, neg)
        got = frame.loc[ref.index]
        for col in ("negclip_loss", "negclip_r_i2t", "negclip_r_t2i"):
            np.testing.assert_allclose(got[col], ref[col], atol=ATOL, rtol=0, err_msg=f"{stem}: {col}")
        np.testing.assert_allclose(got["clip_score"], ref["kernel_clip_score"], atol=ATOL, rtol=0)
        # negCLIPLoss = CLIPScore − R_i2t − R_t2i ≤ 0 (the kernel's CLIPScore is a float32 matmul diagonal,
        # the clip_score column a float64 dot product: equal to ~1e-7)
        recomposed = got["clip_score"] - got["negclip_r_i2t"] - got["negclip_r_t2i"]
        np.testing.assert_allclose(got["negclip_loss"], recomposed, atol=ATOL, rtol=0)
        assert (got["negclip_loss"] <= 0).all()


def test_normsim_equals_kernel_on_normalised_target(
    scored: Any, pool_shards: dict[str, Any], target_path: Path
) -> None:
    frame = scored.frame.set_index("uid")
    raw = np.load(target_path)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # the fixture's target is not unit-norm
    target = _unit_rows(raw)
    for shard in pool_shards.values():
        rows = frame.loc[shard.uids]
        np.testing.assert_allclose(rows["normsim_2_tgt"], normsim(shard.img, target, 2), atol=ATOL, rtol=0)
        np.testing.assert_allclose(rows["normsim_inf_tgt"], normsim(shard.img, target, math.inf), atol=ATOL, rtol=0)


def test_lineage_and_runs_table(spark: SparkSession, scored: Any, target_path: Path) -> None:
    output = scored.data["output"]["path"]
    row = (
        spark.read.format("delta").load(output).where(F.col("run_id") == scored.result.run_id).select("lineage").first()
    )
    lineage = row["lineage"].asDict(recursive=True)
    neg = scored.data["negclip"]
    assert lineage["teacher"] == "b32" and lineage["normalized"] is True
    assert (lineage["tau"], lineage["batch_size"], lineage["rounds"], lineage["seed"]) == (
        neg["tau"], neg["batch_size"], neg["rounds"], neg["seed"],
    )  # fmt: skip
    assert lineage["grouping"] == "shard"
    sha = hashlib.sha256(target_path.read_bytes()).hexdigest()
    assert lineage["targets"] == [{"name": "tgt", "sha256": sha, "rows": 40}]
    runs = spark.read.format("delta").load(output + "_runs").where(F.col("run_id") == scored.result.run_id)
    (rec,) = runs.collect()
    assert rec["rows"] == 800
    assert json.loads(rec["rows_by_status"]) == {"ok": 800}
    assert json.loads(rec["config"])["negclip"]["rounds"] == neg["rounds"]


def test_pool_grouping_with_one_group_equals_kernel_on_everything(
    spark: SparkSession, scored: Any, pool_shards: dict[str, Any], tmp_path: Path
) -> None:
    data = copy.deepcopy(scored.data)
    data["output"] = {"path": str(tmp_path / "pool_grouped")}
    data["negclip"].update(grouping="pool", pool_group_rows=800)
    data["normsim"] = {"targets": []}
    data["normsim2_dynamic"] = {"enabled": False}
    result = run(spark, from_dict(ScoreConfig, data))
    assert result.rows_out == 800
    frame = _run_frame(spark, data["output"]["path"], result.run_id).set_index("uid")
    uids = [u for s in pool_shards.values() for u in s.uids]
    img = np.concatenate([s.img for s in pool_shards.values()])
    txt = np.concatenate([s.txt for s in pool_shards.values()])
    ref = _negclip_reference(uids, img, txt, data["negclip"])
    got = frame.loc[ref.index]
    for col in ("negclip_loss", "negclip_r_i2t", "negclip_r_t2i"):
        np.testing.assert_allclose(got[col], ref[col], atol=ATOL, rtol=0, err_msg=col)
    # Not the per-shard scores: batches now mix the two shards.
    per_shard = scored.frame.set_index("uid").loc[ref.index, "negclip_loss"]
    assert not np.allclose(per_shard, got["negclip_loss"], atol=1e-4)
    assert "normsim_2_tgt" not in frame.columns and NORMSIM2D_COLUMN not in frame.columns


# --------------------------------------------------------------------------------------------------
# NormSim_2-D


def test_normsim2_dynamic_survivors_equal_kernel(scored: Any, pool_shards: dict[str, Any]) -> None:
    cfg = scored.data["normsim2_dynamic"]
    frame = scored.frame.set_index("uid")
    uids = sorted(u for s in pool_shards.values() for u in s.uids)
    where = {u: (s, i) for s in pool_shards.values() for i, u in enumerate(s.uids)}
    img = np.stack([where[u][0].img[where[u][1]] for u in uids])
    txt = np.stack([where[u][0].txt[where[u][1]] for u in uids])
    n = len(uids)
    cs = clip_score(img, txt)
    # The synthetic pool has exact duplicates (equal scores): rows are in uid order, so the kernel's
    # tie rule (lower index first) is the job's (lower uid first), here and in the iterations.
    np.testing.assert_allclose(frame.loc[uids, "clip_score"].to_numpy(), cs, atol=1e-7, rtol=0)
    n_cand, n_final = int(n * cfg["candidate_fraction"]), int(n * cfg["final_fraction"])
    candidates = np.argsort(-cs, kind="stable")[:n_cand]
    kept = normsim2_dynamic(img, candidates, n_final, cfg["iterations"])
    assert len(kept) == n_final

    survived = frame.loc[uids, NORMSIM2D_COLUMN]
    cand_uids = {uids[i] for i in candidates}
    assert set(survived[survived.notna()].index) == cand_uids
    assert set(survived[survived == cfg["iterations"]].index) == {uids[i] for i in kept}
    # Each iteration removes ceil((n_cand − n_final) / T) rows, the last one down to n_final.
    chunk = math.ceil((n_cand - n_final) / cfg["iterations"])
    for t in range(1, cfg["iterations"]):
        assert int((survived >= t).sum()) == n_cand - t * chunk
    assert int((survived >= cfg["iterations"]).sum()) == n_final


# --------------------------------------------------------------------------------------------------
# Determinism and idempotence


def test_rerun_same_config_is_identical_and_replaces(spark: SparkSession, scored: Any) -> None:
    output = scored.data["output"]["path"]
    again = run(spark, from_dict(ScoreConfig, copy.deepcopy(scored.data)))
    assert again.run_id == scored.result.run_id
    frame = _run_frame(spark, output, again.run_id)
    assert len(frame) == 800 and frame["uid"].is_unique  # replaced, not appended
    before = scored.frame.set_index("uid").sort_index()
    after = frame.set_index("uid").sort_index()
    for col in [*SCORE_COLUMNS, "normsim_2_tgt", "normsim_inf_tgt", NORMSIM2D_COLUMN, "image_norm", "text_norm"]:
        a, b = before[col].to_numpy(dtype=float), after[col].to_numpy(dtype=float)
        assert np.array_equal(a, b, equal_nan=True), col  # bit-identical

    # A different seed is a different run; both coexist, each once.
    data = copy.deepcopy(scored.data)
    data["negclip"]["seed"] += 1
    other = run(spark, from_dict(ScoreConfig, data))
    assert other.run_id != again.run_id
    table = spark.read.format("delta").load(output)
    counts = {r["run_id"]: r["count"] for r in table.groupBy("run_id").count().collect()}
    assert counts == {again.run_id: 800, other.run_id: 800}
    assert table.select("run_id", "uid").distinct().count() == 1600
    new = _run_frame(spark, output, other.run_id).set_index("uid").sort_index()
    assert np.array_equal(new["clip_score"], after["clip_score"])
    assert not np.allclose(new["negclip_loss"], after["negclip_loss"], atol=1e-4)

    runs = spark.read.format("delta").load(output + "_runs")
    run_rows = sorted(r["run_id"] for r in runs.select("run_id").collect())
    assert run_rows == sorted([again.run_id, other.run_id])


# --------------------------------------------------------------------------------------------------
# Bad input: rows in = rows out


def test_table_input_bad_rows(spark: SparkSession, tmp_path: Path) -> None:
    dim = 8
    rng = np.random.default_rng(11)
    good = [(f"ok{i:02d}", rng.normal(size=dim).tolist(), rng.normal(size=dim).tolist()) for i in range(40)]
    vec = rng.normal(size=dim).tolist()
    bad: list[tuple[str, tuple[Any, Any, Any], str]] = [
        ("img_null", ("img_null", None, vec), STATUS.NULL_EMBEDDING),
        ("txt_null", ("txt_null", vec, None), STATUS.NULL_EMBEDDING),
        ("img_short", ("img_short", vec[:-1], vec), STATUS.BAD_DIMENSION),
        ("txt_long", ("txt_long", vec, [*vec, 1.0]), STATUS.BAD_DIMENSION),
        ("img_nan", ("img_nan", [math.nan, *vec[1:]], vec), STATUS.NON_FINITE),
        ("txt_inf", ("txt_inf", vec, [*vec[:-1], math.inf]), STATUS.NON_FINITE),
        ("img_zero", ("img_zero", [0.0] * dim, vec), STATUS.ZERO_NORM),
        ("txt_zero", ("txt_zero", vec, [0.0] * dim), STATUS.ZERO_NORM),
    ]
    rows = [*good, *(r for _, r, _ in bad), (None, vec, vec), ("ok00", vec, vec)]  # null uid; ok00 repeated
    path = str(tmp_path / "emb")
    spark.createDataFrame(rows, "uid string, image_emb array<float>, text_emb array<float>").write.format("delta").save(
        path
    )
    target = tmp_path / "t.npy"
    np.save(target, rng.normal(size=(5, dim)).astype(np.float32))
    data = {
        "input": {"kind": "table", "path": path, "dim": dim},
        "output": {"path": str(tmp_path / "scores")},
        "negclip": {"rounds": 2, "batch_size": 16, "grouping": "pool", "seed": 1},
        "normsim": {"targets": [{"name": "t", "path": str(target)}]},
    }
    result = run(spark, from_dict(ScoreConfig, data))
    assert result.rows_in == result.rows_out == len(rows)
    out = _run_frame(spark, data["output"]["path"], result.run_id)
    assert len(out) == len(rows)
    scores = [*SCORE_COLUMNS, "normsim_2_t", "normsim_inf_t", "image_norm", "text_norm"]

    for key, _, status in bad:
        (row,) = out[out["uid"] == key].to_dict("records")
        assert row["status"] == status, key
        assert isinstance(row["error"], str) and row["error"], key
        assert all(pd.isna(row[c]) for c in scores), key

    (null_uid,) = out[out["uid"].isna()].to_dict("records")
    assert null_uid["status"] == STATUS.NULL_UID and null_uid["error"]
    dup = out[out["uid"] == "ok00"]
    assert sorted(dup["status"]) == [STATUS.DUPLICATE_UID, STATUS.OK]
    assert "occurrence 2" in dup.loc[dup["status"] == STATUS.DUPLICATE_UID, "error"].item()

    ok = out[out["status"] == STATUS.OK]
    assert len(ok) == 40 and ok["uid"].is_unique
    assert ok[scores].notna().all().all() and ok["error"].isna().all()
    non_ok = out[out["status"] != STATUS.OK]
    assert non_ok[SCORE_COLUMNS].isna().all().all()
    assert non_ok["error"].map(lambda e: isinstance(e, str) and bool(e)).all()
    assert result.by_status == out["status"].value_counts().to_dict()
    # Scores of the ok rows ignore the bad ones: one group of exactly the 40 ok rows. A table has no row
    # order, so which 'ok00' row stayed ok is the job's choice: tell them apart by the recorded norm.
    okrows = ok.set_index("uid")
    uids = sorted(okrows.index)
    by_uid = {u: (i, s) for u, i, s in good}
    kept_norm = okrows.loc["ok00", "image_norm"]
    if not math.isclose(kept_norm, np.linalg.norm(np.float32(good[0][1])), rel_tol=1e-6):
        assert math.isclose(kept_norm, np.linalg.norm(np.float32(vec)), rel_tol=1e-6)
        by_uid["ok00"] = (vec, vec)
    img = l2_normalize(np.array([by_uid[u][0] for u in uids], np.float32))[0]
    txt = l2_normalize(np.array([by_uid[u][1] for u in uids], np.float32))[0]
    ref = _negclip_reference(uids, img, txt, {"rounds": 2, "batch_size": 16, "seed": 1, "tau": 0.01})
    np.testing.assert_allclose(okrows.loc[uids, "negclip_loss"], ref["negclip_loss"], atol=ATOL, rtol=0)


def _shard(folder: Path, stem: str, uids: list[str], arrays: dict[str, np.ndarray] | None) -> None:
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string())}), folder / f"{stem}.parquet")
    if arrays is not None:
        np.savez(folder / f"{stem}.npz", **arrays)


def _uids(tag: str, n: int) -> list[str]:
    return [hashlib.md5(f"{tag}-{i}".encode()).hexdigest() for i in range(n)]


def test_datacomp_input_bad_shards(spark: SparkSession, tmp_path: Path) -> None:
    dim = 8
    rng = np.random.default_rng(5)
    pool = tmp_path / "pool"
    pool.mkdir()
    img0, txt0 = rng.normal(size=(25, dim)).astype(np.float32), rng.normal(size=(25, dim)).astype(np.float32)
    img0[3, 2] = np.nan
    txt0[7, 0] = np.inf
    img0[10] = 0.0
    _shard(pool, "00000", _uids("a", 30), {"b32_img": img0, "b32_txt": txt0})  # 5 parquet rows beyond the npz
    _shard(pool, "00001", _uids("b", 12), None)  # no npz
    (pool / "00002.parquet").write_bytes(b"\x00garbage, not a parquet file\xff" * 10)
    _shard(pool, "00003", _uids("c", 10), {"l14_img": np.ones((10, dim)), "l14_txt": np.ones((10, dim))})
    good_img, good_txt = rng.normal(size=(20, dim)).astype(np.float32), rng.normal(size=(20, dim)).astype(np.float32)
    _shard(pool, "00004", _uids("d", 20), {"b32_img": good_img, "b32_txt": good_txt})
    data = {
        "input": {"kind": "datacomp", "path": str(pool), "arch": "b32", "dim": dim},
        "output": {"path": str(tmp_path / "scores")},
        "negclip": {"rounds": 2, "batch_size": 8, "seed": 3},
    }
    result = run(spark, from_dict(ScoreConfig, data))
    n_in = 30 + 12 + 1 + 10 + 20
    assert result.rows_in == result.rows_out == n_in
    out = _run_frame(spark, data["output"]["path"], result.run_id)
    assert len(out) == n_in

    def status_of(stem: str, row: int) -> str:
        (s,) = out.loc[(out["source"] == stem) & (out["source_row"] == row), "status"]
        return str(s)

    assert [status_of("00000", r) for r in (3, 7, 10)] == [STATUS.NON_FINITE, STATUS.NON_FINITE, STATUS.ZERO_NORM]
    assert [status_of("00000", r) for r in range(25, 30)] == [STATUS.MISSING_EMBEDDING] * 5
    assert all(status_of("00001", r) == STATUS.MISSING_EMBEDDING for r in range(12))
    assert all(status_of("00003", r) == STATUS.MISSING_EMBEDDING for r in range(10))
    (unreadable,) = out[out["source"] == "00002"].to_dict("records")
    assert unreadable["status"] == STATUS.UNREADABLE_SHARD and pd.isna(unreadable["uid"])
    assert "00002.parquet" in unreadable["error"]
    ok = out[out["status"] == STATUS.OK]
    assert len(ok) == 25 - 3 + 20
    assert ok[SCORE_COLUMNS].notna().all().all()
    bad = out[out["status"] != STATUS.OK]
    assert bad[SCORE_COLUMNS].isna().all().all()
    assert bad["error"].map(lambda e: isinstance(e, str) and bool(e)).all()
    assert set(out["uid"].dropna()) == set(_uids("a", 30) + _uids("b", 12) + _uids("c", 10) + _uids("d", 20))
    # The ok rows of shard 00000 are scored as one group of their own.
    keep = [i for i in range(25) if i not in (3, 7, 10)]
    uids0 = [_uids("a", 30)[i] for i in keep]
    ref = _negclip_reference(
        uids0,
        l2_normalize(img0[keep])[0],
        l2_normalize(txt0[keep])[0],
        {"rounds": 2, "batch_size": 8, "seed": 3, "tau": 0.01},
    )
    got = out.set_index("uid").loc[ref.index, "negclip_loss"]
    np.testing.assert_allclose(got, ref["negclip_loss"], atol=ATOL, rtol=0)


def test_datacomp_repeated_uids_keep_first_row_in_its_shard_group(spark: SparkSession, tmp_path: Path) -> None:
    """A uid repeated across and within shards: the first row stays ok and is scored with its own shard (the
    shard is scored in the task that read it), the later rows are duplicate_uid and in no group."""
    dim = 8
    rng = np.random.default_rng(9)
    pool = tmp_path / "pool"
    pool.mkdir()
    uids0, uids1 = _uids("a", 20), _uids("b", 15)
    uids1 = [*uids1, uids0[3], uids1[2]]
    arrays = {}
    for stem, n in (("00000", 20), ("00001", 17)):
        arrays[stem] = (rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(n, dim)).astype(np.float32))
        img, txt = arrays[stem]
        _shard(pool, stem, uids0 if stem == "00000" else uids1, {"b32_img": img, "b32_txt": txt})
    neg = {"rounds": 2, "batch_size": 8, "seed": 5, "tau": 0.01}
    data = {
        "input": {"kind": "datacomp", "path": str(pool), "arch": "b32", "dim": dim},
        "output": {"path": str(tmp_path / "scores")},
        "negclip": {k: v for k, v in neg.items() if k != "tau"},
    }
    result = run(spark, from_dict(ScoreConfig, data))
    assert result.rows_in == result.rows_out == 37
    assert result.by_status == {STATUS.OK: 35, STATUS.DUPLICATE_UID: 2}
    out = _run_frame(spark, data["output"]["path"], result.run_id)
    dups = out[out["status"] == STATUS.DUPLICATE_UID]
    assert sorted(zip(dups["source"], dups["source_row"], strict=True)) == [("00001", 15), ("00001", 16)]
    assert dups[SCORE_COLUMNS].isna().all().all()
    ok = out[out["status"] == STATUS.OK].set_index("uid")
    for stem, uids, n in (("00000", uids0, 20), ("00001", uids1, 15)):
        img, txt = arrays[stem]
        ref = _negclip_reference(uids[:n], l2_normalize(img[:n])[0], l2_normalize(txt[:n])[0], neg)
        got = ok.loc[ref.index]
        assert (got["source"] == stem).all()
        np.testing.assert_allclose(got["negclip_loss"], ref["negclip_loss"], atol=ATOL, rtol=0, err_msg=stem)


def test_datacomp_large_shard_without_npz(spark: SparkSession, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    _shard(pool, "00000", _uids("big", 4100), None)
    rng = np.random.default_rng(0)
    _shard(
        pool, "00001", _uids("small", 10), {"b32_img": rng.normal(size=(10, 8)), "b32_txt": rng.normal(size=(10, 8))}
    )
    data = {
        "input": {"kind": "datacomp", "path": str(pool), "arch": "b32", "dim": 8},
        "output": {"path": str(tmp_path / "scores")},
        "negclip": {"rounds": 1, "batch_size": 8},
    }
    result = run(spark, from_dict(ScoreConfig, data))
    assert result.rows_out == 4110
    assert result.by_status == {STATUS.MISSING_EMBEDDING: 4100, STATUS.OK: 10}


def test_missing_target_file(spark: SparkSession, scored: Any, tmp_path: Path) -> None:
    data = copy.deepcopy(scored.data)
    data["output"] = {"path": str(tmp_path / "never")}
    data["normsim"] = {"targets": [{"name": "ghost", "path": str(tmp_path / "ghost.npy")}]}
    with pytest.raises(ConfigError, match=r"'normsim\.targets\[0\]\.path'.*ghost.*does not exist"):
        run(spark, from_dict(ScoreConfig, data))
    assert not io.table_exists(spark, TableRef(path=str(tmp_path / "never")))


def test_score_frame_equals_the_job_and_writes_nothing(spark: SparkSession, tmp_path: Path) -> None:
    """``clipsift.score_frame`` on a DataFrame in hand (its own column names) gives the rows the job writes for
    the same data read from a table, bad rows included, and writes no table."""
    import clipsift

    dim = 8
    rng = np.random.default_rng(23)
    rows = [(f"u{i:02d}", rng.normal(size=dim).tolist(), rng.normal(size=dim).tolist()) for i in range(30)]
    rows += [("short", rows[0][1][:-1], rows[0][2]), ("none", None, rows[0][2])]
    frame = spark.createDataFrame(rows, "id string, img array<float>, txt array<float>")
    path = str(tmp_path / "emb")
    frame.write.format("delta").save(path)
    output = tmp_path / "scores"
    data = {
        "input": {"kind": "table", "path": path, "dim": dim, "uid_col": "id", "image_col": "img", "text_col": "txt"},
        "output": {"path": str(output)},
        "negclip": {"rounds": 2, "batch_size": 8, "grouping": "pool", "seed": 3},
    }
    cfg = clipsift.ScoreConfig.from_yaml(None, [f"{k}={json.dumps(v)}" for k, v in data.items()])

    in_hand = clipsift.score_frame(frame, cfg).drop("lineage", "scored_at").toPandas()
    assert not output.exists()
    assert len(in_hand) == len(rows) and in_hand["uid"].is_unique
    assert in_hand.set_index("uid").loc[["short", "none"], "status"].tolist() == [
        STATUS.BAD_DIMENSION, STATUS.NULL_EMBEDDING,
    ]  # fmt: skip

    result = clipsift.score(spark, cfg)
    written = _run_frame(spark, str(output), result.run_id).drop(columns=["scored_at"])
    assert list(in_hand.columns) == list(written.columns)
    pd.testing.assert_frame_equal(
        in_hand.sort_values("uid").reset_index(drop=True), written.sort_values("uid").reset_index(drop=True),
        check_exact=False, atol=ATOL, rtol=0,
    )  # fmt: skip


def test_output_properties_schema_and_foreign_readers(spark: SparkSession, tmp_path: Path) -> None:
    """An output in a schema that does not exist yet is created; ``output.properties`` land on the score table and
    its runs table; delta-rs (``deltalake``) and Polars read the score table and get Spark's values."""
    import deltalake
    import polars as pl

    dim = 8
    rng = np.random.default_rng(5)
    rows = [(f"u{i:02d}", rng.normal(size=dim).tolist(), rng.normal(size=dim).tolist()) for i in range(24)]
    rows.append(("bad", [math.nan] * dim, rows[0][2]))
    path = str(tmp_path / "emb")
    spark.createDataFrame(rows, "uid string, image_emb array<float>, text_emb array<float>").write.format(
        "delta"
    ).save(path)
    properties = {"delta.enableDeletionVectors": "false", "delta.dataSkippingNumIndexedCols": "8", "comment": "t"}
    data = {
        "input": {"kind": "table", "path": path, "dim": dim},
        "output": {"table": "props_schema.scores", "properties": properties},
        "negclip": {"rounds": 2, "batch_size": 8, "grouping": "pool", "seed": 1},
    }
    result = run(spark, from_dict(ScoreConfig, data))
    for table in ("props_schema.scores", "props_schema.scores_runs"):
        detail = spark.sql(f"DESCRIBE DETAIL {table}").first()
        assert detail is not None
        got = {k: detail["properties"].get(k) for k in properties if k != "comment"}
        assert got == {k: v for k, v in properties.items() if k != "comment"}, table
    assert spark.sql("DESCRIBE DETAIL props_schema.scores").first()["description"] == "t"  # type: ignore[index]

    location = spark.sql("DESCRIBE DETAIL props_schema.scores").first()["location"]  # type: ignore[index]
    location = str(location).removeprefix("file:")  # a local path, as delta-rs and Polars take it
    columns = ["uid", "status", "clip_score", "negclip_loss", "run_id"]
    ours = spark.table("props_schema.scores").select(*columns).toPandas().sort_values("uid").reset_index(drop=True)
    assert len(ours) == len(rows) and set(ours["run_id"]) == {result.run_id}
    rs = deltalake.DeltaTable(location).to_pyarrow_table(columns=columns).to_pandas()
    polars = pl.read_delta(location, columns=columns).to_pandas()
    for theirs in (rs, polars):
        theirs = theirs.sort_values("uid").reset_index(drop=True)
        pd.testing.assert_frame_equal(theirs, ours, check_dtype=False)
