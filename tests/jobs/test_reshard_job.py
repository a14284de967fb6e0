"""Jobs-tier tests of ``clipsift.jobs.reshard.run``: real images (Debian's tuxpaint stamps) in WebDataset tars,
embedded by a real (tiny) open_clip model, scored, selected, then resharded; the output read back by the
``webdataset`` library (not ours) and embedded again; reruns write nothing twice; bad input lands in the missing
table with its reason."""

from __future__ import annotations

import hashlib
import io as _stdio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pyspark.sql import SparkSession

from clipsift.jobs import embed as embed_job
from clipsift.jobs import reshard as reshard_job
from clipsift.jobs.config import ConfigError, EmbedConfig, ReshardConfig, ScoreConfig, SelectConfig, from_dict
from clipsift.jobs.score import run as score_run
from clipsift.jobs.select import run as select_run
from tests.jobs.test_embed_job import sample, write_shard
from tests.support.corpus import tuxpaint_stamps
from tests.support.models import TINY_NAME, write_tiny_config

wds = pytest.importorskip("webdataset", reason="pip install webdataset (clipsift's dev extra)")

PER_TAR = 7
TARS = 3


def _embed_cfg(folder: Path, output: Path, config_json: Path) -> EmbedConfig:
    return from_dict(
        EmbedConfig,
        {
            "input": {"kind": "webdataset", "path": str(folder)},
            "model": {"name": TINY_NAME, "config_json": str(config_json), "device": "cpu", "threads": 1},
            "output": {"path": str(output)},
            "embed": {"image_batch_size": 8, "text_batch_size": 8, "decode_threads": 1, "shards_per_commit": 8},
        },
    )


def _embeddings(spark: SparkSession, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rows = spark.read.format("delta").load(str(path)).where("status = 'ok'").select("uid", "image_emb", "text_emb")
    return {r["uid"]: (np.asarray(r["image_emb"]), np.asarray(r["text_emb"])) for r in rows.collect()}


@pytest.fixture(scope="module")
def pool(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three tars of stamps (and one sample without an image), embedded, scored and selected (top 60% by CLIPScore)."""
    root = tmp_path_factory.mktemp("reshard-pool")
    stamps = tuxpaint_stamps(limit=PER_TAR * TARS)
    if len(stamps) < PER_TAR * TARS:
        pytest.skip("tuxpaint-stamps-default has too few stamps: apt-get install tuxpaint-stamps-default")
    originals: dict[str, tuple[bytes, bytes]] = {}
    for t in range(TARS):
        samples = []
        for i in range(PER_TAR):
            n = t * PER_TAR + i
            _, png, caption = stamps[n]
            uid = f"stamp-{n:03d}"
            originals[uid] = (png, caption.encode())
            samples.append(sample(f"{t}{i:04d}", uid, png, caption.encode()))
        if t == 1:
            samples.append(sample("19999", "no-image", None, b"a caption without its image"))
        write_shard(root / "wds" / f"{t:05d}.tar", samples)
    config_json = write_tiny_config(root / "model")
    embedded = embed_job.run(spark, _embed_cfg(root / "wds", root / "emb", config_json))
    scores = root / "scores"
    score_run(
        spark,
        from_dict(
            ScoreConfig,
            {
                "input": {"kind": "table", "path": str(root / "emb"), "model": embedded.model_id},
                "output": {"path": str(scores)},
                "negclip": {"grouping": "pool", "batch_size": 8, "rounds": 2},
            },
        ),
    )
    select_data = {
        "scores": {"path": str(scores)},
        "view_prefix": "reshard_",
        "selections": [{"name": "top", "rule": "top_fraction", "column": "clip_score", "fraction": 0.6}],
    }
    (result,) = select_run(spark, from_dict(SelectConfig, select_data))
    chosen = {r["uid"] for r in spark.table(result.view).select("uid").collect()}
    return {"root": root, "originals": originals, "scores": scores, "view": result.view, "chosen": chosen,
            "config_json": config_json, "emb": root / "emb"}  # fmt: skip


def _config(pool: dict[str, Any], out: Path, **output: Any) -> ReshardConfig:
    data = {
        "selection": {"name": "top", "scores": {"path": str(pool["scores"])}},
        "pool": {"kind": "webdataset", "path": str(pool["root"] / "wds")},
        "output": {"path": str(out), "samples_per_shard": 4, **output},
    }
    return from_dict(ReshardConfig, data)


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def resharded(spark: SparkSession, pool: dict[str, Any]) -> dict[str, Any]:
    out = pool["root"] / "out"
    result = reshard_job.run(spark, _config(pool, out, shards_per_commit=2))  # two commits
    return {"out": out, "result": result, "files": _bytes_of(out)}


def test_webdataset_reads_back_the_selection(pool: dict[str, Any], resharded: dict[str, Any]) -> None:
    result, out = resharded["result"], resharded["out"]
    chosen = pool["chosen"]
    assert result.selected == len(chosen) == result.written and result.missing == 0
    assert sorted(resharded["files"]) == [f"{i:05d}.tar" for i in range(result.shards)]
    assert result.shards == -(-len(chosen) // 4)
    urls = [str(out / name) for name in sorted(resharded["files"])]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == len(chosen)
    seen = []
    for s in samples:
        meta = json.loads(s["json"])
        png, caption = pool["originals"][meta["uid"]]
        assert s["png"] == png and s["txt"] == caption
        assert meta["source"].endswith(".tar") and isinstance(meta["clip_score"], float)
        assert s["__key__"] == meta["key"]
        seen.append(meta["uid"])
    assert set(seen) == chosen and len(seen) == len(set(seen))
    assert seen == sorted(seen)  # not shuffled: the pool's order (tar, then sample), here also uid order
    sizes = [sum(1 for _ in wds.WebDataset([u], shardshuffle=False)) for u in urls]
    assert sizes[:-1] == [4] * (len(sizes) - 1)


def test_manifest_records_every_shard(spark: SparkSession, pool: dict[str, Any], resharded: dict[str, Any]) -> None:
    out = resharded["out"]
    manifest = spark.read.format("delta").load(f"{out}_manifest").toPandas().set_index("name")
    assert sorted(manifest.index) == sorted(resharded["files"])
    for name, data in resharded["files"].items():
        row = manifest.loc[name]
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        assert row["samples"] == len(row["uids"])
    assert set(np.concatenate(manifest["uids"].to_numpy())) == pool["chosen"]
    assert spark.read.format("delta").load(f"{out}_missing").count() == 0


def test_embed_on_the_output_gives_the_same_embeddings(
    spark: SparkSession, pool: dict[str, Any], resharded: dict[str, Any]
) -> None:
    again = pool["root"] / "emb-again"
    embed_job.run(spark, _embed_cfg(resharded["out"], again, pool["config_json"]))
    before, after = _embeddings(spark, pool["emb"]), _embeddings(spark, again)
    assert set(after) == pool["chosen"]
    for uid, (img, txt) in after.items():
        np.testing.assert_allclose(img, before[uid][0], atol=1e-6)
        np.testing.assert_allclose(txt, before[uid][1], atol=1e-6)


def test_rerun_writes_nothing_and_a_lost_shard_comes_back_the_same(
    spark: SparkSession, pool: dict[str, Any], resharded: dict[str, Any]
) -> None:
    out = resharded["out"]
    again = reshard_job.run(spark, _config(pool, out, shards_per_commit=2))
    assert again.config_id == resharded["result"].config_id
    assert again.shards_written == 0 and again.shards_kept == again.shards and again.written_now == 0
    (out / "00001.tar").unlink()
    (out / "00002.tar").write_bytes(b"damaged")  # its sha256 no longer matches the manifest
    (out / "00000.tar.tmp-left-by-a-killed-run").write_bytes(b"partial")
    third = reshard_job.run(spark, _config(pool, out, shards_per_commit=2))
    assert third.shards_written == 2 and third.written == len(pool["chosen"])
    assert _bytes_of(out) == resharded["files"]
    manifest = spark.read.format("delta").load(f"{out}_manifest")
    assert manifest.count() == third.shards  # replaced, not added


def test_same_config_same_bytes_in_another_folder(spark: SparkSession, pool: dict[str, Any], resharded: dict) -> None:
    other = pool["root"] / "out-view"
    cfg = from_dict(
        ReshardConfig,
        {
            "selection": {"view": pool["view"]},
            "pool": {"kind": "webdataset", "path": str(pool["root"] / "wds")},
            "output": {"path": str(other), "samples_per_shard": 4},
        },
    )
    reshard_job.run(spark, cfg)
    assert _bytes_of(other) == resharded["files"]


def test_parquet_shuffled_resized(spark: SparkSession, pool: dict[str, Any]) -> None:
    out = pool["root"] / "out-parquet"
    encode = {"max_side": 24, "format": "jpeg", "quality": 80}
    cfg = _config(pool, out, format="parquet", shuffle=True, seed=7, samples_per_shard=5, encode=encode)
    result = reshard_job.run(spark, cfg)
    files = sorted(out.iterdir())
    assert [p.name for p in files] == [f"{i:05d}.parquet" for i in range(result.shards)]
    table = pq.read_table(files).to_pandas()
    assert set(table["uid"]) == pool["chosen"] and len(table) == len(pool["chosen"])
    assert list(table["uid"]) != sorted(table["uid"])  # seeded shuffle
    for image, ext in zip(table["image"], table["image_ext"], strict=True):
        with Image.open(_stdio.BytesIO(image)) as img:
            assert ext == "jpg" and img.format == "JPEG" and max(img.size) <= 24
    captions = {uid: pool["originals"][uid][1].decode() for uid in table["uid"]}
    assert all(captions[u] == c for u, c in zip(table["uid"], table["caption"], strict=True))
    # Another config into the same folder: refused, unless told to overwrite (then the old shards are gone).
    with pytest.raises(ConfigError, match=r"output\.path.*another config"):
        reshard_job.run(spark, _config(pool, out, samples_per_shard=5))
    assert sorted(out.iterdir()) == files
    second = reshard_job.run(spark, _config(pool, out, samples_per_shard=5, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.tar" for i in range(second.shards)]
    manifest = spark.read.format("delta").load(f"{out}_manifest")
    assert {r["config_id"] for r in manifest.select("config_id").distinct().collect()} == {second.config_id}


def test_missing_uids_are_listed_with_their_reason(spark: SparkSession, pool: dict[str, Any]) -> None:
    """A selection naming a uid no tar holds and a sample without an image: counts add up, reasons listed."""
    spark.sql(
        f"CREATE OR REPLACE TEMPORARY VIEW reshard_with_bad AS SELECT uid, clip_score FROM {pool['view']} "
        "UNION ALL SELECT 'ghost', 0.5D UNION ALL SELECT 'no-image', 0.4D"
    )
    out = pool["root"] / "out-bad"
    data = {
        "selection": {"view": "reshard_with_bad"},
        "pool": {"kind": "webdataset", "path": str(pool["root"] / "wds")},
        "output": {"path": str(out), "samples_per_shard": 4, "columns": ["clip_score"]},
    }
    result = reshard_job.run(spark, from_dict(ReshardConfig, data))
    assert result.selected == len(pool["chosen"]) + 2
    assert result.written == len(pool["chosen"]) and result.missing == 2
    missing = {r["uid"]: r["reason"] for r in spark.read.format("delta").load(f"{out}_missing").collect()}
    assert missing == {"ghost": "not_in_pool", "no-image": "no_image"}


def test_config_errors_name_the_key(spark: SparkSession, pool: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"selection\.name.*no selection 'nope'"):
        data = {
            "selection": {"name": "nope", "scores": {"path": str(pool["scores"])}},
            "pool": {"kind": "webdataset", "path": str(pool["root"] / "wds")},
            "output": {"path": str(pool["root"] / "never")},
        }
        reshard_job.run(spark, from_dict(ReshardConfig, data))


def test_an_image_table_pool(spark: SparkSession, pool: dict[str, Any]) -> None:
    """``pool.kind: table``: image bytes from a Delta table, captions as text; a null image is ``no_image``."""
    ordered = sorted(pool["originals"].items())
    rows = [(uid, caption.decode(), None if i == 0 else png) for i, (uid, (png, caption)) in enumerate(ordered)]
    table = pool["root"] / "image-table"
    spark.createDataFrame(rows, "uid string, caption string, jpg binary").write.format("delta").save(str(table))
    spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW reshard_all AS SELECT uid FROM delta.`{table}`")
    out = pool["root"] / "out-table"
    data = {
        "selection": {"view": "reshard_all"},
        "pool": {"kind": "table", "path": str(table), "image_col": "jpg"},
        "output": {"path": str(out), "samples_per_shard": 4},
    }
    result = reshard_job.run(spark, from_dict(ReshardConfig, data))
    samples = list(wds.WebDataset([str(p) for p in sorted(out.iterdir())], shardshuffle=False))
    got = {json.loads(s["json"])["uid"]: s for s in samples}
    assert set(got) == {uid for uid, _ in ordered[1:]} and result.written == len(ordered) - 1
    assert all(got[u]["png"] == pool["originals"][u][0] and got[u]["txt"] == pool["originals"][u][1] for u in got)
    missing = spark.read.format("delta").load(f"{out}_missing").collect()
    assert [(r["uid"], r["reason"]) for r in missing] == [(ordered[0][0], "no_image")]
