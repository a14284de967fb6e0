"""kill -9 of ``clipsift reshard`` (a separate process, its own Spark) after its first commit's shard files are
written but before the manifest lists them, and after that manifest commit, with a half-written file left beside the
shards; the same config run again finishes the shards the manifest lacks, and the folder then holds the same bytes
as an unbroken run's: every selected sample once, no shard written twice."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.config import ReshardConfig, from_dict
from clipsift.jobs.reshard import run as reshard
from clipsift.jobs.session import FAILPOINT_ENV
from tests.faults.conftest import SPARK, clipsift, finish
from tests.jobs.test_embed_job import sample, write_shard
from tests.support.corpus import tuxpaint_stamps

KILLED = -signal.SIGKILL
PER_TAR = 8
#: The failpoints of ``jobs/reshard.py`` this module kills ``clipsift reshard`` at (README's fault figures).
KILL_POINTS = ("reshard:shards-written", "reshard:committed")


def _selection(spark: SparkSession, folder: Path, uids: list[str]) -> Path:
    """A selection of ``uids`` recorded as ``clipsift select`` records one (``<scores>_selections``), its SQL over a
    Delta table, so that a process with a catalog of its own finds it by name."""
    chosen = folder / "chosen"
    spark.createDataFrame([(u, float(i)) for i, u in enumerate(uids)], "uid string, score double").write.format(
        "delta"
    ).save(str(chosen))
    sql = f"SELECT uid, score FROM delta.`{chosen}`"
    row = [("run-1", "keep", "`keep`", "import", "{}", "{}", len(uids), 0, sql, datetime.now(timezone.utc))]
    ddl = (
        "run_id string, name string, view string, rule string, params string, cutoffs string, rows bigint, "
        "pool_rows bigint, sql string, created_at timestamp"
    )
    spark.createDataFrame(row, ddl).write.format("delta").save(str(folder / "scores_selections"))
    return folder / "scores"


def _data(folder: Path, scores: Path, out: Path) -> dict[str, Any]:
    return {
        "selection": {"name": "keep", "scores": {"path": str(scores)}},
        "pool": {"kind": "webdataset", "path": str(folder / "wds")},
        "output": {"path": str(out), "samples_per_shard": 3, "shards_per_commit": 2},
        "spark": SPARK,
    }


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_killed_reshard_reruns_to_the_unbroken_runs_bytes(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, point: str
) -> None:
    folder = tmp_path_factory.mktemp("kill-reshard")
    stamps = tuxpaint_stamps(limit=3 * PER_TAR)
    uids = []
    for t in range(3):
        samples = []
        for i in range(PER_TAR):
            _, png, caption = stamps[(t * PER_TAR + i) % len(stamps)]
            samples.append(sample(f"{t}{i:04d}", f"u{t}-{i}", png, caption.encode()))
            if i % 4 != 3:  # three of every four samples are selected
                uids.append(f"u{t}-{i}")
        write_shard(folder / "wds" / f"{t:05d}.tar", samples)
    scores = _selection(spark, folder, uids)
    n_shards = -(-len(uids) // 3)

    config = folder / "reshard.yaml"
    config.write_text(json.dumps(_data(folder, scores, folder / "killed")))
    os.environ[FAILPOINT_ENV] = point
    try:
        proc = clipsift(["reshard", "--config", str(config)], folder)
    finally:
        os.environ.pop(FAILPOINT_ENV, None)
    code, _out, err = finish(proc)
    assert code == KILLED, err[-3000:]
    killed = folder / "killed"
    if point == "reshard:committed":
        manifest = spark.read.format("delta").load(f"{killed}_manifest").toPandas()
        assert sorted(manifest["shard"]) == [0, 1]  # the first commit, whole; nothing after it
    else:  # the first commit's files are on disk, listed nowhere
        listed_before = spark.read.format("delta").load(f"{killed}_manifest").count() if (
            Path(f"{killed}_manifest") / "_delta_log").is_dir() else 0  # fmt: skip
        assert listed_before == 0 and sorted(p.name for p in killed.glob("*.tar")) == ["00000.tar", "00001.tar"]
    (killed / "00002.tar.tmp-0123456789ab").write_bytes(b"half a shard")  # as a kill during a write leaves it

    rerun = reshard(spark, from_dict(ReshardConfig, _data(folder, scores, killed)))
    kept = 2 if point == "reshard:committed" else 0
    assert (rerun.shards_kept, rerun.shards_written) == (kept, n_shards - kept)
    assert rerun.written == len(uids) and rerun.missing == 0

    unbroken = reshard(spark, from_dict(ReshardConfig, _data(folder, scores, folder / "unbroken")))
    assert unbroken.config_id == rerun.config_id
    files = {p.name: p.read_bytes() for p in sorted(killed.iterdir())}
    assert files == {p.name: p.read_bytes() for p in sorted((folder / "unbroken").iterdir())}
    assert sorted(files) == [f"{i:05d}.tar" for i in range(n_shards)]
    manifest = spark.read.format("delta").load(f"{killed}_manifest").toPandas()
    listed = [u for shard in manifest["uids"] for u in shard]
    assert len(manifest) == n_shards and sorted(listed) == sorted(uids)  # every sample once
