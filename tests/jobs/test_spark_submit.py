"""The README's spark-submit command, run as written (master, zip and config path swapped for the test's) on
``local-cluster``: separate executor JVMs and Python workers, with a Python that has clipsift's dependencies
but not clipsift itself, so that the driver and the executors import only the zip shipped with ``--py-files``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from clipsift.jobs.demo.synth import SynthSpec, generate_pool
from tests.support.package import ROOT, build_wheel


def readme_spark_submit() -> list[str]:
    """The command in the README's block marked ``<!-- spark-submit ... -->``, as argv."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- spark-submit[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert block is not None, "README.md lost its spark-submit block"
    return shlex.split(block.group(1).replace("\\\n", " "))


def _isolated_python(folder: Path) -> Path:
    """A venv whose site-packages reach this venv's packages through a .pth line: the editable clipsift install
    (a finder installed by its own .pth file) is not reached, since .pth files of added folders are not run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})["purelib"])
    (purelib / "clipsift-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python"


def test_readme_spark_submit_runs_on_a_local_cluster(spark: SparkSession, tmp_path: Path) -> None:
    python = _isolated_python(tmp_path / "venv")
    probe = subprocess.run(
        [str(python), "-c", "import numpy, pyarrow, pyspark, yaml\nimport clipsift"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert probe.returncode == 1 and "No module named 'clipsift'" in probe.stderr, probe.stderr

    zip_path = tmp_path / "clipsift.zip"
    shutil.copy(build_wheel(tmp_path / "build"), zip_path)
    spec = SynthSpec(n_rows=1200, n_shards=3, dim=32, n_concepts=6, seed=4)
    generate_pool(tmp_path / "pool", spec)
    config = tmp_path / "score.yaml"
    output = tmp_path / "scores"
    config.write_text(yaml.safe_dump({
        "input": {"kind": "datacomp", "path": str(tmp_path / "pool"), "arch": "b32", "dim": spec.dim},
        "output": {"path": str(output)},
        "negclip": {"rounds": 2, "batch_size": 128},
        "spark": {"conf": {"spark.sql.shuffle.partitions": "4", "spark.executor.memory": "768m"}},
    }))  # fmt: skip

    argv = readme_spark_submit()
    assert argv[0] == "spark-submit" and argv[argv.index("--master") + 1] == "local[2]"
    argv[0] = str(Path(sys.executable).parent / "spark-submit")
    argv[argv.index("--master") + 1] = "local-cluster[2,1,1024]"
    argv[argv.index("--py-files") + 1] = str(zip_path)
    argv[argv.index("--config") + 1] = str(config)
    env = {**os.environ, "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python)}
    env.pop("CLIPSIFT_VERBOSE", None)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{spec.n_rows} rows in, {spec.n_rows} out" in done.stdout, done.stdout

    written = spark.read.format("delta").load(str(output))
    assert written.count() == spec.n_rows
    assert written.where(F.col("status") == "ok").where(F.col("negclip_loss").isNull()).count() == 0
    # Quiet by default: Spark's INFO log stops once the session is up (a few start-up lines before it).
    info = [line for line in done.stderr.splitlines() if " INFO " in line]
    assert len(info) < 20, info[:40]
