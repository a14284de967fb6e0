"""Spark-tier tests for the embed job's readers in clipsift.jobs.io: WebDataset tar shards, pairs tables, read_bytes.

Shards are written here with :mod:`tarfile` in img2dataset's layout (``000000000.jpg``, ``.txt``, ``.json``
holding ``{"uid": ...}``), with real tuxpaint PNG bytes.
"""

from __future__ import annotations

import io as _stdio
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs import io
from clipsift.jobs.config import EmbedInputConfig
from clipsift.udfs.readers import read_bytes
from clipsift.udfs.schemas import PAIRS_DDL, STATUS
from tests.support.corpus import tuxpaint_stamps

EXTS = ("jpg", "jpeg", "png", "webp")
Member = tuple[str, bytes]
Stamps = list[tuple[str, bytes, str]]


@pytest.fixture(scope="module")
def stamps() -> Stamps:
    try:
        return tuxpaint_stamps(limit=6)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _write_tar(path: Path, members: list[Member]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _stdio.BytesIO(data))
    return path


def _sample(key: str, image: bytes | None, caption: str | None, meta: Any = None, ext: str = "jpg") -> list[Member]:
    """img2dataset's members of one sample (image, caption, json), those given."""
    members: list[Member] = []
    if image is not None:
        members.append((f"{key}.{ext}", image))
    if caption is not None:
        members.append((f"{key}.txt", caption.encode()))
    if meta is not None:
        members.append((f"{key}.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode()))
    return members


def _shard_of(stamps: Stamps, tag: str) -> list[Member]:
    members: list[Member] = []
    for i, (_, data, caption) in enumerate(stamps):
        members += _sample(f"{i:09d}", data, caption, {"uid": f"{tag}-{i}", "key": f"{i:09d}", "status": "success"})
    return members


def _read(spark: SparkSession, shards: list[Path], exts: tuple[str, ...] = EXTS, **kw: Any) -> list[dict[str, Any]]:
    df = io.read_webdataset(spark, [str(s) for s in shards], exts, **kw)
    assert df.schema.simpleString() == spark.createDataFrame([], PAIRS_DDL).schema.simpleString()
    rows = [r.asDict() for r in df.collect()]
    return sorted(rows, key=lambda r: (r["source"], r["source_row"] is None, r["source_row"] or 0))


# --------------------------------------------------------------------------------------------------
# Samples and uids


def test_samples_of_two_shards(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    first = _write_tar(tmp_path / "00000.tar", _shard_of(stamps[:4], "a"))
    second = _write_tar(tmp_path / "00001.tar", _shard_of(stamps[4:], "b"))
    rows = _read(spark, [first, second], rows_per_batch=3)
    assert [r["uid"] for r in rows] == ["a-0", "a-1", "a-2", "a-3", "b-0", "b-1"]
    assert [r["source"] for r in rows] == [str(first)] * 4 + [str(second)] * 2
    assert [r["source_row"] for r in rows] == [0, 1, 2, 3, 0, 1]
    expected = stamps[:4] + stamps[4:]
    assert [r["image"] for r in rows] == [data for _, data, _ in expected]
    assert [r["caption"] for r in rows] == [caption.encode() for _, _, caption in expected]
    assert all(r["image_path"] is None and r["load_status"] is None and r["load_error"] is None for r in rows)


def test_uid_falls_back_to_the_key(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    png = stamps[0][1]
    members = (
        _sample("000000000", png, "with json", {"uid": "from-json"})
        + _sample("000000001", png, "no json")
        + _sample("000000002", png, "broken json", b'{"uid": "cut')
        + _sample("000000003", png, "json without uid", {"key": "000000003"})
    )
    rows = _read(spark, [_write_tar(tmp_path / "s.tar", members)])
    assert [r["uid"] for r in rows] == ["from-json", "000000001", "000000002", "000000003"]
    assert [r["caption"] for r in rows] == [b"with json", b"no json", b"broken json", b"json without uid"]
    assert all(r["image"] == png for r in rows)
    assert rows[0]["load_error"] is None and rows[1]["load_error"] is None
    assert "000000002.json" in rows[2]["load_error"] and "not valid JSON" in rows[2]["load_error"]
    assert "key is used as uid" in rows[2]["load_error"]
    assert all(r["load_status"] is None for r in rows)


def test_sample_without_an_image_keeps_its_row(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    png = stamps[0][1]
    members = (
        _sample("000000000", png, "first", {"uid": "u0"})
        + _sample("000000001", None, "caption only", {"uid": "u1"})
        + [("000000001.npy", b"\x93NUMPY")]
        + _sample("000000002", png, "third", {"uid": "u2"})
    )
    rows = _read(spark, [_write_tar(tmp_path / "s.tar", members)])
    assert [r["uid"] for r in rows] == ["u0", "u1", "u2"]
    assert [r["source_row"] for r in rows] == [0, 1, 2]
    hole = rows[1]
    assert hole["image"] is None
    assert hole["caption"] == b"caption only"
    assert hole["load_status"] is None
    assert "000000001" in hole["load_error"] and "no image member" in hole["load_error"]
    assert "json, npy, txt" in hole["load_error"]
    assert rows[0]["load_error"] is None and rows[2]["load_error"] is None


def test_members_in_subfolders(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    (_, png_a, _), (_, png_b, _) = stamps[:2]
    members = (
        _sample("part-a/000001", png_a, "in a", {"uid": "ua"}, ext="png")
        + _sample("part-b/000001", png_b, "in b", {"uid": "ub"}, ext="png")
        + _sample("part-b/nested/000002", png_a, "deeper", {"uid": "uc"}, ext="png")
    )
    rows = _read(spark, [_write_tar(tmp_path / "s.tar", members)])
    assert [(r["uid"], r["caption"], r["image"]) for r in rows] == [
        ("ua", b"in a", png_a),
        ("ub", b"in b", png_b),
        ("uc", b"deeper", png_a),
    ]
    assert all(r["load_error"] is None for r in rows)


def test_extensions_are_case_insensitive_and_follow_the_configured_order(
    spark: SparkSession, tmp_path: Path, stamps: Stamps
) -> None:
    (_, png, _), (_, other, _) = stamps[:2]
    members = [
        ("000000000.JPG", other),
        ("000000000.Png", png),
        ("000000000.TXT", b"upper case"),
        ("000000000.json", b'{"uid": "both"}'),
        ("000000001.PNG", png),
        ("000000001.txt", b"png only"),
    ]
    shard = _write_tar(tmp_path / "s.tar", members)
    png_first = _read(spark, [shard], ("png", "jpg"))
    assert [r["uid"] for r in png_first] == ["both", "000000001"]
    assert [r["image"] for r in png_first] == [png, png]
    assert png_first[0]["caption"] == b"upper case"
    jpg_first = _read(spark, [shard], (".JPG", "png"))
    assert [r["image"] for r in jpg_first] == [other, png]
    jpg_only = _read(spark, [shard], ("jpg",))
    assert jpg_only[1]["image"] is None and "no image member" in jpg_only[1]["load_error"]


# --------------------------------------------------------------------------------------------------
# Broken shards


def _member_offsets(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=_stdio.BytesIO(raw)) as tar:
        return tar.getmembers()


def _assert_broken_after(rows: list[dict[str, Any]], shard: Path, uids: list[str]) -> None:
    assert [r["uid"] for r in rows[:-1]] == uids
    assert [r["source_row"] for r in rows[:-1]] == list(range(len(uids)))
    broken = rows[-1]
    assert broken["uid"] is None and broken["source_row"] is None
    assert broken["caption"] is None and broken["image"] is None
    assert broken["source"] == str(shard)
    assert broken["load_status"] == STATUS.UNREADABLE_SHARD
    assert str(shard) in broken["load_error"] and f"after {len(uids)} samples" in broken["load_error"]


@pytest.mark.parametrize("keys_only", [False, True])
def test_truncated_tar_keeps_the_samples_before_the_cut(
    spark: SparkSession, tmp_path: Path, stamps: Stamps, keys_only: bool
) -> None:
    raw = _write_tar(tmp_path / "full.tar", _shard_of(stamps[:4], "t")).read_bytes()
    third_image = _member_offsets(raw)[6]  # the image of sample 2: members come 3 to a sample
    assert third_image.name == "000000002.jpg"
    shard = tmp_path / "cut.tar"
    shard.write_bytes(raw[: third_image.offset_data + third_image.size // 2])
    rows = _read(spark, [shard], keys_only=keys_only)
    _assert_broken_after(rows, shard, ["t-0", "t-1"])
    if not keys_only:
        assert [r["caption"] for r in rows[:2]] == [c.encode() for _, _, c in stamps[:2]]


def test_read_error_before_the_needed_samples_fails_the_task(
    spark: SparkSession, tmp_path: Path, stamps: Stamps
) -> None:
    """The embed pass knows how far the keys pass read a shard: an error before that (here the shard was cut
    between the passes, as an object store dropping the connection would) fails the task for Spark to retry,
    instead of losing rows; an error past the needed samples is the shard's own end, reported as before."""
    raw = _write_tar(tmp_path / "full.tar", _shard_of(stamps[:4], "t")).read_bytes()
    third_image = _member_offsets(raw)[6]
    shard = tmp_path / "cut.tar"
    shard.write_bytes(raw[: third_image.offset_data + third_image.size // 2])
    with pytest.raises(Exception, match=r"failed after 2 of the 4 samples"):
        _read(spark, [shard], needed={str(shard): 4})
    _assert_broken_after(_read(spark, [shard], needed={str(shard): 2}), shard, ["t-0", "t-1"])
    full = tmp_path / "whole.tar"
    full.write_bytes(raw)
    assert len(_read(spark, [full], needed={str(full): 4})) == 4


@pytest.mark.parametrize("where", ["at_a_header", "inside_a_header"])
def test_tar_cut_at_a_member_header_is_reported(
    spark: SparkSession, tmp_path: Path, stamps: Stamps, where: str
) -> None:
    raw = _write_tar(tmp_path / "full.tar", _shard_of(stamps[:4], "t")).read_bytes()
    third_caption = _member_offsets(raw)[7]
    assert third_caption.name == "000000002.txt"
    shard = tmp_path / "cut.tar"
    shard.write_bytes(raw[: third_caption.offset + (0 if where == "at_a_header" else 100)])
    # As for a cut inside member data: the sample being read when the shard ends (2) is incomplete and dropped.
    _assert_broken_after(_read(spark, [shard]), shard, ["t-0", "t-1"])


def test_files_that_are_not_tars(spark: SparkSession, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is a text file, not a tar archive\n" * 50)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    rows = _read(spark, [garbage, empty])
    assert len(rows) == 2
    for row, shard in zip(rows, (empty, garbage), strict=True):
        _assert_broken_after([row], shard, [])


def test_keys_only_reads_uids_without_the_bytes(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    members = _shard_of(stamps[:3], "k") + _sample("000000009", stamps[0][1], "no json")
    shard = _write_tar(tmp_path / "s.tar", members)
    full = _read(spark, [shard])
    keys = _read(spark, [shard], keys_only=True)
    assert [r["uid"] for r in keys] == ["k-0", "k-1", "k-2", "000000009"]

    def ids(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["uid"], r["source"], r["source_row"], r["load_status"]) for r in rows]

    assert ids(keys) == ids(full)
    assert all(r["caption"] is None and r["image"] is None for r in keys)
    assert all(r["caption"] is not None and r["image"] is not None for r in full)


# --------------------------------------------------------------------------------------------------
# Listing shards


def test_list_webdataset_shards(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    for name in ("00002.tar", "00000.tar", "00001.tar"):
        _write_tar(folder / name, [])
    (folder / "00000_stats.json").write_text("{}")
    (folder / "00003.tar.gz").write_bytes(b"")
    (folder / "sub").mkdir()
    _write_tar(folder / "sub" / "nested.tar", [])
    assert io.list_webdataset_shards(str(folder)) == [str(folder / f"0000{i}.tar") for i in range(3)]
    single = str(folder / "00001.tar")
    assert io.list_webdataset_shards(single) == [single]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.list_webdataset_shards(str(tmp_path / "missing"))
    (tmp_path / "no-tars").mkdir()
    (tmp_path / "no-tars" / "a.parquet").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no \.tar shards"):
        io.list_webdataset_shards(str(tmp_path / "no-tars"))


# --------------------------------------------------------------------------------------------------
# Pairs tables


def _pairs_parquet(path: Path, stamps: Stamps, image_paths: list[str | None] | None = None) -> Path:
    table = pa.table(
        {
            "id": pa.array([100 + i for i in range(len(stamps))], pa.int64()),
            "text": pa.array([c for _, _, c in stamps], pa.string()),
            "img": pa.array([d for _, d, _ in stamps], pa.binary()),
            "file": pa.array(image_paths or [None] * len(stamps), pa.string()),
            "other": pa.array(range(len(stamps)), pa.int32()),
        }
    )
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-0.parquet")
    return path


def test_read_pairs_table_with_image_bytes(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    path = _pairs_parquet(tmp_path / "pairs", stamps[:3])
    cfg = EmbedInputConfig(
        kind="table", path=str(path), format="parquet", uid_col="id", caption_col="text", image_col="img"
    )
    cfg.validate("input")
    df = io.read_pairs_table(spark, cfg)
    assert df.schema.simpleString() == spark.createDataFrame([], PAIRS_DDL).schema.simpleString()
    rows = sorted((r.asDict() for r in df.collect()), key=lambda r: r["uid"])
    assert [r["uid"] for r in rows] == ["100", "101", "102"]
    assert [r["caption"] for r in rows] == [c.encode() for _, _, c in stamps[:3]]
    assert [r["image"] for r in rows] == [d for _, d, _ in stamps[:3]]
    assert all(r["image_path"] is None and r["source"] == str(path) for r in rows)
    assert all(r["source_row"] is None and r["load_status"] is None and r["load_error"] is None for r in rows)


def test_read_pairs_table_with_image_paths(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    files: list[str | None] = [str(tmp_path / f"img{i}.png") for i in range(3)]
    path = _pairs_parquet(tmp_path / "pairs", stamps[:3], image_paths=files)
    cfg = EmbedInputConfig(
        kind="table", path=str(path), format="parquet", uid_col="id", caption_col="text", image_path_col="file"
    )
    cfg.validate("input")
    rows = sorted((r.asDict() for r in io.read_pairs_table(spark, cfg).collect()), key=lambda r: r["uid"])
    assert [r["image_path"] for r in rows] == files
    assert all(r["image"] is None for r in rows)
    assert [r["caption"] for r in rows] == [c.encode() for _, _, c in stamps[:3]]


def test_read_pairs_table_missing_column(spark: SparkSession, tmp_path: Path, stamps: Stamps) -> None:
    path = _pairs_parquet(tmp_path / "pairs", stamps[:1])
    cfg = EmbedInputConfig(
        kind="table", path=str(path), format="parquet", uid_col="id", caption_col="caption", image_col="img"
    )
    with pytest.raises(ValueError, match="'caption'") as info:
        io.read_pairs_table(spark, cfg)
    assert "caption_col" in str(info.value) and "text" in str(info.value)


# --------------------------------------------------------------------------------------------------
# read_bytes


def test_read_bytes_local_path_and_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    data = bytes(range(256)) * 10
    path.write_bytes(data)
    assert read_bytes(str(path)) == data
    assert read_bytes(f"file:{path}") == data
    assert read_bytes(path.as_uri()) == data  # file:///...
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.bin"))
