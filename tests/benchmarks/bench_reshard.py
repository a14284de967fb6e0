"""Resharding a selection: ``clipsift reshard`` (the whole job: the keys pass over the tars, the copy of the selected
members, the shards written, the manifest and missing tables committed) against the plain Python loop a script would
write (``tarfile`` in, the selected samples' members copied, ``tarfile`` out, a new shard every ``samples_per_shard``),
side by side on the same tars and the same machine. The pool: real photos (Debian's ``python3-skimage``) cycled
through ``--tars`` tars of ``--per-tar`` samples; the selection: ``--fraction`` of the uids, by a hash.

    .venv/bin/python -m tests.benchmarks.bench_reshard [--tars 8] [--per-tar 1000] [--fraction 0.5] [--cores 2]

Prints samples/s of each and their ratio (a Markdown table row for BENCHMARKS.md). Never a timed assert.
"""

from __future__ import annotations

import argparse
import hashlib
import io as _stdio
import json
import tarfile
import tempfile
import time
from pathlib import Path

from clipsift.jobs.config import ReshardConfig, from_dict
from clipsift.jobs.reshard import run as reshard
from clipsift.jobs.session import get_spark
from tests.support.corpus import skimage_photos

SAMPLES_PER_SHARD = 1000


def _picked(uid: str, fraction: float) -> bool:
    return int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) < fraction * 2**32


def write_pool(folder: Path, tars: int, per_tar: int) -> list[str]:
    """``tars`` WebDataset tars of ``per_tar`` samples (a photo, a caption, a .json with the uid); the uids."""
    photos = [data for _, data in skimage_photos()]
    uids = []
    folder.mkdir(parents=True)
    for t in range(tars):
        with tarfile.open(folder / f"{t:05d}.tar", "w") as tar:
            for i in range(per_tar):
                uid = f"{t:05d}-{i:06d}"
                uids.append(uid)
                members = {"jpg": photos[(t * per_tar + i) % len(photos)], "txt": f"photo {uid}".encode(),
                           "json": json.dumps({"uid": uid}).encode()}  # fmt: skip
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{t:05d}{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, _stdio.BytesIO(data))
    return uids


def python_loop(pool: Path, out: Path, chosen: set[str]) -> int:
    """The plain loop: every tar read in order, a selected sample's members copied to the current output tar."""
    out.mkdir(parents=True)
    written, shard, writer = 0, 0, None
    for path in sorted(pool.glob("*.tar")):
        with tarfile.open(path) as tar:
            members: list[tuple[tarfile.TarInfo, bytes]] = []
            key = None
            for info in [*tar, None]:
                name_key = None if info is None else info.name.split(".", 1)[0]
                if name_key != key and members:
                    meta = json.loads(next(data for i, data in members if i.name.endswith(".json")))
                    if meta["uid"] in chosen:
                        if writer is None or written % SAMPLES_PER_SHARD == 0:
                            if writer is not None:
                                writer.close()
                            writer = tarfile.open(out / f"{shard:05d}.tar", "w")  # noqa: SIM115 - open across samples
                            shard += 1
                        for i, data in members:
                            writer.addfile(i, _stdio.BytesIO(data))
                        written += 1
                    members = []
                if info is None:
                    break
                key = name_key
                f = tar.extractfile(info)
                members.append((info, f.read() if f is not None else b""))
    if writer is not None:
        writer.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tars", type=int, default=8)
    parser.add_argument("--per-tar", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uids = write_pool(folder / "pool", args.tars, args.per_tar)
        chosen = {u for u in uids if _picked(u, args.fraction)}
        size = sum(p.stat().st_size for p in (folder / "pool").glob("*.tar"))

        t0 = time.perf_counter()
        n_loop = python_loop(folder / "pool", folder / "loop", chosen)
        loop_s = time.perf_counter() - t0

        spark = get_spark(
            "bench-reshard",
            {"spark.master": f"local[{args.cores}]", "spark.sql.shuffle.partitions": str(args.cores),
             "spark.ui.enabled": "false", "spark.databricks.delta.snapshotPartitions": str(args.cores)},
            None,
        )  # fmt: skip
        spark.sparkContext.setLogLevel("ERROR")
        spark.createDataFrame([(u,) for u in sorted(chosen)], "uid string").createOrReplaceTempView("bench_sel")
        cfg = from_dict(
            ReshardConfig,
            {
                "selection": {"view": "bench_sel"},
                "pool": {"kind": "webdataset", "path": str(folder / "pool")},
                "output": {"path": str(folder / "spark"), "samples_per_shard": SAMPLES_PER_SHARD},
            },
        )
        t0 = time.perf_counter()
        result = reshard(spark, cfg)
        spark_s = time.perf_counter() - t0
        spark.stop()
    assert n_loop == result.written == len(chosen)
    loop_rate, spark_rate = n_loop / loop_s, result.written / spark_s
    print(f"pool: {args.tars} tars x {args.per_tar} samples ({size / 1e6:.0f} MB), {len(chosen)} selected")
    print(f"python loop (tarfile in -> tarfile out): {loop_s:.1f} s, {loop_rate:,.0f} samples/s")
    print(f"clipsift reshard (local[{args.cores}], whole job): {spark_s:.1f} s, {spark_rate:,.0f} samples/s")
    print(f"| reshard {len(chosen):,} of {len(uids):,} samples, local[{args.cores}] | {loop_rate:,.0f} | "
          f"{spark_rate:,.0f} | {spark_rate / loop_rate:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
