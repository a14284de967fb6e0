"""Worker loss on a real standalone cluster: a master and two workers on 127.0.0.1 (PySpark's own ``spark-class``
launchers, started and stopped by this test by pid). While ``clipsift score`` runs on it, one executor JVM is killed
mid-stage, then a Python worker; the job completes with the same rows and scores as an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyspark
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.config import ScoreConfig, from_dict
from clipsift.jobs.demo.synth import SynthSpec, generate_pool
from clipsift.jobs.score import run as score
from tests.faults.conftest import clipsift

SPEC = SynthSpec(n_rows=4000, n_shards=4, dim=32, n_concepts=6, seed=23)
#: What the test kills on a standalone cluster while ``clipsift score`` runs (README's fault figures).
LOSSES = ("an executor JVM", "a Python worker of an executor")
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {port}")


def _pids(pattern: str) -> list[int]:
    """pids of processes whose command line contains ``pattern``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pattern in cmdline:
                out.append(int(entry.name))
    return out


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _python_workers_of(executors: list[int]) -> list[int]:
    """Python workers (pyspark.daemon and its forks) started by one of ``executors``: not the test's own Spark's."""
    found = []
    for pid in _pids("pyspark.daemon") + _pids("pyspark.worker"):
        p = pid
        while p > 1 and p not in executors:
            p = _parent(p)
        if p in executors:
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("cluster")
    port = _port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    logs = [open(folder / f"{name}.log", "w") for name in ("master", "worker1", "worker2")]  # noqa: SIM115
    procs = [subprocess.Popen(
        [str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(_port())], env=env, stdout=logs[0], stderr=subprocess.STDOUT,
    )]  # fmt: skip
    _wait_for_port(port)
    master = f"spark://127.0.0.1:{port}"
    for k in (1, 2):
        procs.append(subprocess.Popen(
            [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
             "--memory", "2g", "--webui-port", str(_port()), "--work-dir", str(folder / f"work{k}"), master],
            env=env, stdout=logs[k], stderr=subprocess.STDOUT,
        ))  # fmt: skip
    try:
        yield master
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def _score_data(pool: Path, output: Path, master: str | None) -> dict[str, Any]:
    conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
            "spark.databricks.delta.snapshotPartitions": "2"}  # fmt: skip
    if master is not None:
        conf.update({"spark.master": master, "spark.executor.cores": "1", "spark.executor.memory": "1g",
                     "spark.cores.max": "2"})  # fmt: skip
    return {
        "input": {"kind": "datacomp", "path": str(pool), "arch": "b32", "dim": SPEC.dim},
        "output": {"path": str(output)},
        "negclip": {"rounds": 3, "batch_size": 256, "seed": 3},
        "spark": {"local_catalog": None, "conf": conf},
    }


def test_executor_and_python_worker_losses_change_nothing(spark: SparkSession, cluster: str, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    generate_pool(pool, SPEC)
    reference = score(spark, from_dict(ScoreConfig, _score_data(pool, tmp_path / "reference", None)))
    config = tmp_path / "score.yaml"
    config.write_text(json.dumps(_score_data(pool, tmp_path / "scores", cluster)))
    proc = clipsift(["score", "--config", str(config)], tmp_path)
    killed: list[str] = []
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "read and check the pool" in line and not killed:
            # The scoring stage starts now: kill one executor JVM, then a Python worker of an executor.
            executors = _pids("CoarseGrainedExecutorBackend")
            assert executors, "no executor JVM found"
            os.kill(executors[0], signal.SIGKILL)
            killed.append(f"executor {executors[0]}")
            deadline = time.time() + 60
            while time.time() < deadline and not killed[1:]:
                workers = _python_workers_of(_pids("CoarseGrainedExecutorBackend"))
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    killed.append(f"python worker {workers[-1]}")
                time.sleep(0.2)
    code = proc.wait(timeout=600)
    log = "".join(seen)
    assert code == 0, (killed, log[-3000:])
    assert len(killed) == len(LOSSES), killed
    assert "Lost executor" in log or "ExecutorLostFailure" in log, log[-3000:]  # Spark saw the loss and recovered
    got = spark.read.format("delta").load(str(tmp_path / "scores")).drop("lineage", "scored_at").toPandas()
    want = spark.read.format("delta").load(str(tmp_path / "reference")).drop("lineage", "scored_at").toPandas()
    assert len(got) == SPEC.n_rows and not got["uid"].duplicated().any()
    assert set(got["run_id"]) == {reference.run_id}
    key = ["uid"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True), check_exact=True
    )
