"""Unit tests for ``clipsift.udfs.embed``: the embedding UDF body on plain Arrow batches, with the tiny real model
(no Spark).

Rows go through :func:`clipsift.udfs.embed.embed_batches` as ``mapInArrow`` would feed them: ``uid`` (string),
``caption`` (binary), ``image`` (binary) or ``image_path`` (string), plus extra columns that must come out unchanged.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from clipsift.udfs.arrow import half_to_lists, to_matrix
from clipsift.udfs.decode import IMAGE_NULL, IMAGE_OK, TEXT_EMPTY, TEXT_INVALID_UTF8, TEXT_NULL, TEXT_OK
from clipsift.udfs.embed import (
    ENCODE_FAILED,
    EXTREME_ASPECT,
    IMAGE_TOO_LARGE,
    OK,
    UNREADABLE_FILE,
    EmbedSettings,
    embed_batches,
    embed_fn,
    output_ddl,
    output_schema,
)
from clipsift.udfs.models import ClipEncoder, ModelIdentity, ModelSpec, get_model
from tests.support.corpus import broken_image_corpus, tuxpaint_stamps
from tests.support.models import tiny_spec

pytest.importorskip("open_clip")

DIM = 32
Stamps = list[tuple[str, bytes, str]]
#: Small batches, two decode threads: what a 2-core test machine can run quickly.
SETTINGS = EmbedSettings(image_batch_size=64, text_batch_size=64, decode_threads=2, prefetch_batches=1)


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return get_model(tiny_spec())


@pytest.fixture(scope="module")
def stamps() -> Stamps:
    """Eight real (key, png bytes, English caption) tuxpaint stamps."""
    try:
        return tuxpaint_stamps(limit=8)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def _batch(
    uids: list[str],
    captions: list[Any],
    images: list[Any],
    *,
    paths: bool = False,
    extra: dict[str, pa.Array] | None = None,
) -> pa.RecordBatch:
    columns: dict[str, pa.Array] = {
        "uid": pa.array(uids, pa.string()),
        "caption": pa.array([c.encode() if isinstance(c, str) else c for c in captions], pa.binary()),
    }
    if paths:
        columns["image_path"] = pa.array(images, pa.string())
    else:
        columns["image"] = pa.array(images, pa.binary())
    columns.update(extra or {})
    return pa.RecordBatch.from_pydict(columns)


def _stamp_batch(stamps: Stamps, extra: dict[str, pa.Array] | None = None) -> pa.RecordBatch:
    return _batch([k for k, _, _ in stamps], [c for _, _, c in stamps], [d for _, d, _ in stamps], extra=extra)


def _run(
    batches: list[pa.RecordBatch],
    encoder: Any,
    settings: EmbedSettings = SETTINGS,
    fetch: Callable[[str], bytes] | None = None,
) -> pa.Table:
    out = list(embed_batches(iter(batches), encoder, settings, fetch))
    return pa.Table.from_batches(out) if out else pa.table({})


def _vectors(table: pa.Table, column: str) -> list[np.ndarray | None]:
    """Each row's embedding as float32, None for a null (list<float> or float16 binary)."""
    arr = table.column(column).combine_chunks()
    if pa.types.is_binary(arr.type):
        return [None if v is None else np.frombuffer(v, "<f2").astype(np.float32) for v in arr.to_pylist()]
    return [None if v is None else np.asarray(v, np.float32) for v in arr.to_pylist()]


def _stack(vectors: list[np.ndarray | None]) -> np.ndarray:
    """Rows that must all be present, as one matrix."""
    assert all(v is not None for v in vectors)
    return np.stack([v for v in vectors if v is not None])


def _dense(table: pa.Table, column: str) -> np.ndarray:
    """Embeddings of a column without nulls as one matrix."""
    return to_matrix(table.column(column), DIM)


def _assert_unit_rows(vectors: list[np.ndarray | None]) -> None:
    for v in vectors:
        assert v is not None
        assert v.shape == (DIM,)
        assert np.isfinite(v).all()
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


class _Wrapped:
    """An injected encoder (the ``Encoder`` protocol) around the real one, failing where told to."""

    def __init__(
        self,
        inner: ClipEncoder,
        bad_text: Callable[[str], bool] = lambda _: False,
        bad_image: Callable[[np.ndarray], bool] = lambda _: False,
    ) -> None:
        self.inner = inner
        self.identity: ModelIdentity = inner.identity
        self.precision = inner.precision
        self.device = inner.device
        self.bad_text = bad_text
        self.bad_image = bad_image
        self.text_calls = 0

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if any(self.bad_image(p) for p in pixels):
            raise RuntimeError("image kernel failed")
        return self.inner.encode_images(pixels)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.text_calls += 1
        if any(self.bad_text(t) for t in texts):
            raise RuntimeError("text kernel failed")
        return self.inner.encode_texts(texts)


# --------------------------------------------------------------------------------------------------
# Rows, order, schema


def test_rows_come_out_in_order_with_the_output_schema(encoder: ClipEncoder, stamps: Stamps) -> None:
    batch = _stamp_batch(stamps)
    pieces = [batch.slice(0, 3), batch.slice(3, 0), batch.slice(3, 5)]
    out = _run(pieces, encoder)
    assert out.num_rows == len(stamps)
    assert out.column("uid").to_pylist() == [k for k, _, _ in stamps]
    assert out.column("caption").to_pylist() == [c for _, _, c in stamps]
    assert out.schema == output_schema("float32")
    assert set(out.column("status").to_pylist()) == {OK}
    assert set(out.column("precision").to_pylist()) == {"fp32"}
    assert set(out.column("device").to_pylist()) == {"cpu"}
    assert out.column("error").null_count == out.num_rows
    sizes = [Image.open(io.BytesIO(d)).size for _, d, _ in stamps]
    assert (
        list(zip(out.column("image_width").to_pylist(), out.column("image_height").to_pylist(), strict=True)) == sizes
    )
    _assert_unit_rows(_vectors(out, "image_emb"))
    _assert_unit_rows(_vectors(out, "text_emb"))
    # Real rows: the embeddings are the encoder's, row for row (not shuffled between rows).
    images = _dense(out, "image_emb")
    assert np.abs(images[0] - images[-1]).max() > 1e-3
    np.testing.assert_allclose(_dense(out, "text_emb"), encoder.encode_texts([c for _, _, c in stamps]), atol=1e-5)


def test_output_ddl_names_match_output_schema() -> None:
    for dtype, emb in (("float32", "array<float>"), ("float16", "binary")):
        ddl = output_ddl(dtype, "source string, source_row bigint")
        fields = [part.strip().split(" ", 1) for part in ddl.split(", ")]
        assert [name for name, _ in fields] == [*output_schema(dtype).names, "source", "source_row"]
        assert dict(fields)["image_emb"] == emb and dict(fields)["text_emb"] == emb


# --------------------------------------------------------------------------------------------------
# Image failures


def test_broken_corpus_statuses(encoder: ClipEncoder) -> None:
    corpus = broken_image_corpus()
    n = len(corpus)
    batch = _batch([name for name, _, _ in corpus], ["a picture"] * n, [data for _, data, _ in corpus])
    # png_3000x10 decodes fine; its 300:1 aspect is checked separately (test_extreme_aspect_ratio).
    out = _run([batch], encoder, EmbedSettings(image_batch_size=n, decode_threads=2, max_aspect_ratio=400))
    rows = out.to_pylist()
    assert [r["uid"] for r in rows] == [name for name, _, _ in corpus]
    got = {r["uid"]: r["image_status"] for r in rows}
    assert got == {name: expected for name, _, expected in corpus}
    assert {s for _, _, s in corpus} - {IMAGE_OK}, "the corpus must hold failures"
    image_emb, text_emb = _vectors(out, "image_emb"), _vectors(out, "text_emb")
    for r, img, txt in zip(rows, image_emb, text_emb, strict=True):
        assert r["text_status"] == TEXT_OK
        assert txt is not None  # the caption is embedded whatever happened to the image
        assert r["status"] == r["image_status"], r["uid"]
        if r["image_status"] == IMAGE_OK:
            _assert_unit_rows([img])
            assert r["error"] is None
            assert r["image_width"] and r["image_height"]
        else:
            assert img is None, r["uid"]
            assert r["error"] and r["error"].startswith("image: "), r
            assert r["image_width"] is None and r["image_height"] is None
    _assert_unit_rows(text_emb)


def test_extreme_aspect_ratio(encoder: ClipEncoder) -> None:
    batch = _batch(["thin", "wide", "fine"], ["a", "b", "c"], [_png(1, 500), _png(500, 2), _png(1, 150)])
    out = _run([batch], encoder, EmbedSettings(max_aspect_ratio=200, decode_threads=2))
    rows = out.to_pylist()
    assert [r["image_status"] for r in rows] == [EXTREME_ASPECT, EXTREME_ASPECT, OK]
    assert [r["status"] for r in rows] == [EXTREME_ASPECT, EXTREME_ASPECT, OK]
    assert (rows[0]["image_width"], rows[0]["image_height"]) == (1, 500)
    assert "aspect" in rows[0]["error"]
    image_emb = _vectors(out, "image_emb")
    assert image_emb[0] is None and image_emb[1] is None
    _assert_unit_rows(image_emb[2:])
    _assert_unit_rows(_vectors(out, "text_emb"))
    # The limit is a setting: 1000 lets the 1x500 image through.
    relaxed = _run([batch], encoder, EmbedSettings(max_aspect_ratio=1000, decode_threads=2))
    assert relaxed.column("image_status").to_pylist() == [OK, OK, OK]


# --------------------------------------------------------------------------------------------------
# Caption failures and the row status


def test_caption_statuses_and_the_row_status(encoder: ClipEncoder) -> None:
    good = _png(40, 30)
    captions = [None, b"", b"  \t\n ", b"caf\xc3\xa9 \xff\xfe broken", "\ufeff  a red square ", None]
    images = [good, good, good, good, good, None]
    out = _run([_batch([f"u{i}" for i in range(6)], captions, images)], encoder)
    rows = out.to_pylist()
    text_statuses = [TEXT_NULL, TEXT_EMPTY, TEXT_EMPTY, TEXT_INVALID_UTF8, TEXT_OK, TEXT_NULL]
    assert [r["text_status"] for r in rows] == text_statuses
    assert [r["image_status"] for r in rows] == [OK, OK, OK, OK, OK, IMAGE_NULL]
    # The image's failure wins, else the caption's.
    assert [r["status"] for r in rows] == [TEXT_NULL, TEXT_EMPTY, TEXT_EMPTY, TEXT_INVALID_UTF8, OK, IMAGE_NULL]
    assert [r["caption"] for r in rows] == [None, None, None, None, "a red square", None]
    text_emb, image_emb = _vectors(out, "text_emb"), _vectors(out, "image_emb")
    assert [v is None for v in text_emb] == [True, True, True, True, False, True]
    _assert_unit_rows(image_emb[:5])
    assert image_emb[5] is None
    for r in rows[:4]:
        assert r["error"] and r["error"].startswith("caption: "), r
    assert "byte" in rows[3]["error"]
    assert rows[4]["error"] is None
    assert "image: " in rows[5]["error"] and "caption: " in rows[5]["error"]


# --------------------------------------------------------------------------------------------------
# Image paths


def test_image_paths_local_files(encoder: ClipEncoder, stamps: Stamps, tmp_path: Path) -> None:
    paths = []
    for i, (_, data, _) in enumerate(stamps[:3]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        paths.append(str(path))
    missing = str(tmp_path / "missing.png")
    uids = ["a", "b", "c", "gone", "none"]
    captions = [c for _, _, c in stamps[:3]] + ["x", "y"]
    out = _run([_batch(uids, captions, [*paths, missing, None], paths=True)], encoder)
    rows = out.to_pylist()
    assert [r["image_status"] for r in rows] == [OK, OK, OK, UNREADABLE_FILE, IMAGE_NULL]
    assert [r["status"] for r in rows] == [OK, OK, OK, UNREADABLE_FILE, IMAGE_NULL]
    assert "FileNotFoundError" in rows[3]["error"]
    assert [r["text_status"] for r in rows] == [TEXT_OK] * 5
    image_emb = _vectors(out, "image_emb")
    assert image_emb[3] is None and image_emb[4] is None
    # The same bytes given inline embed the same.
    inline = _run([_stamp_batch(stamps[:3])], encoder)
    np.testing.assert_allclose(_stack(image_emb[:3]), _dense(inline, "image_emb"), atol=1e-6)


def test_image_paths_use_the_fetch_function(encoder: ClipEncoder, stamps: Stamps) -> None:
    store = {f"mem://bucket/{i}.png": data for i, (_, data, _) in enumerate(stamps[:2])}
    asked: list[str] = []

    def fetch(uri: str) -> bytes:
        asked.append(uri)
        if uri not in store:
            raise PermissionError(f"access denied: {uri}")
        return store[uri]

    uris = [*store, "mem://bucket/private.png"]
    out = _run([_batch(["a", "b", "c"], ["x", "y", "z"], uris, paths=True)], encoder, fetch=fetch)
    assert sorted(asked) == sorted(uris)
    rows = out.to_pylist()
    assert [r["image_status"] for r in rows] == [OK, OK, UNREADABLE_FILE]
    assert "PermissionError" in rows[2]["error"] and "access denied" in rows[2]["error"]
    inline = _run([_stamp_batch(stamps[:2])], encoder)
    np.testing.assert_allclose(_stack(_vectors(out, "image_emb")[:2]), _dense(inline, "image_emb"), atol=1e-6)


def test_images_over_max_image_bytes_get_image_too_large(encoder: ClipEncoder, stamps: Stamps, tmp_path: Path) -> None:
    """A (sparse) image file of 3x the limit is refused unread, inline bytes over it undecoded, by the default
    fetcher and after a fetcher of one's own; their captions are still embedded."""
    small = stamps[0][1]
    cap = len(small)
    settings = dataclasses.replace(SETTINGS, max_image_bytes=cap)
    good, huge = tmp_path / "good.png", tmp_path / "huge.png"
    good.write_bytes(small)
    with open(huge, "wb") as f:
        f.truncate(3 * cap)
    paths = [str(good), str(huge)]
    by_path = _run([_batch(["good", "huge"], ["a cat", "a dog"], paths, paths=True)], encoder, settings)
    inline = _run([_batch(["good", "big"], ["a cat", "a dog"], [small, small + b"\0"])], encoder, settings)
    fetched = _run(
        [_batch(["good", "big"], ["a cat", "a dog"], ["mem://good", "mem://big"], paths=True)],
        encoder,
        settings,
        fetch={"mem://good": small, "mem://big": small + b"\0"}.__getitem__,
    )
    for out in (by_path, inline, fetched):
        rows = out.to_pylist()
        assert [r["image_status"] for r in rows] == [OK, IMAGE_TOO_LARGE], rows
        assert [r["status"] for r in rows] == [OK, IMAGE_TOO_LARGE]
        assert "embed.max_image_bytes" in rows[1]["error"] and f"{cap:,}" in rows[1]["error"]
        assert _vectors(out, "image_emb")[1] is None and _vectors(out, "text_emb")[1] is not None
    assert f"{3 * cap:,} bytes" in by_path.to_pylist()[1]["error"] and "not read" in by_path.to_pylist()[1]["error"]
    assert EmbedSettings().max_image_bytes == 64 << 20


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "64MiB"])
def test_max_image_bytes_must_be_a_positive_integer(value: str) -> None:
    from clipsift.jobs.config import ConfigError, EmbedConfig, load

    examples = Path(__file__).resolve().parents[2] / "examples"
    assert load(EmbedConfig, examples / "embed.yaml").embed.max_image_bytes == 64 << 20
    with pytest.raises(ConfigError) as err:
        load(EmbedConfig, examples / "embed.yaml", [f"embed.max_image_bytes={value}"])
    assert err.value.key == "embed.max_image_bytes"


# --------------------------------------------------------------------------------------------------
# float16 output, determinism, batch sizes


def _half_and_full(encoder: ClipEncoder, stamps: Stamps) -> tuple[pa.Table, pa.Table]:
    batch = _batch(
        [k for k, _, _ in stamps] + ["bad"],
        [c for _, _, c in stamps] + [None],
        [d for _, d, _ in stamps] + [b"not an image"],
    )
    return _run([batch], encoder, EmbedSettings(dtype="float16", decode_threads=2)), _run([batch], encoder)


def test_float16_output_matches_float32(encoder: ClipEncoder, stamps: Stamps) -> None:
    half, full = _half_and_full(encoder, stamps)
    n = len(stamps)
    assert half.schema == output_schema("float16")
    assert half.column("status").to_pylist() == full.column("status").to_pylist()
    for column in ("image_emb", "text_emb"):
        raw = half.column(column).to_pylist()
        assert [len(v) for v in raw[:n]] == [2 * DIM] * n  # 32 little-endian float16 values
        assert raw[n] is None
        decoded = np.stack([np.frombuffer(v, "<f2").astype(np.float32) for v in raw[:n]])
        reference = _stack(_vectors(full, column)[:n])
        np.testing.assert_allclose(decoded, reference, rtol=0, atol=1e-3)
        assert np.abs(decoded - reference).max() > 0  # really rounded to float16


def test_float16_output_decodes_with_half_to_lists(encoder: ClipEncoder, stamps: Stamps) -> None:
    half, full = _half_and_full(encoder, stamps)
    n = len(stamps)
    for column in ("image_emb", "text_emb"):
        wide = half_to_lists(half.column(column))
        assert wide.type == pa.list_(pa.float32())
        assert wide.null_count == 1 and not wide[n].is_valid
        reference = _stack(_vectors(full, column)[:n])
        np.testing.assert_allclose(to_matrix(wide.slice(0, n), DIM), reference, rtol=0, atol=1e-3)


def test_two_runs_are_identical(encoder: ClipEncoder, stamps: Stamps) -> None:
    first = _run([_stamp_batch(stamps)], encoder)
    second = _run([_stamp_batch(stamps)], encoder)
    assert first.equals(second)


def test_small_batches_embed_like_one_big_batch(encoder: ClipEncoder, stamps: Stamps) -> None:
    batch = _stamp_batch(stamps)
    big = _run([batch], encoder, EmbedSettings(image_batch_size=256, text_batch_size=1024))
    small_settings = EmbedSettings(image_batch_size=3, text_batch_size=2, decode_threads=2, prefetch_batches=2)
    small_batches = list(embed_batches(iter([batch]), encoder, small_settings))
    assert [b.num_rows for b in small_batches] == [3, 3, 2]
    small = pa.Table.from_batches(small_batches)
    assert small.column("uid").to_pylist() == big.column("uid").to_pylist()
    for column in ("image_emb", "text_emb"):
        np.testing.assert_allclose(_dense(small, column), _dense(big, column), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Encoder failures: one bad row fails alone, a broken model stops the task


def test_a_caption_the_encoder_rejects_fails_alone(encoder: ClipEncoder, stamps: Stamps) -> None:
    captions = [c for _, _, c in stamps]
    captions[2] = "poison caption"
    batch = _batch([k for k, _, _ in stamps], captions, [d for _, d, _ in stamps])
    wrapped = _Wrapped(encoder, bad_text=lambda t: t == "poison caption")
    out = _run([batch], wrapped)
    rows = out.to_pylist()
    assert [r["text_status"] for r in rows] == [OK, OK, ENCODE_FAILED] + [OK] * (len(stamps) - 3)
    assert [r["status"] for r in rows] == [OK, OK, ENCODE_FAILED] + [OK] * (len(stamps) - 3)
    assert [r["image_status"] for r in rows] == [OK] * len(stamps)
    assert "text encoder" in rows[2]["error"] and "text kernel failed" in rows[2]["error"]
    assert all(r["error"] is None for i, r in enumerate(rows) if i != 2)
    text_emb = _vectors(out, "text_emb")
    assert text_emb[2] is None
    plain = _run([batch], encoder)
    keep = [i for i in range(len(stamps)) if i != 2]
    np.testing.assert_allclose(_stack([text_emb[i] for i in keep]), _dense(plain, "text_emb")[keep], atol=1e-6)
    np.testing.assert_allclose(_dense(out, "image_emb"), _dense(plain, "image_emb"), atol=1e-6)


def test_an_image_the_encoder_rejects_fails_alone(encoder: ClipEncoder) -> None:
    images = [_png(40, 30, (10 * i, 100, 200)) for i in range(5)]
    images[1] = _png(40, 30, (255, 255, 255))
    wrapped = _Wrapped(encoder, bad_image=lambda p: bool((p == 255).all()))
    out = _run([_batch([f"u{i}" for i in range(5)], ["a", "b", "c", "d", "e"], images)], wrapped)
    rows = out.to_pylist()
    assert [r["image_status"] for r in rows] == [OK, ENCODE_FAILED, OK, OK, OK]
    assert [r["status"] for r in rows] == [OK, ENCODE_FAILED, OK, OK, OK]
    assert [r["text_status"] for r in rows] == [OK] * 5
    assert "image encoder" in rows[1]["error"]
    assert _vectors(out, "image_emb")[1] is None
    _assert_unit_rows(_vectors(out, "text_emb"))


def test_a_rejected_caption_alone_in_its_chunk_still_fails_alone(encoder: ClipEncoder, stamps: Stamps) -> None:
    captions = [c for _, _, c in stamps[:5]]
    captions[4] = "poison caption"  # chunks of 2: [0, 1], [2, 3], [4]
    batch = _batch([k for k, _, _ in stamps[:5]], captions, [d for _, d, _ in stamps[:5]])
    wrapped = _Wrapped(encoder, bad_text=lambda t: t == "poison caption")
    out = _run([batch], wrapped, EmbedSettings(text_batch_size=2, decode_threads=2))
    assert out.column("text_status").to_pylist() == [OK, OK, OK, OK, ENCODE_FAILED]


def test_an_encoder_that_always_fails_stops_the_task(encoder: ClipEncoder, stamps: Stamps) -> None:
    batch = _stamp_batch(stamps)
    broken_text = _Wrapped(encoder, bad_text=lambda _: True)
    with pytest.raises(RuntimeError, match="text kernel failed"):
        _run([batch], broken_text)
    broken_image = _Wrapped(encoder, bad_image=lambda _: True)
    with pytest.raises(RuntimeError, match="image kernel failed"):
        _run([batch], broken_image)


# --------------------------------------------------------------------------------------------------
# Passthrough columns and the mapInArrow factory


def test_extra_columns_pass_through_unchanged(encoder: ClipEncoder, stamps: Stamps) -> None:
    n = len(stamps)
    extra = {
        "source": pa.array([f"shard-{i % 2}" for i in range(n)], pa.string()),
        "source_row": pa.array([None if i == 3 else 10 * i for i in range(n)], pa.int64()),
        "load_error": pa.array([None] * (n - 1) + ["json broken"], pa.string()),
    }
    batch = _stamp_batch(stamps, extra=extra)
    out = _run([batch.slice(0, 5), batch.slice(5)], encoder)
    assert out.schema.names == [*output_schema("float32").names, "source", "source_row", "load_error"]
    for name, values in extra.items():
        assert out.schema.field(name).type == values.type
        assert out.column(name).to_pylist() == values.to_pylist()


def test_embed_fn_works_like_embed_batches(encoder: ClipEncoder, stamps: Stamps) -> None:
    batch = _stamp_batch(stamps, extra={"n": pa.array(range(len(stamps)), pa.int64())})
    spec = tiny_spec()
    fn = embed_fn(spec, SETTINGS)
    via_fn = pa.Table.from_batches(list(fn(iter([batch.slice(0, 4), batch.slice(4)]))))
    direct = _run([batch], encoder)
    assert via_fn.equals(direct)

    loaded: list[ModelSpec] = []

    def loader(s: ModelSpec) -> ClipEncoder:
        loaded.append(s)
        return get_model(s)

    def gen() -> Iterator[pa.RecordBatch]:
        yield batch

    injected = pa.Table.from_batches(list(embed_fn(spec, SETTINGS, loader=loader)(gen())))
    assert loaded == [spec]
    assert injected.equals(direct)
