"""clipsift commands at once on the same tables, each in its own process and Spark: score runs into one new table
(two run ids, one of them twice), two selects. All succeed with the rows of an unbroken run, or one fails with one
line; never a corrupted, duplicated or half-replaced partition, and no selections row lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.demo.synth import SynthSpec, generate_pool
from tests.faults.conftest import SPARK, clipsift, finish

#: The runs this module starts at once, each in its own process (README's fault figures).
AT_ONCE = ("score: three runs into one new table (run ids a, b, a)", "select: two runs on one score table")
SPEC = SynthSpec(n_rows=600, n_shards=2, dim=16, n_concepts=6, seed=13)


def _score_config(folder: Path, pool: Path, output: Path, run_id: str) -> Path:
    path = folder / f"score_{run_id}_{len(list(folder.glob('score_*')))}.yaml"
    path.write_text(json.dumps({
        "input": {"kind": "datacomp", "path": str(pool), "arch": "b32", "dim": SPEC.dim},
        "output": {"path": str(output)},
        "run_id": run_id,
        "negclip": {"rounds": 1, "batch_size": 64, "seed": 1},
        "spark": SPARK,
    }))  # fmt: skip
    return path


def _rows(spark: SparkSession, output: Path) -> pd.DataFrame:
    return spark.read.format("delta").load(str(output)).select("uid", "run_id", "status", "negclip_loss").toPandas()


@pytest.fixture(scope="module")
def raced(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three score runs started at once into a table that does not exist yet: run ids a, b, and a again."""
    folder = tmp_path_factory.mktemp("raced")
    pool = folder / "pool"
    generate_pool(pool, SPEC)
    output = folder / "scores"
    started = [clipsift(["score", "--config", str(_score_config(folder, pool, output, r))], folder) for r in "aba"]
    return {"folder": folder, "output": output, "done": [finish(p) for p in started], "rows": _rows(spark, output)}


def test_runs_raced_into_one_new_table_all_land_once(spark: SparkSession, raced: dict[str, Any]) -> None:
    for code, _out, err in raced["done"]:
        assert code == 0, err[-3000:]
    rows = raced["rows"]
    assert sorted(rows["run_id"].unique()) == ["a", "b"]
    for _run, part in rows.groupby("run_id"):  # run a, written twice at once, holds one copy of each row
        assert len(part) == SPEC.n_rows and not part["uid"].duplicated().any()
        assert (part["status"] == "ok").all()
    a = rows[rows["run_id"] == "a"].set_index("uid")["negclip_loss"].sort_index()
    b = rows[rows["run_id"] == "b"].set_index("uid")["negclip_loss"].sort_index()
    pd.testing.assert_series_equal(a, b, check_names=False, check_exact=True)  # same config: bit-identical scores
    runs = spark.read.format("delta").load(str(raced["output"]) + "_runs").toPandas()
    assert sorted(runs["run_id"]) == ["a", "b"]  # one runs row per run, none orphaned


def test_two_selects_at_once_both_land(spark: SparkSession, raced: dict[str, Any]) -> None:
    folder = raced["folder"]
    configs = []
    for k, (column, fraction) in enumerate((("negclip_loss", 0.3), ("clip_score", 0.4))):
        path = folder / f"select_{k}.yaml"
        path.write_text(json.dumps({
            "scores": {"path": str(raced["output"])}, "run_id": "a", "view_prefix": f"p{k}_",
            "selections": [{"name": f"sel{k}", "rule": "top_fraction", "column": column, "fraction": fraction,
                            "materialize": {"path": str(folder / f"sel{k}")}}],
            "spark": SPARK,
        }))  # fmt: skip
        configs.append(path)
    done = [finish(p) for p in [clipsift(["select", "--config", str(c)], folder) for c in configs]]
    for code, _out, err in done:
        assert code == 0, err[-3000:]
    table = spark.read.format("delta").load(str(raced["output"]) + "_selections").toPandas()
    assert sorted(table["name"]) == ["sel0", "sel1"] and set(table["run_id"]) == {"a"}
    assert dict(zip(table["name"], table["rows"], strict=True)) == {"sel0": 180, "sel1": 240}
    for k, n in ((0, 180), (1, 240)):
        assert spark.read.format("delta").load(str(folder / f"sel{k}")).count() == n
