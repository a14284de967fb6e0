"""Resharding kernels (``clipsift reshard``), no Spark: read the selected samples of one WebDataset tar, re-encode an
image, and write one output shard (a WebDataset tar or a Parquet file) byte for byte the same on every run.

The Spark side (:mod:`clipsift.jobs.reshard`) calls :func:`copy_fn` once per input task (its rows sorted by tar and
sample) and :func:`write_fn` once per output task (its rows sorted by shard and position); both stream Arrow
batches. A selected sample that cannot be copied becomes a row with a ``reason``, never an exception.
"""

from __future__ import annotations

import hashlib
import io as _stdio
import itertools
import json
import math
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clipsift.udfs.decode import decode_image
from clipsift.udfs.readers import WDS_KEY, arrow_path, read_bytes


class REASON:
    """Values of ``reason`` in the ``_missing`` table: why a selected uid is not in the output."""

    NOT_IN_POOL = "not_in_pool"
    """No sample of the input tars (or row of the input table) carries the uid."""
    NO_IMAGE = "no_image"
    """The sample has no member with one of the image extensions (or the table row a null image)."""
    UNREADABLE = "unreadable"
    """The tar (or the image file of a table row) could not be read up to the sample."""
    CHANGED = "changed"
    """The input changed between the job's two passes: the sample at that place has another uid now."""
    UNDECODABLE = "undecodable"
    """``encode`` asked for a re-encode and the image does not decode."""


#: Rows in: one per selected sample of one tar (or table row), sorted by ``source``, ``source_row``.
PLAN_ARROW = pa.schema(
    [
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("uid", pa.string()),
        ("shard", pa.int32()),
        ("position", pa.int64()),
        ("extra", pa.string()),
        ("image", pa.binary()),
        ("image_path", pa.string()),
        ("caption", pa.binary()),
    ]
)
#: Rows between the copy and the write: the sample's bytes as they were (or re-encoded), or why not.
COPIED_ARROW = pa.schema(
    [
        ("shard", pa.int32()),
        ("position", pa.int64()),
        ("uid", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("source_key", pa.string()),
        ("image", pa.binary()),
        ("image_ext", pa.string()),
        ("caption", pa.binary()),
        ("meta", pa.binary()),
        ("extra", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)
#: Rows out of a write task: ``kind = 'shard'`` (a manifest row) or ``'missing'`` (a sample not written).
RESULT_ARROW = pa.schema(
    [
        ("kind", pa.string()),
        ("shard", pa.int32()),
        ("name", pa.string()),
        ("samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("uids", pa.list_(pa.string())),
        ("sources", pa.list_(pa.string())),
        ("uid", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)
#: Columns of a Parquet output shard.
PARQUET_ARROW = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("image", pa.binary()),
        ("image_ext", pa.string()),
        ("caption", pa.string()),
        ("json", pa.string()),
    ]
)
FORMATS = ("webdataset", "parquet")
_SUFFIX = {"webdataset": ".tar", "parquet": ".parquet"}
#: Marks a file being written; a run deletes the ones a killed run left (never a finished shard's name).
TEMP_MARK = ".tmp-"


@dataclass(frozen=True)
class EncodeSettings:
    """Optional re-encode of the images (DataComp's resharder can too). The default copies bytes as they were."""

    max_side: int | None = None
    """Downscale an image whose longer side is over this many pixels (aspect kept); smaller ones keep their bytes
    unless ``format`` asks for another format."""
    format: str = "keep"
    """``keep`` (a resized image keeps its format where it is JPEG, PNG or WebP, else PNG), ``jpeg``, ``png``,
    ``webp``: every image is re-encoded to it."""
    quality: int = 95
    """JPEG / WebP quality (1-100)."""
    max_pixels: int = 50_000_000
    """Largest ``width * height`` decoded for a re-encode; a larger image is ``undecodable``."""

    @property
    def active(self) -> bool:
        return self.max_side is not None or self.format != "keep"


def shard_name(shard: int, fmt: str) -> str:
    """The file name of output shard ``shard`` (``00042.tar``): img2dataset's spelling, from the config alone."""
    return f"{shard:05d}{_SUFFIX[fmt]}"


def sample_key(shard: int, index: int, samples_per_shard: int) -> str:
    """The WebDataset key of the ``index``-th sample of ``shard`` (img2dataset's ``SSSSSIIII``): no dot, no slash,
    so any reader splits it from its extension."""
    digits = max(4, len(str(samples_per_shard - 1)))
    return f"{shard:05d}{index:0{digits}d}"


# Reading the selected samples of one tar


def read_selected(path: str, wanted: Mapping[int, str], exts: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The samples of the tar ``path`` at the ordinals ``wanted`` (ordinal -> expected uid), in tar order.

    Ordinals count samples as :func:`clipsift.udfs.readers.read_tar_shard` does (runs of members sharing a key).
    Only the members of wanted samples are read (the image, ``.txt`` and ``.json``), and the tar no further than
    the last wanted sample. Yields ``(ordinal, row)`` once per wanted ordinal: ``row`` has ``source_key``,
    ``image``, ``image_ext``, ``caption``, ``meta``, ``reason`` and ``error`` (reason None when copied).
    """
    if not wanted:
        return
    last = max(wanted)
    done: set[int] = set()
    ordinal = -1
    key: str | None = None
    members: dict[str, bytes] = {}
    failure: str | None = None
    try:
        fs, local = arrow_path(path)
        with fs.open_input_file(local) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                m = WDS_KEY.match(info.name)
                if m is None:
                    continue
                member_key, ext = m.group(1), m.group(2).lower()
                if member_key != key:
                    if key is not None and ordinal in wanted:
                        done.add(ordinal)
                        yield ordinal, _sample_row(key, members, wanted[ordinal], exts)
                    ordinal, key, members = ordinal + 1, member_key, {}
                    if ordinal > last:
                        key = None
                        break
                if ordinal in wanted and ext not in members and (ext in ("txt", "json") or ext in exts):
                    f = tar.extractfile(info)
                    if f is not None:
                        members[ext] = f.read()
                        if len(members[ext]) != info.size:
                            raise tarfile.ReadError(f"member {info.name} is cut short")
            if key is not None and ordinal in wanted:
                done.add(ordinal)
                yield ordinal, _sample_row(key, members, wanted[ordinal], exts)
    except (OSError, tarfile.TarError, EOFError) as exc:
        failure = f"cannot read tar shard {path} at sample {ordinal}: {type(exc).__name__}: {exc}"
    for o in sorted(set(wanted) - done):
        why = failure or f"tar shard {path} holds {ordinal + 1} samples, none at ordinal {o}"
        yield o, _missing_row(REASON.UNREADABLE if failure else REASON.CHANGED, why)


def _missing_row(reason: str, error: str, source_key: str | None = None) -> dict[str, Any]:
    return {"source_key": source_key, "image": None, "image_ext": None, "caption": None, "meta": None,
            "reason": reason, "error": error}  # fmt: skip


def _sample_row(key: str, members: dict[str, bytes], uid: str, exts: tuple[str, ...]) -> dict[str, Any]:
    found = key
    if "json" in members:
        try:
            meta = json.loads(members["json"] or b"{}")
            if isinstance(meta, dict) and isinstance(meta.get("uid"), str) and meta["uid"]:
                found = meta["uid"]
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    if found != uid:
        return _missing_row(REASON.CHANGED, f"sample '{key}' has uid {found!r} now, not {uid!r}", key)
    image_ext = next((e for e in exts if e in members), None)
    if image_ext is None:
        return _missing_row(REASON.NO_IMAGE, f"sample '{key}' has no image member ({', '.join(exts)})", key)
    return {"source_key": key, "image": members[image_ext], "image_ext": image_ext, "caption": members.get("txt"),
            "meta": members.get("json"), "reason": None, "error": None}  # fmt: skip


# Re-encoding

_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class UndecodableImageError(ValueError):
    """The image of a sample does not decode, so it cannot be re-encoded."""


def reencode(data: bytes, ext: str, settings: EncodeSettings) -> tuple[bytes, str]:
    """``(bytes, ext)`` of the image after ``settings``: the same bytes when nothing is asked of this image (it is
    no larger than ``max_side`` and ``format`` is ``keep``), else decoded (RGB, EXIF upright, alpha on white),
    downscaled and encoded without metadata (the same bytes for the same input and Pillow).

    Raises:
        UndecodableImageError: the bytes do not decode (its message says why).
    """
    from PIL import Image

    if not settings.active:
        return data, ext
    try:
        with Image.open(_stdio.BytesIO(data)) as probe:
            size, source_format = probe.size, probe.format or ""
    except Exception as exc:  # any decoder's error: not an image
        raise UndecodableImageError(f"cannot open image ({type(exc).__name__}: {exc})") from None
    small = settings.max_side is None or max(size) <= settings.max_side
    if settings.format == "keep" and small:
        return data, ext
    img, status, error = decode_image(data, max_pixels=settings.max_pixels)
    if img is None:
        raise UndecodableImageError(f"{status}: {error}")
    if not small:
        assert settings.max_side is not None
        scale = settings.max_side / max(img.size)
        target = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(target, Image.Resampling.LANCZOS)
    fmt = _PIL_FORMAT.get(settings.format) or (source_format if source_format in _EXT else "PNG")
    out = _stdio.BytesIO()
    options: dict[str, Any] = {"quality": settings.quality} if fmt in ("JPEG", "WEBP") else {"compress_level": 6}
    img.save(out, fmt, **options)
    return out.getvalue(), _EXT[fmt]


# The copy task: plan rows in (sorted by source, source_row), copied rows out


def copy_fn(
    kind: str, exts: tuple[str, ...], settings: EncodeSettings, rows_per_batch: int = 64
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the copy stage. ``kind``: ``webdataset`` (each tar of the task's rows read
    once, its wanted samples only) or ``table`` (the rows carry the image bytes, or a path to read)."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        out: list[dict[str, Any]] = []
        for rows in _by_source(batches) if kind == "webdataset" else _table_rows(batches):
            for plan, got in rows:
                out.append(_copied(plan, got, settings))
                if len(out) >= rows_per_batch:
                    yield pa.RecordBatch.from_pylist(out, schema=COPIED_ARROW)
                    out.clear()
        if out:
            yield pa.RecordBatch.from_pylist(out, schema=COPIED_ARROW)

    def _by_source(batches: Iterable[pa.RecordBatch]) -> Iterator[Iterator[tuple[dict[str, Any], dict[str, Any]]]]:
        source: str | None = None
        group: list[dict[str, Any]] = []
        for batch in batches:
            for plan in batch.to_pylist():
                if plan["source"] != source and group:
                    yield _tar_rows(source, group)
                    group = []
                source = plan["source"]
                group.append(plan)
        if group:
            yield _tar_rows(source, group)

    def _tar_rows(path: str | None, group: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        by_ordinal = {int(p["source_row"]): p for p in group}
        for ordinal, got in read_selected(str(path), {o: p["uid"] for o, p in by_ordinal.items()}, exts):
            yield by_ordinal[ordinal], got

    return run


def _table_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[Iterator[tuple[dict[str, Any], dict[str, Any]]]]:
    for batch in batches:
        yield (_table_row(plan) for plan in batch.to_pylist())


def _table_row(plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    image, path = plan["image"], plan["image_path"]
    if image is None and path is not None:
        try:
            image = read_bytes(path)
        except OSError as exc:
            return plan, _missing_row(REASON.UNREADABLE, f"cannot read {path}: {type(exc).__name__}: {exc}")
    if image is None:
        return plan, _missing_row(REASON.NO_IMAGE, "the row's image is null")
    return plan, {"source_key": None, "image": image, "image_ext": _sniff_ext(image, path), "caption": plan["caption"],
                  "meta": None, "reason": None, "error": None}  # fmt: skip


def _sniff_ext(data: bytes, path: str | None) -> str:
    """The extension of an image from a table: its path's, else from its first bytes (``bin`` when unknown)."""
    if path and "." in path.rsplit("/", 1)[-1]:
        return path.rsplit(".", 1)[-1].lower()
    for magic, ext in ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp")):
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def _copied(plan: dict[str, Any], got: dict[str, Any], settings: EncodeSettings) -> dict[str, Any]:
    row = {name: plan[name] for name in ("shard", "position", "uid", "source", "source_row", "extra")}
    row.update(got)
    if row["reason"] is None and settings.active:
        try:
            row["image"], row["image_ext"] = reencode(row["image"], row["image_ext"], settings)
        except UndecodableImageError as exc:
            row.update(image=None, image_ext=None, caption=None, meta=None, reason=REASON.UNDECODABLE, error=str(exc))
    return row


# Writing one output shard


class HashingSink:
    """A write-only stream that forwards to ``out`` and keeps the sha256 and size of what passed."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self.out.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def sample_json(row: Mapping[str, Any], key: str) -> bytes:
    """The ``.json`` member of an output sample: the input's own JSON object (img2dataset's url, caption, sizes,
    ...), then ``uid``, ``key``, ``source`` (the tar), ``source_key``, ``source_row`` and the selection's columns
    (``extra``); keys sorted, NaN and infinities as null, so the same sample gives the same bytes."""
    meta: dict[str, Any] = {}
    if row.get("meta"):
        try:
            loaded = json.loads(row["meta"])
            meta = loaded if isinstance(loaded, dict) else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            meta = {}
    extra = json.loads(row["extra"]) if row.get("extra") else {}
    meta.update(extra)
    meta.update(uid=row["uid"], key=key, source=row["source"], source_key=row["source_key"],
                source_row=row["source_row"])  # fmt: skip
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in meta.items()}
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def write_tar(sink: HashingSink, samples: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Write ``(key, row)`` samples as a WebDataset tar to ``sink``: per sample ``key.<image_ext>``, ``key.txt``
    (when the caption is there) and ``key.json``, fixed header fields (mtime 0, owner 0, mode 644, PAX format).
    Returns the number of samples."""
    n = 0
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for key, row in samples:
            members = [(row["image_ext"], row["image"])]
            if row["caption"] is not None:
                members.append(("txt", row["caption"]))
            members.append(("json", sample_json(row, key)))
            for ext, data in members:
                tar.addfile(_tar_info(f"{key}.{ext}", len(data)), _stdio.BytesIO(data))
            n += 1
    return n


def write_parquet(
    sink: HashingSink, samples: Iterable[tuple[str, Mapping[str, Any]]], rows_per_group: int = 512
) -> int:
    """Write ``(key, row)`` samples as one Parquet file of :data:`PARQUET_ARROW` (image bytes as they were, the
    caption as UTF-8 text, the ``.json`` a tar would hold) to ``sink``. Returns the number of samples."""
    n = 0
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), PARQUET_ARROW, compression="zstd") as writer:
        rows: list[dict[str, Any]] = []
        for key, row in samples:
            caption = row["caption"].decode("utf-8", "replace") if row["caption"] is not None else None
            rows.append({"key": key, "uid": row["uid"], "image": row["image"], "image_ext": row["image_ext"],
                         "caption": caption, "json": sample_json(row, key).decode("utf-8")})  # fmt: skip
            n += 1
            if len(rows) >= rows_per_group:
                writer.write_table(pa.Table.from_pylist(rows, schema=PARQUET_ARROW))
                rows.clear()
        if rows or n == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=PARQUET_ARROW))
    return n


def write_fn(
    out_dir: str, fmt: str, samples_per_shard: int
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the write stage: its rows (sorted by ``shard``, ``position``) become one file
    per shard, written under a temporary name then moved to :func:`shard_name` (a reader never sees half a shard);
    one ``shard`` row per file (samples, bytes, sha256, uids) and one ``missing`` row per sample not copied."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows = (row for batch in batches for row in batch.to_pylist())
        for shard, group in itertools.groupby(rows, key=lambda r: int(r["shard"])):
            yield _write_shard(out_dir, fmt, samples_per_shard, shard, group)

    return run


def _write_shard(
    out_dir: str, fmt: str, samples_per_shard: int, shard: int, rows: Iterable[dict[str, Any]]
) -> pa.RecordBatch:
    """Stream ``rows`` (one shard's, by position) into its file: one Arrow batch of rows in memory at a time."""
    uids: list[str] = []
    sources: set[str] = set()
    lost: list[dict[str, Any]] = []
    base = shard * samples_per_shard

    def samples() -> Iterator[tuple[str, dict[str, Any]]]:
        for r in rows:
            if r["reason"] is not None:
                lost.append({"kind": "missing", "shard": shard, "uid": r["uid"], "source": r["source"],
                             "source_row": r["source_row"], "reason": r["reason"], "error": r["error"]})  # fmt: skip
                continue
            uids.append(r["uid"])
            sources.add(r["source"])
            yield sample_key(shard, int(r["position"]) - base, samples_per_shard), r

    name = shard_name(shard, fmt)
    fs, root = arrow_path(out_dir)
    final = f"{root.rstrip('/')}/{name}"
    temp = f"{final}{TEMP_MARK}{uuid.uuid4().hex[:12]}"
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(temp) as stream:
        sink = HashingSink(stream)
        n = (write_tar if fmt == "webdataset" else write_parquet)(sink, samples())
    fs.move(temp, final)
    out: list[dict[str, Any]] = [
        {"kind": "shard", "shard": shard, "name": name, "samples": n, "bytes": sink.size,
         "sha256": sink.digest.hexdigest(), "uids": uids, "sources": sorted(sources)},
        *lost,
    ]  # fmt: skip
    return pa.RecordBatch.from_pylist(out, schema=RESULT_ARROW)


def file_digest(uri: str) -> tuple[int, str] | None:
    """``(size, sha256)`` of a file, None when it is not there (the resume check of a finished shard)."""
    fs, local = arrow_path(uri)
    if fs.get_file_info(local).type != pafs.FileType.File:
        return None
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(local) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
