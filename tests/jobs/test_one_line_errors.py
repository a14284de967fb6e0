"""A bad input path, column or file named in a config stops each job's ``main`` with exit status 2 and one line on
stderr naming the config key, not a traceback (README "When something is wrong"). On the tests' Spark session: the
jobs reach these checks after ``get_spark``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs import embed as embed_job
from clipsift.jobs import score as score_job
from clipsift.jobs import select as select_job
from tests.support.models import TINY_NAME, write_tiny_config

Main = Callable[[Sequence[str] | None], int]


def _one_line(main: Main, data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main`` on ``data`` as a config file: exit status 2 and exactly one line on stderr, returned."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(data))
    capsys.readouterr()
    code = main(["--config", str(config)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Parquet table of 8 rows: uid, 4-d image and caption embeddings."""
    rng = np.random.default_rng(0)
    rows = [{"uid": f"u{i}", "img": rng.normal(size=4).tolist(), "txt": rng.normal(size=4).tolist()} for i in range(8)]
    path = tmp_path_factory.mktemp("one-line") / "emb.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _score(tmp_path: Path, input_: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {
        "input": input_,
        "output": {"path": str(tmp_path / "scores")},
        "negclip": {"grouping": "pool"},
        "spark": {"local_catalog": None},
        **sections,
    }


def _table(path: Path | str, **columns: str) -> dict[str, Any]:
    return {"kind": "table", "path": str(path), "format": "parquet", "image_col": "img", "text_col": "txt", **columns}


# --------------------------------------------------------------------------------------------------
# clipsift score: input paths and columns


def test_score_missing_datacomp_folder(spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _score(tmp_path, {"kind": "datacomp", "path": str(tmp_path / "no-shards")})
    line = _one_line(score_job.main, data, tmp_path, capsys)
    assert line.startswith("clipsift score: ") and "input.path" in line and "no-shards" in line, line


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_score_missing_table_path(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    data = _score(tmp_path, {**_table(tmp_path / "no-table"), "format": fmt})
    line = _one_line(score_job.main, data, tmp_path, capsys)
    assert "config key 'input.path'" in line and "no-table' does not exist" in line, line


def test_score_folder_that_is_not_a_delta_table(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], embeddings: Path
) -> None:
    line = _one_line(score_job.main, _score(tmp_path, {**_table(embeddings), "format": "delta"}), tmp_path, capsys)
    assert "config key 'input.path'" in line and "not a Delta table" in line and "input.format: parquet" in line


def test_score_missing_table_name(spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _score(tmp_path, {"kind": "table", "table": "default.clipsift_no_such_table"})
    line = _one_line(score_job.main, data, tmp_path, capsys)
    assert "config key 'input.table'" in line and "clipsift_no_such_table' does not exist" in line, line


@pytest.mark.parametrize("key", ["uid_col", "image_col", "text_col", "shard_col"])
def test_score_missing_column(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], embeddings: Path, key: str
) -> None:
    line = _one_line(score_job.main, _score(tmp_path, _table(embeddings, **{key: "nope"})), tmp_path, capsys)
    assert f"config key 'input.{key}'" in line and "no column 'nope'" in line and "uid, img, txt" in line, line


def test_score_table_without_image_embeddings(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.parquet"
    schema = pa.schema([("uid", pa.string()), ("img", pa.list_(pa.float32())), ("txt", pa.list_(pa.float32()))])
    pq.write_table(pa.Table.from_pylist([{"uid": "a", "img": None, "txt": [1.0]}], schema=schema), path)
    line = _one_line(score_job.main, _score(tmp_path, _table(path)), tmp_path, capsys)
    assert "config key 'input.image_col'" in line and "input.dim" in line, line


# --------------------------------------------------------------------------------------------------
# clipsift score: NormSim targets and clipselect adapters refused as pickles


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """A ``.pt`` whose pickle would create a marker file when loaded (``__reduce__``), and that marker."""
    pytest.importorskip("torch")
    from tests.support.pickles import write_torch_payload

    marker = tmp_path / "payload-ran"
    return write_torch_payload(tmp_path / "target.pt", marker), marker


def test_score_normsim_target_refused_as_a_pickle(
    spark: SparkSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    embeddings: Path,
    payload: tuple[Path, Path],
) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.eye(2, 4, dtype=np.float32))
    targets = [{"name": "good", "path": str(good)}, {"name": "bad", "path": str(payload[0])}]
    data = _score(tmp_path, _table(embeddings), normsim={"targets": targets})
    line = _one_line(score_job.main, data, tmp_path, capsys)
    assert "config key 'normsim.targets[1].path'" in line and "target.pt" in line, line
    assert "was refused" in line and "weights_only=True" in line and not payload[1].exists()


def test_score_normsim_target_missing_or_of_another_dimension(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], embeddings: Path
) -> None:
    missing = {"targets": [{"name": "gone", "path": str(tmp_path / "gone.npy")}]}
    line = _one_line(score_job.main, _score(tmp_path, _table(embeddings), normsim=missing), tmp_path, capsys)
    assert "config key 'normsim.targets[0].path'" in line and "gone.npy' does not exist" in line, line
    np.save(tmp_path / "wide.npy", np.eye(2, 8, dtype=np.float32))
    wide = {"targets": [{"name": "wide", "path": str(tmp_path / "wide.npy")}]}
    line = _one_line(score_job.main, _score(tmp_path, _table(embeddings), normsim=wide), tmp_path, capsys)
    assert "config key 'normsim.targets[0].path'" in line and "dimension 8, the pool 4" in line, line


def test_score_clipselect_adapters_refused_as_a_pickle(
    spark: SparkSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    embeddings: Path,
    payload: tuple[Path, Path],
) -> None:
    folder = tmp_path / "adapters"
    folder.mkdir()
    payload[0].rename(folder / "adapters.pt")
    (folder / "provenance.json").write_text(json.dumps({"dim": 4}))
    data = _score(tmp_path, _table(embeddings), clipselect={"enabled": True, "adapters": str(folder)})
    line = _one_line(score_job.main, data, tmp_path, capsys)
    assert "config key 'clipselect.adapters'" in line and "adapters.pt" in line, line
    assert "was refused" in line and "weights_only=True" in line and not payload[1].exists()


# --------------------------------------------------------------------------------------------------
# clipsift embed: input paths and columns, before the model is built


def _embed(tmp_path: Path, input_: dict[str, Any]) -> dict[str, Any]:
    model = {"name": TINY_NAME, "config_json": str(write_tiny_config(tmp_path / "model")), "device": "cpu"}
    output = {"path": str(tmp_path / "emb")}
    return {"input": input_, "model": model, "output": output, "spark": {"local_catalog": None}}


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model must not be built: the input is checked first."""

    def refuse(*_args: Any) -> Any:
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr(embed_job, "identify", refuse)


def test_embed_missing_inputs(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    wds = _embed(tmp_path, {"kind": "webdataset", "path": str(tmp_path / "no-shards")})
    line = _one_line(embed_job.main, wds, tmp_path, capsys)
    assert line.startswith("clipsift embed: ") and "input.path" in line and "no-shards" in line, line
    table = {"kind": "table", "path": str(tmp_path / "no-pairs"), "format": "parquet", "image_path_col": "file"}
    line = _one_line(embed_job.main, _embed(tmp_path, table), tmp_path, capsys)
    assert "config key 'input.path'" in line and "no-pairs' does not exist" in line, line


@pytest.mark.parametrize("key", ["uid_col", "caption_col", "image_path_col"])
def test_embed_missing_column(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None, key: str
) -> None:
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"uid": "a", "caption": "x", "file": "/a.png"}]), path)
    table = {"kind": "table", "path": str(path), "format": "parquet", "image_path_col": "file", key: "nope"}
    line = _one_line(embed_job.main, _embed(tmp_path, table), tmp_path, capsys)
    assert f"config key 'input.{key}'" in line and "no column 'nope'" in line, line


# --------------------------------------------------------------------------------------------------
# clipsift select: a run id without rows


def test_select_run_id_without_rows(spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = tmp_path / "scores"
    rows = [("a", "ok", 0.5, "r1"), ("b", "ok", 0.7, "r1")]
    table = spark.createDataFrame(rows, "uid string, status string, clip_score double, run_id string")
    table.write.format("delta").save(str(scores))
    selections = [{"name": "top", "rule": "top_fraction", "column": "clip_score", "fraction": 0.5}]
    data = {"scores": {"path": str(scores)}, "run_id": "no-such-run", "selections": selections}
    line = _one_line(select_job.main, {**data, "spark": {"local_catalog": None}}, tmp_path, capsys)
    assert line.startswith("clipsift select: ") and "config key 'run_id'" in line and "no-such-run" in line, line
