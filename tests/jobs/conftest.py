"""Fixtures of the jobs tier: one small synthetic DataComp pool, a target, and one scored run shared by
the score-job and select-job tests (the score job runs once per session for them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs.config import ScoreConfig, from_dict
from clipsift.jobs.demo.synth import SynthSpec, generate_pool, generate_target
from clipsift.jobs.score import ScoreResult, run
from clipsift.udfs.kernels import l2_normalize

SPEC = SynthSpec(n_rows=800, n_shards=2, dim=32, n_concepts=8, seed=3)
NEGCLIP = {"rounds": 2, "batch_size": 64, "seed": 5, "tau": 0.01}
NORMSIM2D = {"enabled": True, "candidate_fraction": 0.5, "final_fraction": 0.2, "iterations": 2}
TARGET = "tgt"


@dataclass(frozen=True)
class Shard:
    """One shard read back with numpy: uids in file order and L2-normalised embeddings."""

    uids: list[str]
    img: np.ndarray
    txt: np.ndarray


@dataclass(frozen=True)
class Scored:
    """The shared scored run: its config (as data and parsed), result, and rows as pandas."""

    data: dict[str, Any]
    cfg: ScoreConfig
    result: ScoreResult
    frame: pd.DataFrame


def read_run(spark: SparkSession, output: str, run_id: str) -> pd.DataFrame:
    """Rows of one run of a score table (small test tables only), without the lineage struct."""
    df = spark.read.format("delta").load(output).where(F.col("run_id") == run_id).drop("lineage")
    return df.toPandas()


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    generate_pool(out, SPEC)
    return out


@pytest.fixture(scope="session")
def pool_shards(pool_dir: Path) -> dict[str, Shard]:
    """Every shard of ``pool_dir`` read back from its parquet + npz, embeddings L2-normalised."""
    shards = {}
    for parquet in sorted(pool_dir.glob("*.parquet")):
        uids = [str(u) for u in pq.read_table(parquet, columns=["uid"]).column("uid").to_pylist()]
        with np.load(parquet.with_suffix(".npz")) as npz:
            img, _ = l2_normalize(npz["b32_img"])
            txt, _ = l2_normalize(npz["b32_txt"])
        shards[parquet.stem] = Shard(uids, img, txt)
    return shards


@pytest.fixture(scope="session")
def target_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Target image embeddings with rows of norm 0.2..5 (the job must normalise them)."""
    path = generate_target(tmp_path_factory.mktemp("target") / "target.npy", n_rows=40, spec=SPEC)
    mat = np.load(path)
    scale = np.random.default_rng(9).uniform(0.2, 5.0, size=(mat.shape[0], 1)).astype(np.float32)
    np.save(path, mat * scale)
    return path


@pytest.fixture(scope="session")
def score_data(pool_dir: Path, target_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {
        "input": {"kind": "datacomp", "path": str(pool_dir), "arch": "b32", "dim": SPEC.dim},
        "output": {"path": str(tmp_path_factory.mktemp("scores") / "scores")},
        "negclip": dict(NEGCLIP),
        "normsim": {"targets": [{"name": TARGET, "path": str(target_path)}]},
        "normsim2_dynamic": dict(NORMSIM2D),
    }


@pytest.fixture(scope="session")
def scored(spark: SparkSession, score_data: dict[str, Any]) -> Scored:
    cfg = from_dict(ScoreConfig, score_data)
    result = run(spark, cfg)
    frame = read_run(spark, score_data["output"]["path"], result.run_id)
    return Scored(score_data, cfg, result, frame)
