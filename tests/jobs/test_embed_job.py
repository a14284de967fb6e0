"""Jobs-tier tests of ``clipsift.jobs.embed.run``: real images and captions through a real (tiny) open_clip model
into Delta; every input row accounted for; reruns resume; a crash loses no committed work; the score
job reads the output as it is."""

from __future__ import annotations

import io as _stdio
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import embed as embed_job
from clipsift.jobs import io
from clipsift.jobs.config import EmbedConfig, ScoreConfig, TableRef, from_dict
from clipsift.jobs.score import run as score_run
from clipsift.udfs.arrow import half_to_lists
from tests.support.corpus import broken_image_corpus, skimage_photos, tuxpaint_stamps
from tests.support.models import TINY_NAME, write_tiny_config

DIM = 32
#: Broken or odd images planted in shard 1, with the status each must get.
PLANTED = ("random_bytes", "jpeg_truncated_half", "png_bad_zlib", "bomb_png_8000x8000", "png_gray16", "gif_animated")


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A WebDataset tar: each sample's members ``<key>.<ext>`` in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, _stdio.BytesIO(data))


def sample(key: str, uid: str, image: bytes | None, caption: bytes | None, ext: str = "png") -> tuple[str, dict]:
    members: dict[str, bytes] = {}
    if image is not None:
        members[ext] = image
    if caption is not None:
        members["txt"] = caption
    members["json"] = json.dumps({"uid": uid, "key": key}).encode()
    return key, members


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Shards 0-1 and a broken tar in ``wds/``; shard 2 (new rows and a repeated uid) kept aside."""
    root = tmp_path_factory.mktemp("embed-inputs")
    stamps = tuxpaint_stamps(limit=18)
    corpus = {name: (data, status) for name, data, status in broken_image_corpus()}
    shard0 = [sample(f"0{i:05d}", f"stamp-{i}", png, cap.encode()) for i, (_, png, cap) in enumerate(stamps[:12])]
    photos = skimage_photos()[:6]
    shard1 = [
        sample(f"1{i:05d}", f"photo-{i}", data, f"a photo: {name.split('.')[0]}".encode(), ext=name.split(".")[-1])
        for i, (name, data) in enumerate(photos)
    ]
    for j, name in enumerate(PLANTED):
        shard1.append(sample(f"1{100 + j:05d}", f"planted-{name}", corpus[name][0], b"an odd picture"))
    shard1.append(sample("100200", "no-image", None, b"a caption without its image"))
    shard1.append(sample("100201", "bad-utf8", photos[0][1], b"\xff\xfe not utf-8", ext="png"))
    shard1.append(sample("100202", "empty-caption", photos[1][1], b"   ", ext="png"))
    wds = root / "wds"
    write_shard(wds / "00000.tar", shard0)
    write_shard(wds / "00001.tar", shard1)
    good = wds / "00001.tar"
    (wds / "00009.tar").write_bytes(good.read_bytes()[:2500])  # cut inside the first sample's image
    shard2 = [sample(f"2{i:05d}", f"stamp-{12 + i}", png, cap.encode()) for i, (_, png, cap) in enumerate(stamps[12:])]
    shard2.append(sample("200099", "stamp-0", stamps[0][1], b"the same uid again"))
    write_shard(root / "later" / "00002.tar", shard2)
    expected = {f"planted-{name}": corpus[name][1] for name in PLANTED}
    expected.update({"no-image": "null_image", "bad-utf8": "invalid_utf8", "empty-caption": "empty_caption"})
    return {
        "root": root,
        "wds": wds,
        "later": root / "later" / "00002.tar",
        "config_json": write_tiny_config(root / "model"),
        "expected": expected,
        "rows_shard0": len(shard0),
        "rows_shard1": len(shard1),
        "rows_shard2": len(shard2),
    }


def embed_config(inputs: dict[str, Any], output: Path, **overrides: Any) -> EmbedConfig:
    data: dict[str, Any] = {
        "input": {"kind": "webdataset", "path": str(inputs["wds"])},
        "model": {"name": TINY_NAME, "config_json": str(inputs["config_json"]), "device": "cpu", "threads": 1},
        "output": {"path": str(output)},
        "embed": {"image_batch_size": 8, "text_batch_size": 8, "decode_threads": 2, "shards_per_commit": 1},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        data[section][name] = value
    return from_dict(EmbedConfig, data)


def table_rows(spark: SparkSession, path: Path, **where: str) -> pd.DataFrame:
    df = spark.read.format("delta").load(str(path))
    for column, value in where.items():
        df = df.where(F.col(column) == value)
    return df.toPandas()


@pytest.fixture(scope="module")
def first_run(spark: SparkSession, inputs: dict[str, Any]) -> dict[str, Any]:
    output = inputs["root"] / "out"
    result = embed_job.run(spark, embed_config(inputs, output))
    return {"output": output, "result": result, "rows": table_rows(spark, output)}


def test_every_input_row_is_embedded_or_rejected(spark: SparkSession, inputs: dict[str, Any], first_run: dict) -> None:
    result, rows = first_run["result"], first_run["rows"]
    rejects = table_rows(spark, Path(f"{first_run['output']}_rejects"))
    n_in = inputs["rows_shard0"] + inputs["rows_shard1"] + 1  # + one row for the broken tar
    assert result.rows_in == n_in
    assert result.embedded + result.rejected + result.already_done == n_in
    assert len(rows) == result.embedded and rows["uid"].is_unique
    assert len(rejects) == result.rejected == 1
    assert rejects.loc[0, "status"] == "unreadable_shard" and "00009.tar" in rejects.loc[0, "error"]
    assert sum(result.by_status.values()) == result.embedded


def test_statuses_of_broken_inputs(first_run: dict, inputs: dict[str, Any]) -> None:
    rows = first_run["rows"].set_index("uid")
    for uid, status in inputs["expected"].items():
        assert rows.loc[uid, "status"] == status, uid
        if status != "ok":
            assert rows.loc[uid, "error"], uid
    assert rows.loc["no-image", "error"].startswith("sample '100200' has no image member")
    # A failed image keeps its caption's embedding, and a failed caption its image's.
    assert rows.loc["planted-random_bytes", "image_emb"] is None
    assert len(rows.loc["planted-random_bytes", "text_emb"]) == DIM
    assert rows.loc["bad-utf8", "text_emb"] is None and len(rows.loc["bad-utf8", "image_emb"]) == DIM
    stamps = rows[rows.index.str.startswith("stamp-")]
    assert (stamps["status"] == "ok").all() and len(stamps) == inputs["rows_shard0"]


def test_ok_rows_are_unit_vectors_with_provenance(first_run: dict) -> None:
    rows = first_run["rows"]
    ok = rows[rows["status"] == "ok"]
    assert len(ok) >= 18
    for column in ("image_emb", "text_emb"):
        mat = np.stack(ok[column].to_numpy())
        assert mat.shape == (len(ok), DIM) and mat.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    assert set(rows["model_id"]) == {first_run["result"].model_id}
    model_id = first_run["result"].model_id
    assert model_id.startswith(f"{TINY_NAME}@cfg-") and model_id.endswith(":random-seed0")
    assert set(rows["precision"]) == {"fp32"} and set(rows["device"]) == {"cpu"}
    assert set(rows["image_size"]) == {32} and set(rows["embed_dim"]) == {DIM}
    assert set(rows["embedding_dtype"]) == {"float32"}
    assert (ok["image_width"] > 0).all() and ok["source"].str.endswith(".tar").all()


def test_runs_table_records_the_run(spark: SparkSession, first_run: dict) -> None:
    runs = table_rows(spark, Path(f"{first_run['output']}_runs"), run_id=first_run["result"].run_id)
    assert len(runs) == 1
    assert runs.loc[0, "embedded"] == first_run["result"].embedded
    assert json.loads(runs.loc[0, "rows_by_status"]) == first_run["result"].by_status
    assert json.loads(runs.loc[0, "model"])["embed_dim"] == DIM


def test_rerun_embeds_nothing_and_new_shards_only_their_rows(
    spark: SparkSession, inputs: dict[str, Any], first_run: dict
) -> None:
    output = first_run["output"]
    again = embed_job.run(spark, embed_config(inputs, output))
    assert again.embedded == 0 and again.already_done == first_run["result"].embedded

    shutil.copy(inputs["later"], inputs["wds"] / "00002.tar")
    try:
        more = embed_job.run(spark, embed_config(inputs, output))
    finally:
        (inputs["wds"] / "00002.tar").unlink()
    assert more.embedded == inputs["rows_shard2"] - 1  # the repeated uid is rejected, not embedded twice
    assert more.already_done == first_run["result"].embedded
    assert more.rejected == 2  # the broken tar and the repeated uid
    rows = table_rows(spark, output)
    assert rows["uid"].is_unique and len(rows) == first_run["result"].embedded + more.embedded
    rejects = table_rows(spark, Path(f"{output}_rejects"))
    dup = rejects[rejects["status"] == "duplicate_uid"]
    assert list(dup["uid"]) == ["stamp-0"] and dup["source"].iloc[0].endswith("00002.tar")
    # Rows embedded by the first run are untouched.
    old = rows[rows["run_id"] == first_run["result"].run_id].set_index("uid").sort_index()
    before = first_run["rows"].set_index("uid").sort_index()
    assert list(old.index) == list(before.index)
    ok = before["status"] == "ok"
    np.testing.assert_array_equal(np.stack(old["image_emb"][ok]), np.stack(before["image_emb"][ok]))


def test_a_crash_loses_no_committed_work(
    spark: SparkSession, inputs: dict[str, Any], first_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = inputs["root"] / "crashed"
    real_append = io.append_table
    calls: list[int] = []

    def append_then_crash(df: Any, ref: TableRef, partition_by: str | None = None) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash of the driver during the second commit")
        real_append(df, ref, partition_by)

    monkeypatch.setattr(io, "append_table", append_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_job.run(spark, embed_config(inputs, output))
    committed = table_rows(spark, output)
    assert len(committed) == inputs["rows_shard0"]  # the first shard's commit survived
    monkeypatch.setattr(io, "append_table", real_append)

    resumed = embed_job.run(spark, embed_config(inputs, output))
    assert resumed.already_done == inputs["rows_shard0"]
    assert resumed.embedded == inputs["rows_shard1"]
    rows = table_rows(spark, output).set_index("uid").sort_index()
    reference = first_run["rows"].set_index("uid").sort_index()
    assert list(rows.index) == list(reference.index)
    ok = reference["status"] == "ok"
    # Same model, same batches: the resumed table holds the same embeddings as the uninterrupted run.
    np.testing.assert_allclose(np.stack(rows["text_emb"][ok]), np.stack(reference["text_emb"][ok]), atol=1e-6)
    np.testing.assert_allclose(np.stack(rows["image_emb"][ok]), np.stack(reference["image_emb"][ok]), atol=1e-6)


@pytest.fixture(scope="module")
def pairs_table(spark: SparkSession, inputs: dict[str, Any]) -> dict[str, Any]:
    """A Parquet table of (uid, caption, image path) rows: stamps, a repeated uid, a null uid, a missing file."""
    folder = inputs["root"] / "images"
    folder.mkdir()
    rows = []
    for i, (_, png, caption) in enumerate(tuxpaint_stamps(limit=10)):
        (folder / f"{i}.png").write_bytes(png)
        rows.append({"id": f"t{i}", "text": caption, "file": str(folder / f"{i}.png")})
    rows.append({"id": "t0", "text": "a repeat of t0", "file": str(folder / "1.png")})
    rows.append(dict(rows[2]))  # an identical copy of a row (a double ingest): still one output row
    rows.append({"id": None, "text": "no uid", "file": str(folder / "2.png")})
    rows.append({"id": "late", "text": "a file that appears later", "file": str(folder / "late.png")})
    with open(folder / "huge.png", "wb") as f:
        f.truncate(3 << 30)  # 3 GiB, sparse: over embed.max_image_bytes [64 MiB], so never read
    rows.append({"id": "huge", "text": "a 3 GiB file", "file": str(folder / "huge.png")})
    path = inputs["root"] / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return {"path": path, "folder": folder, "n": len(rows)}


def test_table_of_image_paths_float16_and_retry(spark: SparkSession, inputs: dict, pairs_table: dict) -> None:
    output = inputs["root"] / "from-paths"
    overrides = {
        "input__kind": "table",
        "input__path": str(pairs_table["path"]),
        "input__format": "parquet",
        "input__uid_col": "id",
        "input__caption_col": "text",
        "input__image_path_col": "file",
        "embed__dtype": "float16",
        "embed__rows_per_commit": 3,  # several commits, each a uid range
    }
    first = embed_job.run(spark, embed_config(inputs, output, **overrides))
    assert first.rows_in == pairs_table["n"]
    assert first.embedded + first.rejected == pairs_table["n"]
    rejects = table_rows(spark, Path(f"{output}_rejects"))
    assert sorted(rejects["status"]) == ["duplicate_uid", "duplicate_uid", "null_uid"]
    rows = table_rows(spark, output).set_index("uid")
    assert rows.index.is_unique and len(rows) == first.embedded
    assert rows.loc["late", "status"] == "unreadable_file" and "late.png" in rows.loc["late", "error"]
    assert rows.loc["huge", "status"] == "image_too_large" and "3,221,225,472 bytes" in rows.loc["huge", "error"]
    assert rows.loc["huge", "image_emb"] is None and rows.loc["huge", "text_emb"] is not None
    assert isinstance(rows.loc["t1", "image_emb"], (bytes, bytearray)) and len(rows.loc["t1", "image_emb"]) == 2 * DIM
    half = half_to_lists(pa.array(list(rows["image_emb"]), pa.binary())).to_pylist()
    ok = [h for h, s in zip(half, rows["status"], strict=True) if s == "ok"]
    np.testing.assert_allclose(np.linalg.norm(np.array(ok), axis=1), 1.0, atol=2e-3)

    # The file shows up; a rerun retries that row (unreadable_file may pass) and only that row, not image_too_large.
    shutil.copy(pairs_table["folder"] / "3.png", pairs_table["folder"] / "late.png")
    second = embed_job.run(spark, embed_config(inputs, output, **overrides))
    assert second.embedded == 1 and second.by_status == {"ok": 1}
    rows = table_rows(spark, output).set_index("uid")
    assert rows.index.is_unique and rows.loc["late", "status"] == "ok"


def test_score_job_reads_the_embedding_table(spark: SparkSession, inputs: dict, first_run: dict) -> None:
    scores = inputs["root"] / "scores"
    cfg = from_dict(
        ScoreConfig,
        {
            "input": {"kind": "table", "path": str(first_run["output"]), "model": first_run["result"].model_id},
            "output": {"path": str(scores)},
            "negclip": {"grouping": "pool", "batch_size": 8, "rounds": 2},
        },
    )
    result = score_run(spark, cfg)
    emb = table_rows(spark, first_run["output"]).set_index("uid")  # (a later test may have added rows)
    assert result.rows_in == result.rows_out == len(emb)
    scored = spark.read.format("delta").load(str(scores)).toPandas().set_index("uid")
    ok = emb.index[emb["status"] == "ok"]
    assert (scored.loc[ok, "status"] == "ok").all()
    expected = np.einsum("ij,ij->i", np.stack(emb.loc[ok, "image_emb"]), np.stack(emb.loc[ok, "text_emb"]))
    np.testing.assert_allclose(scored.loc[ok, "clip_score"].to_numpy(), expected, atol=1e-5)
    assert scored.loc["planted-random_bytes", "status"] == "null_embedding"


def test_score_job_asks_which_model(spark: SparkSession, inputs: dict, first_run: dict) -> None:
    """A table holding two models' rows needs input.model: one clear error naming the key."""
    from clipsift.jobs.config import ConfigError

    two = inputs["root"] / "two-models"
    df = spark.read.format("delta").load(str(first_run["output"]))
    df.unionByName(df.withColumn("model_id", F.lit("other:model"))).write.format("delta").save(str(two))
    data = {"input": {"kind": "table", "path": str(two), "shard_col": "source"}, "output": {"path": str(two) + "_s"}}
    cfg = from_dict(ScoreConfig, data)
    with pytest.raises(ConfigError, match=r"input\.model.*several models"):
        score_run(spark, cfg)


def test_cli_errors_are_one_line_with_the_key(tmp_path: Path, inputs: dict[str, Any], capsys: Any) -> None:
    config = tmp_path / "embed.yaml"
    config.write_text(
        json.dumps(
            {
                "input": {"kind": "webdataset", "path": str(inputs["wds"])},
                "model": {"name": "ViT-B-32", "pretrained": "openai", "device": "cpu"},
                "output": {"path": str(tmp_path / "out")},
            }
        )
    )
    assert embed_job.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "config key 'model'" in err and "ViT-B-32" in err and "cache_dir" in err
    assert embed_job.main(["--config", str(config), "--set", "embed.batch=3"]) == 2
    assert "config key 'embed.batch': unknown key" in capsys.readouterr().err
    tiny = ["--set", f"model.name={TINY_NAME}", "--set", "model.pretrained=null"]
    tiny += ["--set", f"model.config_json={inputs['config_json']}"]
    assert embed_job.main(["--config", str(config), *tiny, "--set", "input.path=/nonexistent/shards"]) == 2
    assert "does not exist" in capsys.readouterr().err
