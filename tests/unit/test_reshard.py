"""Unit tests of the resharding kernels (:mod:`clipsift.udfs.reshard`) and :class:`ReshardConfig`, no Spark: the
tar bytes are the same on every write, only the wanted samples are read, a bad tar or sample becomes a reason, the
re-encode keeps what it is not asked to change; the written shards read back with the ``webdataset`` library."""

from __future__ import annotations

import hashlib
import io as _stdio
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from clipsift.jobs.config import ConfigError, ReshardConfig, from_dict
from clipsift.udfs.reshard import (
    COPIED_ARROW,
    PLAN_ARROW,
    REASON,
    TEMP_MARK,
    EncodeSettings,
    UndecodableImageError,
    copy_fn,
    read_selected,
    reencode,
    sample_key,
    shard_name,
    write_fn,
)
from tests.support.corpus import skimage_photos

EXTS = ("jpg", "png")


def _png(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    out = _stdio.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def _tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, _stdio.BytesIO(data))
    return path


def _sample(i: int, image: bytes | None = None, ext: str = "png") -> tuple[str, dict[str, bytes]]:
    members = {} if image is None else {ext: image}
    members["txt"] = f"caption {i}".encode()
    members["json"] = json.dumps({"uid": f"u{i}", "url": f"http://x/{i}"}).encode()
    return f"{i:05d}", members


def test_read_selected_reads_only_the_wanted_samples(tmp_path: Path) -> None:
    images = {i: _png(colour=(i * 20, 0, 0)) for i in range(6)}
    path = _tar(tmp_path / "a.tar", [_sample(i, images[i]) for i in range(6)])
    got = dict(read_selected(str(path), {1: "u1", 4: "u4"}, EXTS))
    assert sorted(got) == [1, 4]
    for i in (1, 4):
        assert got[i]["reason"] is None and got[i]["image"] == images[i] and got[i]["image_ext"] == "png"
        assert got[i]["caption"] == f"caption {i}".encode() and json.loads(got[i]["meta"])["uid"] == f"u{i}"
        assert got[i]["source_key"] == f"{i:05d}"


def test_read_selected_stops_after_the_last_wanted_sample(tmp_path: Path) -> None:
    """Everything after the last wanted sample may be garbage: it is never read."""
    path = _tar(tmp_path / "a.tar", [_sample(i, _png()) for i in range(4)])
    data = path.read_bytes()
    cut = data.index(b"00003.png")  # the header of the last sample's first member
    (tmp_path / "cut.tar").write_bytes(data[:cut] + b"\x07" * 3000)
    got = dict(read_selected(str(tmp_path / "cut.tar"), {0: "u0", 2: "u2"}, EXTS))
    assert got[0]["reason"] is None and got[2]["reason"] is None


def test_bad_samples_and_tars_become_reasons(tmp_path: Path) -> None:
    path = _tar(tmp_path / "a.tar", [_sample(0, _png()), _sample(1, None), _sample(2, _png(), ext="gif")])
    got = dict(read_selected(str(path), {0: "other-uid", 1: "u1", 2: "u2", 9: "u9"}, EXTS))
    assert got[0]["reason"] == REASON.CHANGED and "other-uid" in got[0]["error"]
    assert got[1]["reason"] == REASON.NO_IMAGE and got[2]["reason"] == REASON.NO_IMAGE
    assert got[9]["reason"] == REASON.CHANGED and "holds 3 samples" in got[9]["error"]
    noise = [bytes([i]) * 20_000 for i in range(3)]  # the reader copies bytes, it does not decode them
    whole = _tar(tmp_path / "b.tar", [_sample(i, noise[i]) for i in range(3)]).read_bytes()
    (tmp_path / "short.tar").write_bytes(whole[: len(whole) // 2])  # inside sample 1's image
    got = dict(read_selected(str(tmp_path / "short.tar"), {0: "u0", 1: "u1", 2: "u2"}, EXTS))
    assert got[0]["reason"] is None
    assert got[1]["reason"] == got[2]["reason"] == REASON.UNREADABLE and "short.tar" in got[2]["error"]
    got = dict(read_selected(str(tmp_path / "nowhere.tar"), {0: "u0"}, EXTS))
    assert got[0]["reason"] == REASON.UNREADABLE


def test_reencode_changes_only_what_it_is_asked() -> None:
    photos = dict(skimage_photos())
    jpeg = photos["astronaut.png"] if "astronaut.png" in photos else next(iter(photos.values()))
    small = _png((20, 10))
    assert reencode(small, "png", EncodeSettings()) == (small, "png")
    assert reencode(small, "png", EncodeSettings(max_side=64)) == (small, "png")  # already small enough
    data, ext = reencode(jpeg, "png", EncodeSettings(max_side=64))
    with Image.open(_stdio.BytesIO(data)) as img:
        assert max(img.size) == 64 and ext == "png" and img.format == "PNG"
    to_jpeg = EncodeSettings(format="jpeg", quality=70)
    data, ext = reencode(small, "png", to_jpeg)
    assert ext == "jpg" and data[:3] == b"\xff\xd8\xff" and reencode(small, "png", to_jpeg)[0] == data
    with pytest.raises(UndecodableImageError):
        reencode(b"not an image", "png", to_jpeg)


def _copied(shard: int, position: int, uid: str, reason: str | None = None) -> dict[str, Any]:
    ok = reason is None
    return {"shard": shard, "position": position, "uid": uid, "source": "/pool/00000.tar", "source_row": position,
            "source_key": f"k{position}", "image": _png() if ok else None, "image_ext": "png" if ok else None,
            "caption": b"a caption" if ok else None, "meta": b'{"url": "http://x", "uid": "stale"}' if ok else None,
            "extra": '{"clip_score": 0.25, "bad": NaN}', "reason": reason, "error": None if ok else "why"}  # fmt: skip


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_write_fn_writes_the_same_bytes_and_reports_them(tmp_path: Path, fmt: str) -> None:
    rows = [_copied(0, 0, "a"), _copied(0, 1, "b", REASON.UNREADABLE), _copied(0, 2, "c"), _copied(1, 3, "d")]
    batch = pa.RecordBatch.from_pylist(rows, schema=COPIED_ARROW)
    results = []
    for run in ("one", "two"):
        out = tmp_path / run
        got = pa.Table.from_batches(list(write_fn(str(out), fmt, 3)([batch]))).to_pylist()
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        assert sorted(files) == [shard_name(0, fmt), shard_name(1, fmt)] and not any(TEMP_MARK in n for n in files)
        results.append((got, files))
    (first, files), (second, files2) = results
    assert files == files2 and first == second  # the same bytes, however often written
    shards = {r["shard"]: r for r in first if r["kind"] == "shard"}
    assert shards[0]["uids"] == ["a", "c"] and shards[1]["uids"] == ["d"]
    for s, r in shards.items():
        data = files[shard_name(s, fmt)]
        assert r["bytes"] == len(data) and r["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(r["uid"], r["reason"]) for r in first if r["kind"] == "missing"] == [("b", REASON.UNREADABLE)]
    if fmt == "webdataset":
        wds = pytest.importorskip("webdataset", reason="pip install webdataset (clipsift's dev extra)")
        samples = list(wds.WebDataset([str(tmp_path / "one" / shard_name(0, fmt))], shardshuffle=False))
        assert [s["__key__"] for s in samples] == [sample_key(0, 0, 3), sample_key(0, 2, 3)]
        meta = json.loads(samples[0]["json"])
        assert meta["uid"] == "a" and meta["url"] == "http://x" and meta["clip_score"] == 0.25 and meta["bad"] is None
        with tarfile.open(tmp_path / "one" / shard_name(0, fmt)) as tar:
            assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "", 0o644)}


def _config(**output: Any) -> dict[str, Any]:
    return {
        "selection": {"view": "main.sel_top"},
        "pool": {"kind": "webdataset", "path": "/pool"},
        "output": {"path": "/out", **output},
    }


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"selection": {"view": "v", "name": "n"}}, "selection"),
        ({"selection": {"name": "n"}}, "selection.scores"),
        ({"selection": {"view": "v", "run_id": "r"}}, "selection.run_id"),
        ({"selection": {"view": "not a name"}}, "selection.view"),
        ({"output": {"path": "/o", "samples_per_shard": 0}}, "output.samples_per_shard"),
        ({"output": {"path": "/o", "encode": {"format": "gif"}}}, "output.encode.format"),
        ({"output": {"path": "/o", "encode": {"quality": 101}}}, "output.encode.quality"),
        ({"output": {"path": "/o", "shufle": True}}, "output.shufle"),
        ({"output": {"path": "/o", "format": "zip"}}, "output.format"),
        ({"pool": {"kind": "webdataset"}}, "pool.path"),
    ],
)
def test_config_errors_name_the_key(change: dict[str, Any], key: str) -> None:
    data = {**_config(), **change}
    with pytest.raises(ConfigError) as caught:
        from_dict(ReshardConfig, data)
    assert caught.value.key == key and "\n" not in str(caught.value)


def test_tables_beside_the_output_or_named() -> None:
    cfg = from_dict(ReshardConfig, _config())
    manifest, missing = cfg.output.tables()
    assert (manifest.path, missing.path) == ("/out_manifest", "/out_missing")
    cfg = from_dict(ReshardConfig, _config(manifest={"table": "main.rs"}))
    manifest, missing = cfg.output.tables()
    assert (manifest.table, missing.table) == ("main.rs", "main.rs_missing")


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "reshard.yaml"
    cfg = ReshardConfig.from_yaml(example)
    assert cfg.output.samples_per_shard == 10_000 and cfg.pool.kind == "webdataset"


def test_copy_fn_of_a_table_reads_paths_and_lists_what_it_cannot(tmp_path: Path) -> None:
    """``pool.kind: table``: bytes in the row, or read from the row's path; a missing file is ``unreadable``."""
    png = _png()
    (tmp_path / "a.png").write_bytes(png)
    plan = [
        {"source": "t", "source_row": None, "uid": "in-row", "shard": 0, "position": 0, "extra": "{}",
         "image": png, "image_path": None, "caption": b"one"},
        {"source": "t", "source_row": None, "uid": "by-path", "shard": 0, "position": 1, "extra": "{}",
         "image": None, "image_path": str(tmp_path / "a.png"), "caption": b"two"},
        {"source": "t", "source_row": None, "uid": "gone", "shard": 0, "position": 2, "extra": "{}",
         "image": None, "image_path": str(tmp_path / "gone.jpg"), "caption": b"three"},
    ]  # fmt: skip
    batch = pa.RecordBatch.from_pylist(plan, schema=PLAN_ARROW)
    rows = pa.Table.from_batches(list(copy_fn("table", EXTS, EncodeSettings())([batch]))).to_pylist()
    got = {r["uid"]: r for r in rows}
    assert got["in-row"]["image"] == png and got["in-row"]["image_ext"] == "png" and got["in-row"]["reason"] is None
    assert got["by-path"]["image"] == png and got["by-path"]["caption"] == b"two"
    assert got["gone"]["reason"] == REASON.UNREADABLE and "gone.jpg" in got["gone"]["error"]
