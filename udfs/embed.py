"""The embedding UDF: Arrow batches of (uid, caption, image bytes or path) in, unit embeddings out.

:func:`embed_fn` is a factory for ``DataFrame.mapInArrow`` (the Arrow form of an Iterator pandas UDF):
the model is built once per Python worker through an injected loader (keyed cache), then every
batch goes through

1. fetch (image paths only) and decode + resize on a CPU thread pool, one batch ahead of the model,
   so decoding overlaps with encoding;
2. captions cleaned (:func:`clipsift.udfs.decode.decode_caption`);
3. images and captions encoded in batches of ``image_batch_size`` / ``text_batch_size``.

Every input row leaves with a status: ``ok``, or why its image or caption has no embedding. A bad
row never raises; only a failure that hits every row of a batch (a systemic one, such as a broken
model or CUDA out of memory) stops the task, so Spark retries it instead of writing nulls.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from clipsift.udfs.decode import decode_caption, decode_image, prepare_image
from clipsift.udfs.models import Encoder, ModelSpec, get_model
from clipsift.udfs.readers import FileTooLargeError, read_bytes

LOG = logging.getLogger("clipsift.embed")

OK = "ok"
UNREADABLE_FILE = "unreadable_file"
EXTREME_ASPECT = "extreme_aspect_ratio"
IMAGE_TOO_LARGE = "image_too_large"
ENCODE_FAILED = "encode_failed"
#: Failures worth another try on a rerun (the others are properties of the data).
RETRYABLE = (UNREADABLE_FILE, ENCODE_FAILED)

#: Canonical input columns of the UDF (the job renames the user's columns to these).
UID, CAPTION, IMAGE, IMAGE_PATH = "uid", "caption", "image", "image_path"
_CONSUMED = (UID, CAPTION, IMAGE, IMAGE_PATH)


@dataclass(frozen=True)
class EmbedSettings:
    """How batches are formed and rows are checked; everything here is plain data (pickled to executors)."""

    image_batch_size: int = 256
    text_batch_size: int = 1024
    decode_threads: int = 4
    prefetch_batches: int = 2
    """Batches decoded ahead of the one being encoded."""
    max_pixels: int = 50_000_000
    """Images with more pixels are rejected from their header (``too_many_pixels``), before decoding."""
    max_image_bytes: int = 64 << 20
    """Images of more bytes are rejected (``image_too_large``): a file by path from its size, before it is read;
    inline bytes before they are decoded."""
    max_aspect_ratio: float = 200.0
    max_caption_chars: int = 4096
    """Captions are cut to this many characters before the tokenizer (which truncates to its context)."""
    dtype: str = "float32"
    """``float32``: ``array<float>`` columns; ``float16``: little-endian half floats in a ``binary`` column."""
    log_every_rows: int = 10_000


def output_ddl(dtype: str, passthrough_ddl: str = "") -> str:
    """Spark DDL of :func:`embed_fn`'s output; ``passthrough_ddl`` declares the extra input columns it carries."""
    emb = "binary" if dtype == "float16" else "array<float>"
    ddl = (
        f"uid string, caption string, image_emb {emb}, text_emb {emb}, image_status string, "
        "text_status string, status string, error string, image_width int, image_height int, "
        "precision string, device string"
    )
    return f"{ddl}, {passthrough_ddl}" if passthrough_ddl else ddl


def output_schema(dtype: str) -> pa.Schema:
    """Arrow schema matching :func:`output_ddl`."""
    emb = pa.binary() if dtype == "float16" else pa.list_(pa.float32())
    return pa.schema(
        [
            ("uid", pa.string()),
            ("caption", pa.string()),
            ("image_emb", emb),
            ("text_emb", emb),
            ("image_status", pa.string()),
            ("text_status", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("image_width", pa.int32()),
            ("image_height", pa.int32()),
            ("precision", pa.string()),
            ("device", pa.string()),
        ]
    )


@dataclass
class EmbedStats:
    """Counters and time split of one worker's batches (for the progress log and benchmarks)."""

    rows: int = 0
    ok: int = 0
    fetch_decode_s: float = 0.0
    """Thread time spent fetching, decoding and resizing (summed over threads)."""
    wait_s: float = 0.0
    """Time the model waited for decoded batches (decode did not keep up when this is large)."""
    image_s: float = 0.0
    text_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def line(self) -> str:
        wall = max(time.perf_counter() - self.started, 1e-9)
        return (
            f"embedded {self.rows} rows ({self.ok} ok) at {self.rows / wall:.1f} rows/s; "
            f"model images {self.image_s:.1f}s, texts {self.text_s:.1f}s, waiting for decode {self.wait_s:.1f}s, "
            f"decode thread time {self.fetch_decode_s:.1f}s"
        )


@dataclass
class Prepared:
    """A batch after fetch and decode: pixels of the good images, cleaned captions, statuses."""

    uid: pa.Array
    extra: list[tuple[str, pa.Array]]
    """Input columns other than uid, caption and the image, carried to the output unchanged."""
    pixels: np.ndarray
    image_rows: np.ndarray
    captions: list[str | None]
    image_status: list[str]
    text_status: list[str]
    errors: list[str | None]
    width: list[int | None]
    height: list[int | None]


Fetch = Callable[[str], bytes]
"""Reads an image path's bytes; may raise :class:`~clipsift.udfs.readers.FileTooLargeError` for a file over a limit
(``image_too_large``), any other exception is ``unreadable_file``. What it returns is held to
``EmbedSettings.max_image_bytes`` as well."""


def prepare_batch(
    batch: pa.RecordBatch, encoder: Encoder, settings: EmbedSettings, pool: ThreadPoolExecutor, fetch: Fetch | None
) -> tuple[Prepared, float]:
    """Fetch and decode a batch's images on ``pool`` and clean its captions; never raises for bad rows.

    Returns:
        The prepared batch and the thread time its images took.
    """
    ident = encoder.identity
    names = batch.schema.names
    n = batch.num_rows
    if IMAGE in names:
        sources: list[object] = batch.column(names.index(IMAGE)).to_pylist()
        from_path = False
    else:
        sources = batch.column(names.index(IMAGE_PATH)).to_pylist()
        from_path = True

    cap = settings.max_image_bytes
    read = fetch or functools.partial(read_bytes, max_bytes=cap)

    def one(src: object) -> tuple[np.ndarray | None, str, str | None, int | None, int | None, float]:
        t0 = time.perf_counter()
        data: bytes | None
        if from_path and src is not None:
            try:
                data = read(str(src))
            except FileTooLargeError as e:
                return None, IMAGE_TOO_LARGE, f"{str(e)[:300]} (embed.max_image_bytes)", None, None, 0.0
            except Exception as e:
                return None, UNREADABLE_FILE, f"{type(e).__name__}: {str(e)[:200]}", None, None, 0.0
        else:
            data = src  # type: ignore[assignment]  # bytes or None from a binary column
        if data is not None and len(data) > cap:
            where = f"{src} holds" if from_path else "inline image of"
            msg = f"{where} {len(data):,} bytes, over the limit of {cap:,} (embed.max_image_bytes); not decoded"
            return None, IMAGE_TOO_LARGE, msg, None, None, time.perf_counter() - t0
        img, status, error = decode_image(data, max_pixels=settings.max_pixels)
        if img is None:
            return None, status, error, None, None, time.perf_counter() - t0
        w, h = img.size
        if max(w, h) > settings.max_aspect_ratio * min(w, h):
            msg = f"aspect ratio {w}x{h} is beyond max_aspect_ratio {settings.max_aspect_ratio:g}"
            return None, EXTREME_ASPECT, msg, w, h, time.perf_counter() - t0
        try:
            pixels = prepare_image(
                img, ident.image_size, interpolation=ident.interpolation, resize_mode=ident.resize_mode
            )
        except Exception as e:
            return None, ENCODE_FAILED, f"resize: {type(e).__name__}: {str(e)[:200]}", w, h, time.perf_counter() - t0
        return pixels, OK, None, w, h, time.perf_counter() - t0

    results = list(pool.map(one, sources))
    image_rows = np.array([i for i, r in enumerate(results) if r[0] is not None], dtype=np.int64)
    size = ident.image_size
    pixels = np.empty((len(image_rows), size, size, 3), dtype=np.uint8)
    for j, i in enumerate(image_rows):
        pixels[j] = results[i][0]
    raw_captions = batch.column(names.index(CAPTION)).to_pylist()
    captions: list[str | None] = []
    text_status: list[str] = []
    errors: list[str | None] = []
    for i in range(n):
        text, t_status, t_error = decode_caption(raw_captions[i], max_chars=settings.max_caption_chars)
        captions.append(text)
        text_status.append(t_status)
        errors.append(_join_errors(results[i][2], t_error))
    prepared = Prepared(
        uid=batch.column(names.index(UID)),
        extra=[(name, batch.column(i)) for i, name in enumerate(names) if name not in _CONSUMED],
        pixels=pixels,
        image_rows=image_rows,
        captions=captions,
        image_status=[r[1] for r in results],
        text_status=text_status,
        errors=errors,
        width=[r[3] for r in results],
        height=[r[4] for r in results],
    )
    return prepared, sum(r[5] for r in results)


def _join_errors(a: str | None, b: str | None) -> str | None:
    if a and b:
        return f"image: {a}; caption: {b}"
    if a:
        return f"image: {a}"
    if b:
        return f"caption: {b}"
    return None


def _encode_rows(
    encode: Callable[[list[int]], np.ndarray],
    probe: Callable[[], object],
    rows: list[int],
    batch_size: int,
    dim: int,
    what: str,
) -> tuple[np.ndarray, dict[int, str]]:
    """Encode ``rows`` in chunks; a failing chunk is retried row by row so one bad row fails alone.

    Raises:
        Exception: the chunk's error when every row of a failing chunk fails and so does ``probe``, an
            encoding of a known-good input (a systemic failure: broken model, device out of memory).
    """
    out = np.zeros((len(rows), dim), dtype=np.float32)
    failed: dict[int, str] = {}
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        try:
            out[lo : lo + len(chunk)] = encode(chunk)
            continue
        except Exception as chunk_error:
            errors: dict[int, str] = {}
            for j, row in enumerate(chunk):
                try:
                    out[lo + j] = encode([row])[0]
                except Exception as e:
                    errors[row] = f"{what} encoder: {type(e).__name__}: {str(e)[:200]}"
            if len(errors) == len(chunk):
                try:
                    probe()
                except Exception:
                    raise chunk_error from None
            failed.update(errors)
    return out, failed


def encode_prepared(encoder: Encoder, p: Prepared, settings: EmbedSettings, stats: EmbedStats) -> pa.RecordBatch:
    """Run the model over a prepared batch and build the output Arrow batch."""
    n = len(p.captions)
    dim, size = encoder.identity.embed_dim, encoder.identity.image_size
    image_status = list(p.image_status)
    text_status = list(p.text_status)
    errors = list(p.errors)

    t0 = time.perf_counter()
    img_pos = {int(row): j for j, row in enumerate(p.image_rows)}
    img, img_failed = _encode_rows(
        lambda rows: encoder.encode_images(p.pixels[[img_pos[r] for r in rows]]),
        lambda: encoder.encode_images(np.zeros((1, size, size, 3), dtype=np.uint8)),
        [int(r) for r in p.image_rows],
        settings.image_batch_size,
        dim,
        "image",
    )
    t1 = time.perf_counter()
    text_rows = [i for i in range(n) if text_status[i] == OK]
    txt, txt_failed = _encode_rows(
        lambda rows: encoder.encode_texts([p.captions[r] or "" for r in rows]),
        lambda: encoder.encode_texts(["a photo"]),
        text_rows,
        settings.text_batch_size,
        dim,
        "text",
    )
    t2 = time.perf_counter()
    for row, msg in img_failed.items():
        image_status[row] = ENCODE_FAILED
        errors[row] = _join_errors(msg, None) if errors[row] is None else f"{errors[row]}; {msg}"
    for row, msg in txt_failed.items():
        text_status[row] = ENCODE_FAILED
        errors[row] = _join_errors(None, msg) if errors[row] is None else f"{errors[row]}; {msg}"

    image_full = np.zeros((n, dim), dtype=np.float32)
    image_full[p.image_rows] = img
    text_full = np.zeros((n, dim), dtype=np.float32)
    text_full[np.array(text_rows, dtype=np.int64)] = txt
    image_ok = np.array([s == OK for s in image_status], dtype=bool)
    text_ok = np.array([s == OK for s in text_status], dtype=bool)
    status = [
        OK if (i_s == OK and t_s == OK) else (i_s if i_s != OK else t_s)
        for i_s, t_s in zip(image_status, text_status, strict=True)
    ]
    stats.rows += n
    stats.ok += int((image_ok & text_ok).sum())
    stats.image_s += t1 - t0
    stats.text_s += t2 - t1
    schema = output_schema(settings.dtype)
    for name, column in p.extra:
        schema = schema.append(pa.field(name, column.type))
    return pa.RecordBatch.from_arrays(
        [
            p.uid.cast(pa.string()),
            pa.array(p.captions, pa.string()),
            embedding_array(image_full, image_ok, settings.dtype),
            embedding_array(text_full, text_ok, settings.dtype),
            pa.array(image_status, pa.string()),
            pa.array(text_status, pa.string()),
            pa.array(status, pa.string()),
            pa.array(errors, pa.string()),
            pa.array(p.width, pa.int32()),
            pa.array(p.height, pa.int32()),
            pa.array([encoder.precision] * n, pa.string()),
            pa.array([encoder.device] * n, pa.string()),
            *(column for _, column in p.extra),
        ],
        schema=schema,
    )


def embedding_array(mat: np.ndarray, keep: np.ndarray, dtype: str) -> pa.Array:
    """Rows of ``mat`` as ``list<float>`` (or ``binary`` float16), null where ``keep`` is False."""
    n, dim = mat.shape
    mask = pa.array(~keep)
    if dtype == "float16":
        half = np.ascontiguousarray(mat, dtype="<f2")
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * (2 * dim))
        arr = pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets.buffers()[1], pa.py_buffer(half.tobytes())])
        return pa.compute.if_else(mask, pa.scalar(None, pa.binary()), arr)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(mat).reshape(-1)), mask=mask)


def rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Slices of at most ``rows`` rows (Arrow batches from Spark can be any size)."""
    for batch in batches:
        for lo in range(0, batch.num_rows, rows):
            yield batch.slice(lo, rows)


def embed_batches(
    batches: Iterator[pa.RecordBatch],
    encoder: Encoder,
    settings: EmbedSettings,
    fetch: Fetch | None = None,
    stats: EmbedStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Embed a stream of batches, decoding up to ``prefetch_batches`` ahead of the model.

    This is the whole work of one Spark task, and what benchmarks run without Spark.
    """
    stats = stats if stats is not None else EmbedStats()
    logged = 0
    source = rebatch(batches, settings.image_batch_size)
    with ThreadPoolExecutor(settings.decode_threads) as pool, ThreadPoolExecutor(1) as ahead:
        queue: deque[Future[tuple[Prepared, float]]] = deque()

        def submit_next() -> None:
            batch = next(source, None)
            if batch is not None:
                queue.append(ahead.submit(prepare_batch, batch, encoder, settings, pool, fetch))

        for _ in range(max(1, settings.prefetch_batches)):
            submit_next()
        while queue:
            t0 = time.perf_counter()
            prepared, decode_s = queue.popleft().result()
            stats.wait_s += time.perf_counter() - t0
            stats.fetch_decode_s += decode_s
            submit_next()
            yield encode_prepared(encoder, prepared, settings, stats)
            if stats.rows - logged >= settings.log_every_rows:
                logged = stats.rows
                LOG.info(stats.line())
    LOG.info("task done: %s", stats.line())


Loader = Callable[[ModelSpec], Encoder]


def embed_fn(
    spec: ModelSpec, settings: EmbedSettings, loader: Loader = get_model, fetch: Fetch | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function embedding ``uid, caption, image|image_path`` batches.

    Args:
        spec: the model; ``loader(spec)`` runs on the executor (cached per worker by the default loader).
        settings: batch sizes, decode threads, limits and output dtype.
        loader: builds (or fetches from a cache) the encoder; tests may inject their own.
        fetch: reads an image path's bytes; None: :func:`~clipsift.udfs.readers.read_bytes` (local, ``/Volumes/``,
            ``dbfs:/``, ``s3a://``, ``gs://``, ``hdfs://``), which refuses a file over ``settings.max_image_bytes``
            from its size, before reading it. A fetcher of its own should refuse such files itself: what it
            returns is checked only after it is read.
    """

    def embed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _log_to_stderr()
        encoder = loader(task_device(spec))
        yield from embed_batches(batches, encoder, settings, fetch)

    return embed


def _log_to_stderr() -> None:
    """Progress lines on the Python worker's stderr (the executor's log in the Spark UI)."""
    if not LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False


def task_device(spec: ModelSpec) -> ModelSpec:
    """``spec`` on the GPU Spark assigned to the running task, when its device is ``auto`` and there is one.

    On an executor with several GPUs each task gets its own (``spark.task.resource.gpu.amount``); the
    device is part of the spec, so the per-worker cache keeps one model per GPU.
    """
    if spec.device != "auto":
        return spec
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is None or not gpus.addresses:
        return spec
    return dataclasses.replace(spec, device=f"cuda:{gpus.addresses[0]}")
