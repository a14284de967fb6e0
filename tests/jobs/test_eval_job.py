"""``clipsift eval`` end to end on a tiny configuration: real images (Fashion-MNIST PNGs in WebDataset tars or a
Delta table), selections as SQL views, open_clip students trained for a few steps, the ``_eval`` Delta table."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.config import ConfigError, EvalConfig, from_dict
from clipsift.jobs.eval import EVAL_DDL, _summary, run
from clipsift.udfs.proxy import METRICS
from tests.support.tiny_clip import FASHION_CLASSES, load_fashion_mnist, png_bytes

N_POOL, N_ZERO_SHOT, HOLDOUT, STEPS, BATCH = 240, 100, 40, 4, 16


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return load_fashion_mnist(split)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _write_tars(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Two shards in img2dataset's layout: ``<key>.png``, ``<key>.txt``, ``<key>.json`` (with the uid)."""
    folder.mkdir()
    for shard, rows in enumerate(np.array_split(np.arange(len(images)), 2)):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in rows:
                key = f"{shard:05d}{i:04d}"
                members = {
                    "png": png_bytes(images[i]),
                    "txt": f"a photo of a {FASHION_CLASSES[labels[i]]}".encode(),
                    "json": json.dumps({"uid": f"u{i:04d}"}).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def world(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pool (tars and the same rows as a Delta table), a labelled zero-shot table and two selection views."""
    root = tmp_path_factory.mktemp("eval")
    images, labels = _fashion("train")
    test_images, test_labels = _fashion("test")
    images, labels = images[:N_POOL], labels[:N_POOL]
    _write_tars(root / "tars", images, labels)
    pool = spark.createDataFrame(
        [(f"u{i:04d}", f"a photo of a {FASHION_CLASSES[labels[i]]}", png_bytes(images[i]), int(labels[i]))
         for i in range(N_POOL)],
        "uid string, caption string, png binary, label int",
    )  # fmt: skip
    pool.write.format("delta").save(str(root / "pool"))
    zero_shot = spark.createDataFrame(
        [(png_bytes(test_images[i]), FASHION_CLASSES[test_labels[i]]) for i in range(N_ZERO_SHOT)],
        "image binary, label string",
    )
    zero_shot.write.format("delta").save(str(root / "zero_shot"))
    spark.read.format("delta").load(str(root / "pool")).createOrReplaceTempView("eval_pool")
    spark.sql("CREATE OR REPLACE TEMP VIEW eval_sel_shoes AS SELECT uid FROM eval_pool WHERE label IN (5, 7, 9)")
    spark.sql("CREATE OR REPLACE TEMP VIEW eval_sel_small AS SELECT uid FROM eval_pool WHERE label = 1 LIMIT 10")
    return {"root": root, "labels": labels}


def _config(root: Path, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scores": {"path": str(root / "scores")},
        "pool": {"kind": "webdataset", "path": str(root / "tars")},
        "selections": [{"name": "shoes"}, {"name": "small", "view": "eval_sel_small"}],
        "view_prefix": "eval_sel_",
        "zero_shot": {
            "path": str(root / "zero_shot"),
            "image_col": "image",
            "label_col": "label",
            "classes": list(FASHION_CLASSES),
            "templates": ["a photo of a {}", "a {}"],
        },
        "retrieval": {"holdout": HOLDOUT},
        "train": {"steps": STEPS, "batch_size": BATCH, "warmup_steps": 1, "seeds": [0], "threads": 2},
    }
    data.update(changes)
    return data


def test_eval_writes_every_arm_with_finite_metrics_and_equal_budget(spark: SparkSession, world: dict[str, Any]) -> None:
    root = world["root"]
    cfg = from_dict(EvalConfig, _config(root))
    result = run(spark, cfg)

    table = spark.read.format("delta").load(str(root / "scores_eval"))
    assert [f"{f.name} {f.dataType.simpleString()}" for f in table.schema.fields] == EVAL_DDL.split(", ")
    rows = {r["arm"]: r.asDict() for r in table.where(f"run_id = '{result.run_id}'").collect()}
    assert set(rows) == {"shoes", "random_shoes", "small", "random_small", "pool"}
    budget = STEPS * BATCH
    assert {r["samples_seen"] for r in rows.values()} == {budget}
    assert {r["steps"] for r in rows.values()} == {STEPS}
    for arm, row in rows.items():
        for metric in (*METRICS, "final_loss", "train_seconds", "wall_seconds"):
            assert math.isfinite(row[metric]), (arm, metric)
        assert 0 <= row["zero_shot_top1"] <= row["zero_shot_top5"] <= 1
        assert row["rows_used"] == min(row["size"], budget)
        assert row["device"] in ("cpu", "cuda") and row["seed"] == 0
        assert row["n_zero_shot"] == N_ZERO_SHOT and row["n_retrieval"] == HOLDOUT
        assert json.loads(row["student_config"])["embed_dim"] == 64
    # The held-out pairs are in no arm; a random arm has its selection's size.
    shoes = int(np.isin(world["labels"], (5, 7, 9)).sum())
    assert rows["pool"]["size"] == N_POOL - HOLDOUT
    assert HOLDOUT // 4 < shoes - rows["shoes"]["size"] < HOLDOUT  # about 30 % of the holdout are shoes
    assert rows["random_shoes"]["size"] == rows["shoes"]["size"]
    assert rows["small"]["size"] == rows["random_small"]["size"] <= 10
    assert rows["small"]["rows_used"] == rows["small"]["size"]  # a small arm is cycled, not cut
    assert len({r["vocab_size"] for r in rows.values()}) == 1  # one vocabulary: the same student for every arm
    text = _summary(result)
    assert "shoes vs random_shoes" in text and "no spread (one seed)" in text
    print(text)


def test_eval_reads_an_image_table_pool(spark: SparkSession, world: dict[str, Any]) -> None:
    root = world["root"]
    pool = {"kind": "table", "path": str(root / "pool"), "image_col": "png"}
    cfg = from_dict(
        EvalConfig,
        _config(root, pool=pool, selections=[{"name": "shoes"}], output={"path": str(root / "table_eval")}),
    )
    result = run(spark, replace_steps(cfg, 2))
    rows = spark.read.format("delta").load(str(root / "table_eval")).collect()
    assert sorted(r["arm"] for r in rows) == ["pool", "random_shoes", "shoes"]
    assert {r["samples_seen"] for r in rows} == {2 * BATCH}
    assert {r["run_id"] for r in rows} == {result.run_id}


def test_arms_of_the_same_rows_are_trained_once(
    spark: SparkSession, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same view twice: its second selection arm and second random arm reuse the first ones' students; at a
    budget below the random arm's size the pool arm trains on the same rows as the random arm, and reuses it."""
    from clipsift.jobs import eval as eval_job

    calls: list[int] = []
    train = eval_job.train_student

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return train(*args, **kwargs)

    monkeypatch.setattr(eval_job, "train_student", counted)
    root = world["root"]
    selections = [{"name": "shoes"}, {"name": "shoes_again", "view": "eval_sel_shoes"}]
    cfg = from_dict(EvalConfig, _config(root, selections=selections, output={"path": str(root / "same_eval")}))
    result = run(spark, replace_steps(cfg, 2))  # a budget of 32 rows, below the shoes' size (about 60)
    rows = {r["arm"]: r for r in result.rows}
    assert set(rows) == {"shoes", "random_shoes", "shoes_again", "random_shoes_again", "pool"}
    assert len(calls) == 2  # shoes and random_shoes; the others are the same rows
    for arm, same in (("shoes_again", "shoes"), ("random_shoes_again", "random_shoes"), ("pool", "random_shoes")):
        assert [rows[arm][m] for m in METRICS] == [rows[same][m] for m in METRICS], arm
        assert rows[arm]["samples_seen"] == rows[same]["samples_seen"] == 2 * BATCH
    assert rows["shoes_again"]["view"] == "eval_sel_shoes" and rows["shoes_again"]["kind"] == "selection"
    assert rows["pool"]["kind"] == "pool" and rows["pool"]["size"] == N_POOL - HOLDOUT
    assert rows["random_shoes_again"]["size"] == rows["shoes_again"]["size"] == rows["shoes"]["size"]


def test_a_missing_view_is_one_config_error(spark: SparkSession, world: dict[str, Any]) -> None:
    cfg = from_dict(EvalConfig, _config(world["root"], selections=[{"name": "nothing_here"}]))
    with pytest.raises(ConfigError, match=r"selections\[0\].*eval_sel_nothing_here.*run clipsift select first"):
        run(spark, cfg)


def replace_steps(cfg: EvalConfig, steps: int) -> EvalConfig:
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, steps=steps))
