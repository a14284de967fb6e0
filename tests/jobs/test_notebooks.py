"""The notebooks 01-03 run top to bottom on the local session (tests.support.notebooks: widgets, display, %sql),
with the shipped example configs pointed at a synthetic pool: the same cells a Databricks user runs, including
the %sql cells that read the example's table and view names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.demo.synth import SynthSpec, generate_pool, generate_target
from tests.support.notebooks import run_notebook

ROOT = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(n_rows=1200, n_shards=2, dim=32, n_concepts=6, seed=7)


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("notebooks")
    generate_pool(root / "pool", SPEC)
    generate_target(root / "target.npy", n_rows=200, spec=SPEC)
    select = (ROOT / "examples" / "select.yaml").read_text()
    select = select.replace("/Volumes/main/clipsift/subsets/", f"{root}/subsets/")
    assert "/Volumes/" not in select.split("spark:")[0]
    (root / "select.yaml").write_text(select)
    overrides = [
        f"input.path={root / 'pool'}", "input.arch=b32", f"input.dim={SPEC.dim}",
        f"normsim.targets=[{{name: downstream, path: {root / 'target.npy'}}}]", "normsim.staging_dir=null",
        "negclip.batch_size=256", "negclip.rounds=2",
    ]  # fmt: skip
    return {"score_overrides": "; ".join(overrides), "select": str(root / "select.yaml")}


def test_notebooks_01_02_03_run_top_to_bottom(spark: SparkSession, configs: dict[str, str]) -> None:
    score = run_notebook(
        ROOT / "notebooks" / "01_score.py", spark,
        {"config": str(ROOT / "examples" / "score.yaml"), "overrides": configs["score_overrides"]},
    )  # fmt: skip
    assert score and all(shown for shown in score)
    assert spark.table("clipsift.scores").count() == SPEC.n_rows

    selected = run_notebook(ROOT / "notebooks" / "02_select.py", spark, {"config": configs["select"], "overrides": ""})
    names = {row["name"] for row in selected[0]}  # the selections table, the first %sql cell
    assert names == {"clipscore30", "ncl30", "ncl30_nsinf20", "ranks20", "cs30_and_ncl30"}
    assert selected[1][0]["ncl30"] == int(0.3 * spark.table("clipsift.scores").where("status = 'ok'").count())

    explored = run_notebook(
        ROOT / "notebooks" / "03_explore_scores.py", spark, {"config": configs["select"], "run_id": "", "metadata": ""}
    )
    captions = [rows for rows in explored if rows and "text" in rows[0].asDict()]
    assert captions and all(r["text"] for r in captions[0])


def test_notebook_04_clipselect_runs_top_to_bottom(spark: SparkSession, tmp_path: Path) -> None:
    """The CLIP-powered selection notebook with the example configs, on a small labelled embedding table and the
    tiny open_clip model (random weights: this checks the notebook runs, not the scores)."""
    import numpy as np

    from tests.support.models import TINY_NAME, write_tiny_config

    rng = np.random.default_rng(3)
    n, classes = 240, ["tench", "goldfish", "shark"]
    emb = rng.normal(size=(n, 32)).astype(np.float32)
    rows = [(f"u{i:04d}", emb[i].tolist(), int(rng.integers(0, len(classes)))) for i in range(n)]
    spark.sql("CREATE SCHEMA IF NOT EXISTS clipsift")
    spark.createDataFrame(rows, "uid string, image_emb array<float>, label bigint").write.mode("overwrite").format(
        "delta"
    ).saveAsTable("clipsift.imagenet_embeddings")
    overrides = [
        "input.model=null", f"classes=[{', '.join(classes)}]", f"model.name={TINY_NAME}", "model.pretrained=null",
        f"model.config_json={write_tiny_config(tmp_path / 'model')}", "model.threads=1",
        f"adapters.save_path={tmp_path / 'adapters'}", "adapters.epochs=2", "adapters.batch_size=64", "k=5",
    ]  # fmt: skip
    shown = run_notebook(
        ROOT / "notebooks" / "04_clipselect.py", spark,
        {
            "config": str(ROOT / "examples" / "clipselect.yaml"),
            "select_config": str(ROOT / "examples" / "select_clipselect.yaml"),
            "overrides": "; ".join(overrides),
        },
    )  # fmt: skip
    by_status = {row["status"]: row["count"] for row in shown[0]}
    assert by_status == {"ok": n}
    assert spark.table("clipsift.cs_keep50").count() == n // 2
    assert spark.table("clipsift.imagenet_keep50").count() == n // 2
