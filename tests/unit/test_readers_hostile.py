"""Hostile inputs to the executor-side readers (clipsift.udfs.readers), called directly: no Spark.

Every shard here is a real file written in the test (parquet, npz, npy, tar, symlink) and then broken the way a
damaged or mislabelled download is. The rule under test: a bad shard or row becomes rows with a status, the rows
in come out (each uid once), the batches are valid Arrow, and nothing raises.
"""

from __future__ import annotations

import io as _stdio
import json
import os
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipsift.udfs.ingest import check_batch
from clipsift.udfs.readers import FileTooLargeError, list_shards, read_bytes, read_datacomp_shard, read_tar_shard
from clipsift.udfs.schemas import PAIRS_ARROW, POOL_ARROW, STATUS

DIM = 4
EXTS = ("jpg", "png")


# --------------------------------------------------------------------------------------------------
# DataComp shards


def _emb(n: int, seed: int = 0, rows: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n if rows is None else rows, DIM)
    return {"b32_img": rng.normal(size=shape).astype(np.float32), "b32_txt": rng.normal(size=shape).astype(np.float32)}


def _parquet(folder: Path, stem: str, uids: list[str], **columns: pa.Array) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.parquet"
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), **columns}), path)
    return path


def _uids(tag: str, n: int) -> list[str]:
    return [f"{tag}{i:031x}" for i in range(n)]


def _read(path: Path, rows_per_batch: int = 3) -> dict[str, list[Any]]:
    """Every row of a shard, the batches checked to be valid Arrow of the pool schema."""
    batches = list(read_datacomp_shard(str(path), "b32_img", "b32_txt", rows_per_batch))
    for batch in batches:
        assert batch.schema == POOL_ARROW
        batch.validate(full=True)
        check_batch(batch, DIM).validate(full=True)
    return pa.Table.from_batches(batches, schema=POOL_ARROW).to_pydict()


def _good_shard(folder: Path) -> tuple[Path, list[str]]:
    uids = _uids("a", 5)
    path = _parquet(folder, "00000", uids)
    np.savez(folder / "00000.npz", **_emb(5))
    return path, uids


def _deflate_start(raw: bytes, member: str) -> int:
    """Offset of the first compressed byte of ``member`` in the zip ``raw``."""
    (info,) = [i for i in zipfile.ZipFile(_stdio.BytesIO(raw)).infolist() if i.filename == member]
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _corrupt_deflate(npz: Path) -> None:
    """A reserved deflate block type (0b11) at the start of b32_img's data: zlib.error when it is read."""
    raw = bytearray(npz.read_bytes())
    raw[_deflate_start(bytes(raw), "b32_img.npy")] = 0xFF
    npz.write_bytes(bytes(raw))


def _corrupt_header(npz: Path) -> None:
    """An unterminated triple-quoted string in b32_img's .npy header: numpy's header filter raises
    tokenize.TokenError (an exception none of OSError, ValueError, BadZipFile)."""
    raw = bytearray(npz.read_bytes())
    at = raw.find(b"{'descr'")
    raw[at : at + 9] = b"{'''escr'"
    npz.write_bytes(bytes(raw))


def _npz_shard(folder: Path, kind: str, n: int) -> None:
    npz = folder / "00001.npz"
    if kind == "corrupt_deflate":
        np.savez_compressed(npz, **_emb(n, rows=2000))  # big enough that the header read does not reach the CRC
        _corrupt_deflate(npz)
    elif kind == "corrupt_header":
        np.savez(npz, **_emb(n, rows=2000))
        _corrupt_header(npz)
    elif kind == "strings":
        words = np.array([["a", "b", "c", "d"]] * n)
        np.savez(npz, b32_img=words, b32_txt=words)
    elif kind == "bare_npy":
        with npz.open("wb") as f:
            np.save(f, _emb(n)["b32_img"])
    elif kind == "complex":
        np.savez(npz, **{k: v.astype(np.complex64) for k, v in _emb(n).items()})
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("corrupt_deflate", "error"),  # zlib.error
        ("corrupt_header", "TokenError"),
        ("strings", "not numbers"),
        ("bare_npy", "not an .npz"),
        ("complex", "not numbers"),
    ],
)
def test_unreadable_npz_gives_every_row_unreadable_shard(tmp_path: Path, kind: str, cause: str) -> None:
    good, good_uids = _good_shard(tmp_path)
    uids = _uids("b", 7)
    bad = _parquet(tmp_path, "00001", uids)
    _npz_shard(tmp_path, kind, 7)

    out = _read(bad)
    assert sorted(out["uid"]) == sorted(uids) and sorted(out["source_row"]) == list(range(7))
    assert set(out["load_status"]) == {STATUS.UNREADABLE_SHARD}
    assert all(str(tmp_path / "00001.npz") in e and cause in e for e in out["load_error"]), out["load_error"][0]
    assert out["image_emb"] == [None] * 7 and out["text_emb"] == [None] * 7
    checked = check_batch(pa.RecordBatch.from_pydict(out, schema=POOL_ARROW), DIM).to_pydict()
    assert set(checked["status"]) == {STATUS.UNREADABLE_SHARD}

    # The shard beside it still reads.
    assert list_shards(str(tmp_path), ".parquet", single_file=False) == [str(good), str(bad)]
    ok = _read(good)
    assert ok["uid"] == good_uids and ok["load_status"] == [None] * 5


def test_missing_npz_is_still_missing_embedding(tmp_path: Path) -> None:
    out = _read(_parquet(tmp_path, "00000", _uids("m", 2)))
    assert out["load_status"] == [STATUS.MISSING_EMBEDDING] * 2
    assert all("00000.npz" in e for e in out["load_error"])


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("original_width", pa.array(["640", "n/a", "480"], pa.string())),
        ("clip_l14_similarity_score", pa.array(["0.3", "abc", None], pa.string())),
        ("original_height", pa.array([[1], [2], [3]], pa.list_(pa.int64()))),
    ],
)
def test_metadata_column_that_does_not_convert(tmp_path: Path, column: str, values: pa.Array) -> None:
    uids = _uids("c", 3)
    path = _parquet(tmp_path, "00000", uids, **{column: values, "text": pa.array(["x", "y", "z"])})
    np.savez(tmp_path / "00000.npz", **_emb(3))
    out = _read(path, rows_per_batch=2)
    assert out["uid"] == uids and out["source_row"] == [0, 1, 2]
    assert out["load_status"] == [STATUS.UNREADABLE_SHARD] * 3
    assert all(str(path) in e and column in e for e in out["load_error"]), out["load_error"][0]
    assert out[column] == [None] * 3
    assert out["text"] == ["x", "y", "z"]  # the columns that convert are kept


def test_numeric_strings_in_metadata_still_convert(tmp_path: Path) -> None:
    path = _parquet(tmp_path, "00000", _uids("d", 2), original_width=pa.array(["640", None]))
    np.savez(tmp_path / "00000.npz", **_emb(2))
    out = _read(path)
    assert out["original_width"] == [640, None] and out["load_status"] == [None, None]


def test_invalid_utf8_text_is_decoded_with_replacement(tmp_path: Path) -> None:
    text = pa.array([b"a dog", b"caf\xe9 \xff\xfe", None, "\u00e9t\u00e9".encode()], pa.binary())
    path = _parquet(tmp_path, "00000", _uids("e", 4), text=text)
    np.savez(tmp_path / "00000.npz", **_emb(4))
    out = _read(path)  # _read validates every batch in full: invalid UTF-8 in a string column fails there
    assert out["text"] == ["a dog", "caf\ufffd \ufffd\ufffd", None, "\u00e9t\u00e9"]
    assert out["load_status"] == [None] * 4  # the caption is metadata: the row still scores


def test_width_out_of_int32_range_is_a_row_status_not_zero(tmp_path: Path) -> None:
    width = pa.array([640, 2**40, None, -(2**31) - 1, 2**31 - 1], pa.int64())
    height = pa.array([480.0, 480.0, 480.0, 480.0, 7.5], pa.float64())
    path = _parquet(tmp_path, "00000", _uids("f", 5), original_width=width, original_height=height)
    np.savez(tmp_path / "00000.npz", **_emb(5))
    out = _read(path, rows_per_batch=2)
    assert out["load_status"] == [None, STATUS.BAD_METADATA, None, STATUS.BAD_METADATA, STATUS.BAD_METADATA]
    assert "original_width" in out["load_error"][1] and str(2**40) in out["load_error"][1]
    assert "original_height" in out["load_error"][4] and "7.5" in out["load_error"][4]
    assert out["original_width"] == [640, None, None, None, 2**31 - 1]  # never the wrapped value
    assert out["original_height"] == [480, 480, 480, 480, None]
    assert out["image_emb"][1] is not None  # the embeddings are read; the status keeps the row from scoring
    checked = check_batch(pa.RecordBatch.from_pydict(out, schema=POOL_ARROW), DIM).to_pydict()
    assert checked["status"] == ["ok", "bad_metadata", "ok", "bad_metadata", "bad_metadata"]


def test_missing_embedding_wins_over_bad_metadata(tmp_path: Path) -> None:
    path = _parquet(tmp_path, "00000", _uids("g", 3), original_width=pa.array([2**40] * 3, pa.int64()))
    np.savez(tmp_path / "00000.npz", **_emb(3, rows=2))
    out = _read(path)
    assert out["load_status"] == [STATUS.BAD_METADATA, STATUS.BAD_METADATA, STATUS.MISSING_EMBEDDING]


def test_empty_uid_from_a_shard_is_refused(tmp_path: Path) -> None:
    path = _parquet(tmp_path, "00000", ["", "u1", " ", "u3"])
    np.savez(tmp_path / "00000.npz", **_emb(4))
    out = _read(path)
    checked = check_batch(pa.RecordBatch.from_pydict(out, schema=POOL_ARROW), DIM).to_pydict()
    assert checked["status"] == [STATUS.NULL_UID, "ok", STATUS.NULL_UID, "ok"]
    assert checked["error"][0] == checked["error"][2] == "uid is empty"


# --------------------------------------------------------------------------------------------------
# Dangling symlinks


def test_dangling_symlink_shard_is_listed_and_unreadable(tmp_path: Path) -> None:
    good, _ = _good_shard(tmp_path)
    link = tmp_path / "00001.parquet"
    os.symlink(tmp_path / "gone" / "00001.parquet", link)
    assert list_shards(str(tmp_path), ".parquet", single_file=False) == [str(good), str(link)]
    out = _read(link)
    assert out["uid"] == [None] and out["load_status"] == [STATUS.UNREADABLE_SHARD]
    assert str(link) in out["load_error"][0]

    tars = tmp_path / "tars"
    _tar(tars / "00000.tar", _samples(2))
    os.symlink(tmp_path / "gone" / "00001.tar", tars / "00001.tar")
    assert list_shards(str(tars), ".tar", single_file=True) == [str(tars / "00000.tar"), str(tars / "00001.tar")]
    rows = _tar_rows(tars / "00001.tar")
    assert [r["load_status"] for r in rows] == [STATUS.UNREADABLE_SHARD]
    assert str(tars / "00001.tar") in rows[0]["load_error"]


# --------------------------------------------------------------------------------------------------
# WebDataset tars


def _samples(n: int, members: tuple[str, ...] = ("jpg", "txt", "json")) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        key = f"{i:09d}"
        data = {"jpg": b"\xff\xd8 not decoded here " * 40, "txt": f"caption {i}".encode()}
        data["json"] = json.dumps({"uid": f"w-{i}"}).encode()
        out += [(f"{key}.{ext}", data[ext]) for ext in members]
    return out


def _tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _stdio.BytesIO(data))
    return path.read_bytes()


def _without_end_blocks(raw: bytes) -> bytes:
    """The tar cut right after its last member's padded data: all members whole, no end-of-archive blocks."""
    with tarfile.open(fileobj=_stdio.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    return raw[: last.offset_data + -(-last.size // 512) * 512]


def _tar_rows(path: Path, keys_only: bool = False, needed: int | None = None) -> list[dict[str, Any]]:
    batches = list(read_tar_shard(str(path), EXTS, keys_only, 2, needed))
    for batch in batches:
        assert batch.schema == PAIRS_ARROW
    return pa.Table.from_batches(batches, schema=PAIRS_ARROW).to_pylist()


@pytest.mark.parametrize("keys_only", [False, True])
def test_tar_without_end_blocks_keeps_its_last_whole_sample(tmp_path: Path, keys_only: bool) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(_without_end_blocks(_tar(tmp_path / "full.tar", _samples(3))))
    rows = _tar_rows(shard, keys_only)
    assert [r["uid"] for r in rows] == ["w-0", "w-1", "w-2", None]
    assert [r["source_row"] for r in rows] == [0, 1, 2, None]
    assert rows[2]["load_status"] is None
    if not keys_only:
        assert rows[2]["caption"] == b"caption 2" and rows[2]["image"] is not None
    # The shard is still reported: without end blocks, samples after the last one may be missing.
    assert rows[-1]["load_status"] == STATUS.UNREADABLE_SHARD
    assert "after 3 samples" in rows[-1]["load_error"] and "end-of-archive" in rows[-1]["load_error"]
    # The embed pass, told by the keys pass that 3 samples are there, reads them without failing.
    assert [r["uid"] for r in _tar_rows(shard, needed=3)] == ["w-0", "w-1", "w-2", None]


def test_tar_without_end_blocks_names_a_last_sample_it_cannot_vouch_for(tmp_path: Path) -> None:
    """The last sample lacks members its predecessor has (the cut may be between its members): not read, but
    named in the shard's error, never dropped silently."""
    members = [*_samples(2), ("000000002.jpg", b"\xff\xd8 image only")]
    shard = tmp_path / "s.tar"
    shard.write_bytes(_without_end_blocks(_tar(tmp_path / "full.tar", members)))
    rows = _tar_rows(shard)
    assert [r["uid"] for r in rows] == ["w-0", "w-1", None]
    assert "after 2 samples" in rows[-1]["load_error"] and "'000000002'" in rows[-1]["load_error"]


def test_tar_cut_inside_member_data_names_the_sample_it_drops(tmp_path: Path) -> None:
    raw = _tar(tmp_path / "full.tar", _samples(3))
    with tarfile.open(fileobj=_stdio.BytesIO(raw)) as tar:
        image = tar.getmember("000000002.jpg")
    shard = tmp_path / "s.tar"
    shard.write_bytes(raw[: image.offset_data + image.size // 2])
    for keys_only in (False, True):
        rows = _tar_rows(shard, keys_only)
        assert [r["uid"] for r in rows] == ["w-0", "w-1", None]
        assert "after 2 samples" in rows[-1]["load_error"] and "'000000002'" in rows[-1]["load_error"]


def test_whole_tar_has_no_broken_row(tmp_path: Path) -> None:
    _tar(tmp_path / "s.tar", _samples(3))
    assert [r["uid"] for r in _tar_rows(tmp_path / "s.tar")] == ["w-0", "w-1", "w-2"]


# --------------------------------------------------------------------------------------------------
# Single files by path (the embed job's image fetcher)


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_a_file_over_the_limit_is_refused_from_its_size_unread(tmp_path: Path, as_uri: bool) -> None:
    """A 3 GiB (sparse) file under a 64 MiB limit: refused with its size, and not a byte of it is read."""
    cap = 64 << 20
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    uri = f"file://{big}" if as_uri else str(big)
    tracemalloc.start()
    try:
        with pytest.raises(FileTooLargeError) as info:
            read_bytes(uri, max_bytes=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes allocated to refuse the file"
    assert info.value.size == 3 << 30 and info.value.limit == cap
    assert "3,221,225,472 bytes" in str(info.value) and "67,108,864" in str(info.value)


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_files_up_to_the_limit_are_read_whole(tmp_path: Path, as_uri: bool) -> None:
    cap = 1000
    for size in (0, 1, cap):
        path = tmp_path / f"{size}.bin"
        path.write_bytes(os.urandom(size))
        uri = f"file://{path}" if as_uri else str(path)
        assert read_bytes(uri, max_bytes=cap) == path.read_bytes()
    over = tmp_path / "over.bin"
    over.write_bytes(os.urandom(cap + 1))
    with pytest.raises(FileTooLargeError):
        read_bytes(f"file://{over}" if as_uri else str(over), max_bytes=cap)
    assert read_bytes(str(over)) == over.read_bytes()  # no limit: the whole file, as before


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_file_that_reports_no_size_is_read_no_further_than_the_limit() -> None:
    """/dev/zero says it holds 0 bytes and never ends: the read stops one byte past the limit."""
    with pytest.raises(FileTooLargeError) as info:
        read_bytes("/dev/zero", max_bytes=4096)
    assert info.value.size is None and "more bytes" in str(info.value)
