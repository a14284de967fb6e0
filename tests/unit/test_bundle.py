"""The Databricks Asset Bundle, checked offline: every job resource parses with Databricks' own typed models
(``databricks-bundles``, strict about fields), every ``${var.x}`` is declared, and each task runs a clipsift
command through the console script the wheel installs."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from databricks.bundles.jobs import Job

from clipsift.jobs.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def _bundle() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    main = yaml.safe_load((ROOT / "databricks.yml").read_text())
    included = [yaml.safe_load(p.read_text()) for pattern in main["include"] for p in sorted(ROOT.glob(pattern))]
    assert included, "databricks.yml includes no resource file"
    return main, included


def test_jobs_parse_with_databricks_models_and_run_clipsift_commands() -> None:
    _, included = _bundle()
    scripts = {e.name for e in metadata.distribution("clipsift").entry_points if e.group == "console_scripts"}
    jobs = {name: job for doc in included for name, job in doc["resources"]["jobs"].items()}
    assert jobs
    for name, job in jobs.items():
        Job.from_dict(job)  # raises on a field Databricks' job model does not have
        clusters = {c["job_cluster_key"] for c in job["job_clusters"]}
        keys = [t["task_key"] for t in job["tasks"]]
        for task in job["tasks"]:
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == "clipsift" and wheel["entry_point"] in scripts, name
            assert wheel["parameters"][0] in COMMANDS and "--config" in wheel["parameters"]
            assert task["job_cluster_key"] in clusters
            assert all(d["task_key"] in keys for d in task.get("depends_on", []))
            assert any("whl" in lib for lib in task["libraries"])
    steps = [t["python_wheel_task"]["parameters"][0] for t in jobs["clipsift"]["tasks"]]
    assert steps == ["embed", "score", "select"]


def test_every_variable_used_is_declared() -> None:
    main, _ = _bundle()
    text = (ROOT / "databricks.yml").read_text() + "".join(
        p.read_text() for pattern in main["include"] for p in ROOT.glob(pattern)
    )
    used = set(re.findall(r"\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert used and used <= set(main["variables"]), used - set(main["variables"])
    assert main["artifacts"]["clipsift_wheel"]["type"] == "whl"
