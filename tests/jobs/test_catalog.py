"""A local run keeps its catalog: schemas, tables by name and views made by one ``clipsift`` process are there
for the next one (``clipsift sql``), and ``clipsift select --recreate`` makes the recorded views again, a view
after the views it reads. Each step is its own process, as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from clipsift.jobs.demo.synth import SynthSpec, generate_pool

SPARK = {
    "spark.master": "local[2]", "spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2", "spark.default.parallelism": "2",
}  # fmt: skip


def _clipsift(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clipsift", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _counts(out: str) -> list[int]:
    """The numbers of the ``SELECT COUNT(*) AS n`` tables that ``clipsift sql`` printed, in order."""
    return [int(n) for n in re.findall(r"^\|(\d+)\s*\|$", out, re.M)]


def test_views_outlive_the_run_and_are_recreated_in_order(tmp_path: Path) -> None:
    spec = SynthSpec(n_rows=600, n_shards=2, dim=16, n_concepts=4, seed=2)
    generate_pool(tmp_path / "pool", spec)
    catalog = tmp_path / "catalog"
    spark = {"conf": SPARK, "local_catalog": str(catalog)}
    score = {
        "input": {"kind": "datacomp", "path": str(tmp_path / "pool"), "arch": "b32", "dim": spec.dim},
        "output": {"table": "curation.scores"},  # a schema that does not exist yet
        "negclip": {"rounds": 2, "batch_size": 64},
        "spark": spark,
    }
    select = {
        "scores": {"table": "curation.scores"},
        "view_schema": "curation",
        "selections": [
            {"name": "cs30", "rule": "top_fraction", "column": "clip_score", "fraction": 0.3},
            {"name": "ncl30", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3},
            {"name": "both", "rule": "intersect", "of": ["ncl30", "cs30"]},
        ],
        "spark": spark,
    }
    (tmp_path / "score.yaml").write_text(yaml.safe_dump(score))
    (tmp_path / "select.yaml").write_text(yaml.safe_dump(select))

    assert f"{spec.n_rows} rows in" in _clipsift("score", "--config", "score.yaml", cwd=tmp_path)
    selected = _clipsift("select", "--config", "select.yaml", cwd=tmp_path)
    both = int(re.search(r"`both`: (\d+) of", selected).group(1))  # type: ignore[union-attr]
    assert 0 < both <= int(0.3 * spec.n_rows)

    query = "SELECT COUNT(*) AS n FROM curation.both"
    two = f"{query}; SELECT COUNT(*) AS n FROM curation.scores"
    assert _counts(_clipsift("sql", "--catalog", str(catalog), two, cwd=tmp_path)) == [both, spec.n_rows]

    drop = "DROP VIEW curation.both; DROP VIEW curation.ncl30; DROP VIEW curation.cs30; SHOW VIEWS IN curation"
    assert "both" not in _clipsift("sql", "--catalog", str(catalog), drop, cwd=tmp_path)
    recreated = _clipsift("select", "--config", "select.yaml", "--recreate", cwd=tmp_path).splitlines()
    order = [line.rsplit(".", 1)[-1].strip("`") for line in recreated if "recreated" in line]
    assert sorted(order) == ["both", "cs30", "ncl30"] and order[-1] == "both"
    assert _counts(_clipsift("sql", "--catalog", str(catalog), query, cwd=tmp_path)) == [both]
