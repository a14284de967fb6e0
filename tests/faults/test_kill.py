"""kill -9 of the driver at chosen points (``CLIPSIFT_FAILPOINT``), then the same command again: every input row
present exactly once, scores bit-identical to an unbroken run, and the runs and selections tables consistent (no
runs row for a partial write; a select never guesses past a run that did not record itself)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.config import ConfigError, ScoreConfig, SelectConfig, from_dict
from clipsift.jobs.demo.synth import SynthSpec, generate_pool
from clipsift.jobs.score import run as score
from clipsift.jobs.select import run as select
from clipsift.jobs.session import FAILPOINT_ENV
from tests.faults.conftest import SPARK, clipsift, finish

SPEC = SynthSpec(n_rows=500, n_shards=2, dim=16, n_concepts=6, seed=17)
KILLED = -signal.SIGKILL
#: The failpoints of ``jobs/score.py`` and ``jobs/select.py`` this module kills the driver at (README's fault figures).
SCORE_POINTS = ("score:before-write", "score:committed")
SELECT_POINT = "select:view-created"
KILL_POINTS = (*SCORE_POINTS, SELECT_POINT)


def _score_data(pool: Path, output: Path) -> dict[str, Any]:
    return {
        "input": {"kind": "datacomp", "path": str(pool), "arch": "b32", "dim": SPEC.dim},
        "output": {"path": str(output)},
        "negclip": {"rounds": 2, "batch_size": 64, "seed": 2},
        "spark": SPARK,
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def _start(command: str, config: Path, cwd: Path, failpoint: str | None) -> Any:
    if failpoint is not None:
        os.environ[FAILPOINT_ENV] = failpoint
    try:
        return clipsift([command, "--config", str(config)], cwd)
    finally:
        os.environ.pop(FAILPOINT_ENV, None)


def _scores(spark: SparkSession, output: Path) -> pd.DataFrame:
    df = spark.read.format("delta").load(str(output)).drop("lineage", "scored_at").toPandas()  # scored_at: a clock
    return df.sort_values(["run_id", "uid"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def killed(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An unbroken score run (in this process), and per kill point a run killed there then run again."""
    folder = tmp_path_factory.mktemp("killed")
    pool = folder / "pool"
    generate_pool(pool, SPEC)
    reference = score(spark, from_dict(ScoreConfig, _score_data(pool, folder / "reference")))
    points = SCORE_POINTS
    configs = {p: _write(folder / f"{p.replace(':', '_')}.yaml", _score_data(pool, folder / p.replace(":", "_")))
               for p in points}  # fmt: skip
    started = {p: _start("score", configs[p], folder, p) for p in points}  # at once: two processes, two cores
    kills = {p: finish(proc) for p, proc in started.items()}
    between = {}
    for p in points:
        output = folder / p.replace(":", "_")
        rows = spark.read.format("delta").load(str(output)).count() if (output / "_delta_log").is_dir() else 0
        runs = folder / f"{p.replace(':', '_')}_runs"
        between[p] = {"rows": rows, "runs": (runs / "_delta_log").is_dir()}
        if p == "score:committed":
            with pytest.raises(ConfigError) as err:  # the run is in the table, not in its runs table
                select(spark, from_dict(SelectConfig, {
                    "scores": {"path": str(output)}, "view_prefix": "k_",
                    "selections": [{"name": "x", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.5}],
                }))  # fmt: skip
            between[p]["select"] = err.value
    started = {p: _start("score", configs[p], folder, None) for p in points}
    reruns = {p: finish(proc) for p, proc in started.items()}
    return {"folder": folder, "reference": reference, "kills": kills, "between": between, "reruns": reruns,
            "points": points}  # fmt: skip


def test_each_kill_point_was_reached(killed: dict[str, Any]) -> None:
    for point, (code, _out, err) in killed["kills"].items():
        assert code == KILLED, (point, err[-2000:])


def test_the_state_between_kill_and_rerun_is_consistent(killed: dict[str, Any]) -> None:
    before, committed = killed["between"]["score:before-write"], killed["between"]["score:committed"]
    assert before == {"rows": 0, "runs": False}  # nothing written, no runs row
    assert committed["rows"] == SPEC.n_rows and committed["runs"] is False  # the commit, whole; no runs row yet
    err = committed["select"]
    assert err.key == "run_id" and killed["reference"].run_id in str(err)


def test_a_rerun_finishes_with_the_unbroken_runs_rows(spark: SparkSession, killed: dict[str, Any]) -> None:
    folder, reference = killed["folder"], killed["reference"]
    expected = _scores(spark, folder / "reference")
    for point, (code, _out, err) in killed["reruns"].items():
        assert code == 0, (point, err[-3000:])
        output = folder / point.replace(":", "_")
        got = _scores(spark, output)
        assert len(got) == SPEC.n_rows and not got.duplicated(["uid", "run_id"]).any()
        pd.testing.assert_frame_equal(got, expected, check_exact=True)  # bit-identical, the same run id
        runs = spark.read.format("delta").load(f"{output}_runs").toPandas()
        assert list(runs["run_id"]) == [reference.run_id]


def test_a_select_killed_after_its_first_view_reruns_whole(spark: SparkSession, killed: dict[str, Any]) -> None:
    folder = killed["folder"]
    data = {
        "scores": {"path": str(folder / "reference")}, "view_prefix": "kill_", "spark": SPARK,
        "selections": [
            {"name": "a", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3,
             "materialize": {"path": str(folder / "sel_a")}},
            {"name": "b", "rule": "top_fraction", "column": "clip_score", "fraction": 0.2},
        ],
    }  # fmt: skip
    config = _write(folder / "select.yaml", data)
    code, _out, err = finish(_start("select", config, folder, SELECT_POINT))
    assert code == KILLED, err[-2000:]
    assert not (folder / "reference_selections" / "_delta_log").is_dir()  # nothing recorded for a partial select
    code, _out, err = finish(_start("select", config, folder, None))
    assert code == 0, err[-3000:]
    table = spark.read.format("delta").load(str(folder / "reference_selections")).toPandas()
    assert sorted(table["name"]) == ["a", "b"] and dict(zip(table["name"], table["rows"], strict=True)) == {
        "a": 150, "b": 100,
    }  # fmt: skip
    assert spark.read.format("delta").load(str(folder / "sel_a")).count() == 150
