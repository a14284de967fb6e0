"""Embedding throughput on CPU: the Spark UDF against a bare open_clip loop, same images, same model.

Data: real pictures stored the way img2dataset stores them (Debian's scikit-image sample photos and
tuxpaint stamps, alpha composited onto white, resized so the shorter side is 256, JPEG quality 95),
each with a caption, cycled to N samples. Models: a tiny custom open_clip config and ViT-B-32, both
with seeded random weights, fp32 on the CPU. Every number includes decoding the JPEG bytes.

* **Bare loop** (the baseline): one process, ``torch.set_num_threads(2)``; per batch PIL-open and
  ``.convert("RGB")`` the bytes, open_clip's own preprocess transform, stack, ``encode_image``,
  tokenizer + ``encode_text``, normalise.
* **embed_batches** (the UDF's inner function, :func:`clipsift.udfs.embed.embed_batches`) without Spark: one
  process with 2 torch threads, and two processes with 1 thread each on half the rows (Spark's
  ``local[2]`` layout without Spark). Against the bare loop this isolates our pipeline's cost; the
  :class:`clipsift.udfs.embed.EmbedStats` time split says whether decode or the model limits it.
* **Spark UDF**: ``df.mapInArrow(embed_fn(spec, settings), output_ddl("float32"))`` on a Parquet copy
  of the samples, into Spark's ``noop`` sink (read + decode + model, no Delta write), ``local[2]``:
  (a) 2 tasks with ``ModelSpec(threads=1)``, (b) 1 task with ``threads=2``. Each layout is warmed
  first (the Python workers import torch and build the model), and each task records whether it
  had to build the model, so a timed run that did is visible.

The machine is shared, so every path is timed once per round, in turn, and the best of the rounds
is kept for each: the paths meet the same foreign load. At full sizes each timed path first waits
(up to two minutes) for a moment when other processes use less than a quarter of a core; each
timed result notes the foreign load it met.
* **Job** (``embed_job``): ``clipsift.jobs.embed.run`` on a WebDataset of the same samples, Delta write
  included (tiny model only).

The Spark path and the bare loop are checked to give the same embeddings (max abs difference).
Functions defined inside functions here are shipped to the Python workers by value; they must not
call module-level helpers of this package (the workers cannot import it).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .common import CpuWatch, FreshProcess, ProcessTreeMonitor, Ratio, Report, in_fresh_process, quiet_note, ratio

BENCH = "Embedding (CPU)"
SEED = 0
SKIMAGE_DIR = Path("/usr/lib/python3/dist-packages/skimage/data")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
SHORT_SIDE = 256
JPEG_QUALITY = 95
#: skimage files that are not pictures of anything (a deliberately broken file).
_NOT_PHOTOS = frozenset({"truncated.jpg"})

TINY_NAME = "clipsift-bench-tiny"
#: A tiny open_clip config (ViT 64 px, patch 8, width 128, 2 layers; text width 128, 2 layers, 77 tokens).
TINY_CONFIG_JSON = json.dumps(
    {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
    },
    sort_keys=True,
)

BARE = "bare open_clip loop, 1 process × 2 threads"
PIPE_1x2 = "embed_batches, 1 process × 2 threads"
PIPE_2x1 = "embed_batches, 2 processes × 1 thread, half the rows each"
SPARK_2x1 = "Spark UDF, 2 tasks × 1 thread"
SPARK_1x2 = "Spark UDF, 1 task × 2 threads"
JOB = "clipsift.jobs.embed.run on a WebDataset (2 shards), Delta write"
#: Rows of the untimed first run that warms each path (torch's first calls, thread pools).
WARM_ROWS = 16
#: Longest wait for a quiet machine before each timed path at full sizes (:func:`wait_quiet`).
QUIET_WAIT_S = 120.0


@dataclass(frozen=True)
class ModelCase:
    """One model of the benchmark and the samples and batch sizes it runs at."""

    label: str
    name: str
    config_json: str | None
    samples: int
    image_batch_size: int
    text_batch_size: int

    def spec(self, threads: int) -> Any:
        """The :class:`clipsift.udfs.models.ModelSpec` of this model on the CPU with ``threads`` torch threads."""
        from clipsift.udfs.models import ModelSpec

        return ModelSpec(
            self.name,
            pretrained=None,
            config_json=self.config_json,
            device="cpu",
            precision="fp32",
            seed=SEED,
            threads=threads,
        )

    def settings(self, decode_threads: int = 2) -> Any:
        """The UDF's :class:`clipsift.udfs.embed.EmbedSettings`: this case's batch sizes, 2 decode threads."""
        from clipsift.udfs.embed import EmbedSettings

        return EmbedSettings(
            image_batch_size=self.image_batch_size,
            text_batch_size=self.text_batch_size,
            decode_threads=decode_threads,
            prefetch_batches=2,
        )


@dataclass(frozen=True)
class EmbedSizes:
    """Sizes of the embedding benchmark for one preset of :mod:`.common` (picked by its name)."""

    name: str
    models: tuple[ModelCase, ...]
    repeats: int
    """Timed runs of every measurement (the best one is kept)."""
    check_rows: int
    """Rows whose Spark embeddings are collected and compared with the bare loop's."""
    job_samples: int
    """Samples of the ``embed_job`` WebDataset (tiny model)."""
    quiet_wait_s: float = 0.0
    """Longest wait for a quiet machine before each timed path (see :func:`wait_quiet`)."""


def _tiny(samples: int, batch: int) -> ModelCase:
    return ModelCase("tiny", TINY_NAME, TINY_CONFIG_JSON, samples, batch, batch)


def _b32(samples: int, batch: int) -> ModelCase:
    return ModelCase("ViT-B-32", "ViT-B-32", None, samples, batch, batch)


EMBED_SIZES = {
    "full": EmbedSizes(
        "full", (_tiny(2048, 256), _b32(256, 64)), repeats=3, check_rows=64, job_samples=2048, quiet_wait_s=QUIET_WAIT_S
    ),
    "quick": EmbedSizes("quick", (_tiny(512, 128), _b32(64, 32)), repeats=1, check_rows=32, job_samples=512),
    # A remainder batch included: 50 rows per task in batches of 32.
    "toy": EmbedSizes("toy", (_tiny(100, 32),), repeats=1, check_rows=40, job_samples=64),
}


def embed_sizes(preset: str) -> EmbedSizes:
    """The embedding sizes of a :mod:`.common` preset name (``full``, ``quick``, ``toy``)."""
    return EMBED_SIZES.get(preset, EMBED_SIZES["quick"])


# --------------------------------------------------------------------------------------------------
# Data: real pictures as img2dataset stores them


@dataclass(frozen=True)
class Sample:
    uid: str
    caption: str
    jpeg: bytes


def img2dataset_jpeg(data: bytes, short_side: int = SHORT_SIDE, quality: int = JPEG_QUALITY) -> bytes | None:
    """Re-encode image bytes as img2dataset stores them: RGB (alpha onto white), shorter side resized, JPEG.

    img2dataset's ``keep_ratio`` resize (cv2 ``INTER_AREA`` down, ``INTER_LANCZOS4`` up) is stood in
    for by Pillow's Lanczos filter; the alpha composite is img2dataset's own formula
    (:func:`clipsift.udfs.decode.decode_image`). Returns None for bytes that do not decode.
    """
    from PIL import Image

    from clipsift.udfs.decode import decode_image

    img, _status, _error = decode_image(data)
    if img is None:
        return None
    w, h = img.size
    scale = short_side / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _candidates() -> list[tuple[Path, str]]:
    """``(picture file, caption)`` of every skimage photo and tuxpaint stamp with a caption."""
    out: list[tuple[Path, str]] = []
    if SKIMAGE_DIR.is_dir():
        for p in sorted(SKIMAGE_DIR.iterdir()):
            if p.suffix.lower() in {".png", ".jpg", ".jpeg"} and p.name not in _NOT_PHOTOS:
                out.append((p, f"a picture of {p.stem.replace('_', ' ')}"))
    if TUXPAINT_DIR.is_dir():
        for png in sorted(TUXPAINT_DIR.rglob("*.png")):
            txt = png.with_suffix(".txt")
            if not txt.is_file():
                continue
            lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
            caption = " ".join(lines[0].split()) if lines else ""
            if caption:
                out.append((png, caption))
    return out


def synthetic_pictures(count: int, seed: int = SEED) -> list[tuple[str, bytes]]:
    """``count`` photo-like JPEGs (smooth colour fields + noise, shorter side 256, aspect 1–2) with captions.

    The stand-in where the Debian packages are missing (e.g. on a bare GPU machine).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        long = int(rng.integers(SHORT_SIDE, 2 * SHORT_SIDE + 1))
        h, w = (SHORT_SIDE, long) if i % 2 else (long, SHORT_SIDE)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(0.005, 0.05, 3)
        base = np.stack([127 + 100 * np.sin(freq[c] * (x + y * (c + 1)) + phase[c]) for c in range(3)], axis=-1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy, "RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
        out.append((f"a synthetic picture number {i}", buf.getvalue()))
    return out


def base_pictures(limit: int, seed: int = SEED) -> tuple[list[tuple[str, bytes]], str]:
    """Up to ``limit`` distinct ``(caption, jpeg)`` pictures, and where they came from.

    The skimage photos and tuxpaint stamps in a seeded order, or :func:`synthetic_pictures` where
    neither package is installed.
    """
    candidates = _candidates()
    if not candidates:
        return synthetic_pictures(min(limit, 256), seed), "synthetic (skimage and tuxpaint not installed)"
    random.Random(seed).shuffle(candidates)
    out: list[tuple[str, bytes]] = []
    for path, caption in candidates:
        if len(out) >= limit:
            break
        jpeg = img2dataset_jpeg(path.read_bytes())
        if jpeg is not None:
            out.append((caption, jpeg))
    n_sk = sum(1 for p, _ in candidates if p.is_relative_to(SKIMAGE_DIR))
    source = f"{len(out)} distinct pictures of {n_sk} skimage photos + {len(candidates) - n_sk} tuxpaint stamps"
    return out, source


def make_samples(n: int, pictures: Sequence[tuple[str, bytes]]) -> list[Sample]:
    """``n`` samples cycling through ``pictures``; uids ``00000000``, ``00000001``, ..."""
    return [Sample(f"{i:08d}", pictures[i % len(pictures)][0], pictures[i % len(pictures)][1]) for i in range(n)]


def write_parquet(samples: Sequence[Sample], folder: Path, files: int) -> Path:
    """The samples as ``files`` Parquet files (one row group each) of ``uid, caption (binary), image``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = math.ceil(len(samples) / files)
    for f in range(files):
        part = samples[f * per : (f + 1) * per]
        table = pa.table(
            {
                "uid": pa.array([s.uid for s in part], pa.string()),
                "caption": pa.array([s.caption.encode() for s in part], pa.binary()),
                "image": pa.array([s.jpeg for s in part], pa.binary()),
            }
        )
        pq.write_table(table, folder / f"part-{f:05d}.parquet", row_group_size=max(1, len(part)))
    return folder


def read_samples(folder: str | Path) -> Any:
    """The Parquet samples of :func:`write_parquet` as one Arrow table, in uid order."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(folder))
    return table.sort_by("uid")


def write_webdataset(samples: Sequence[Sample], folder: Path, shards: int) -> Path:
    """The samples as img2dataset-style tar shards: ``key.jpg``, ``key.txt``, ``key.json`` (with the uid)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = math.ceil(len(samples) / shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for sample in samples[s * per : (s + 1) * per]:
                key = f"{s:05d}{sample.uid}"
                members = (
                    ("jpg", sample.jpeg),
                    ("txt", sample.caption.encode()),
                    ("json", json.dumps({"uid": sample.uid, "key": key}).encode()),
                )
                for ext, data in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


# --------------------------------------------------------------------------------------------------
# Without Spark (run in fresh processes)


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``); NaN without ``/proc``."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _region_start() -> dict[str, float]:
    """Stamps at the start of a timed region: wall clock, this process's CPU time, the machine's busy time."""
    return {"wall": time.time(), "cpu": time.process_time(), "busy": _machine_busy_s()}


def _region(start: dict[str, float]) -> dict[str, float]:
    """A timed region: its start and end stamps (see :func:`_region_start`)."""
    end = _region_start()
    return {**{f"{k}0": v for k, v in start.items()}, **{f"{k}1": v for k, v in end.items()}}


def foreign_cores(regions: Sequence[dict[str, float]]) -> float:
    """Cores used by other processes over the span of ``regions`` (processes timed side by side).

    The machine's busy time over the span, less the CPU time the timed processes used themselves.
    Taken inside the timed processes, so it is not thrown off by processes of this tree that exit
    meanwhile (idle Spark workers), as a :class:`.common.CpuWatch` around them can be.
    """
    first = min(regions, key=lambda r: r["wall0"])
    last = max(regions, key=lambda r: r["wall1"])
    span = last["wall1"] - first["wall0"]
    own = sum(r["cpu1"] - r["cpu0"] for r in regions)
    if span <= 0:
        return math.nan
    return max(0.0, (last["busy1"] - first["busy0"] - own) / span)


def open_clip_model(case: ModelCase) -> tuple[Any, Any, Any]:
    """``(model, preprocess, tokenizer)`` straight from open_clip, with the weights ``case.spec`` builds."""
    import open_clip
    import torch

    if case.config_json is not None:
        folder = Path(tempfile.mkdtemp(prefix="clipsift-bench-config-"))
        path = folder / f"{case.name}.json"
        path.write_text(case.config_json)
        open_clip.add_model_config(path)
    torch.manual_seed(SEED)  # as clipsift.udfs.models does for random weights
    model, _, preprocess = open_clip.create_model_and_transforms(case.name, pretrained=None, device="cpu")
    return model.eval(), preprocess, open_clip.get_tokenizer(case.name)


def bare_loop(
    model: Any, preprocess: Any, tokenizer: Any, images: Sequence[bytes], captions: Sequence[bytes], batch: int
) -> dict[str, Any]:
    """The baseline: decode, open_clip preprocess, encode images and captions, normalise; batch by batch."""
    import torch
    from PIL import Image

    decode_s = image_s = text_s = 0.0
    img_out: list[np.ndarray] = []
    txt_out: list[np.ndarray] = []
    region = _region_start()
    start = time.perf_counter()
    for lo in range(0, len(images), batch):
        t0 = time.perf_counter()
        x = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images[lo : lo + batch]])
        texts = [c.decode("utf-8") for c in captions[lo : lo + batch]]
        t1 = time.perf_counter()
        with torch.inference_mode():
            fi = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            t2 = time.perf_counter()
            ft = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        t3 = time.perf_counter()
        img_out.append(fi.numpy())
        txt_out.append(ft.numpy())
        decode_s, image_s, text_s = decode_s + t1 - t0, image_s + t2 - t1, text_s + t3 - t2
    return {
        "seconds": time.perf_counter() - start,
        "region": _region(region),
        "decode_s": decode_s,
        "image_s": image_s,
        "text_s": text_s,
        "image_emb": np.concatenate(img_out),
        "text_emb": np.concatenate(txt_out),
    }


def pipeline(table: Any, encoder: Any, settings: Any) -> dict[str, Any]:
    """:func:`clipsift.udfs.embed.embed_batches` over ``table`` as Spark hands it in (Arrow batches of up to
    10,000 rows)."""
    from clipsift.udfs.embed import EmbedStats, embed_batches

    stats = EmbedStats()
    region = _region_start()
    start = time.perf_counter()
    out = list(embed_batches(iter(table.to_batches(max_chunksize=10_000)), encoder, settings, stats=stats))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "region": _region(region), "stats": _stats_dict(stats), **_embeddings(out)}


def _stats_dict(stats: Any) -> dict[str, float]:
    return {k: float(getattr(stats, k)) for k in ("rows", "ok", "fetch_decode_s", "wait_s", "image_s", "text_s")}


def _embeddings(batches: Sequence[Any]) -> dict[str, Any]:
    """uids, statuses and the embedding matrices of the UDF's output batches."""
    import pyarrow as pa

    if not batches:
        return {
            "uids": [],
            "ok": 0,
            "image_emb": np.zeros((0, 0), np.float32),
            "text_emb": np.zeros((0, 0), np.float32),
        }
    table = pa.Table.from_batches(batches)
    status = table.column("status").to_pylist()

    def matrix(name: str) -> np.ndarray:
        rows = table.column(name).to_pylist()
        dim = len(next((r for r in rows if r is not None), []))
        return np.array([r if r is not None else [math.nan] * dim for r in rows], dtype=np.float32)

    return {
        "uids": table.column("uid").to_pylist(),
        "ok": sum(1 for s in status if s == "ok"),
        "image_emb": matrix("image_emb"),
        "text_emb": matrix("text_emb"),
    }


def measure_in_process(folder: str, case: ModelCase, bare_first: bool) -> dict[str, Any]:
    """One timed run of the bare loop and one of ``embed_batches``, in one process with 2 torch threads.

    Runs in a fresh process (:func:`.common.in_fresh_process`). Model builds are timed apart, and a
    first run on a few rows warms both paths before anything is timed.
    """
    import torch

    from clipsift.udfs.models import get_model

    torch.set_num_threads(2)
    table = read_samples(folder)
    uids = table.column("uid").to_pylist()
    images = table.column("image").to_pylist()
    captions = table.column("caption").to_pylist()
    settings = case.settings()

    t0 = time.perf_counter()
    model, preprocess, tokenizer = open_clip_model(case)
    t1 = time.perf_counter()
    encoder = get_model(case.spec(threads=2))
    t2 = time.perf_counter()
    warm = min(len(images), WARM_ROWS)
    bare_loop(model, preprocess, tokenizer, images[:warm], captions[:warm], case.image_batch_size)
    pipeline(table.slice(0, warm), encoder, settings)

    out: dict[str, Any] = {}
    for which in ("bare", "pipe") if bare_first else ("pipe", "bare"):
        if which == "bare":
            out["bare"] = {
                **bare_loop(model, preprocess, tokenizer, images, captions, case.image_batch_size),
                "uids": uids,
            }
        else:
            out["pipe"] = pipeline(table, encoder, settings)
    return {
        **out,
        "rows": len(images),
        "load_seconds": {"open_clip": t1 - t0, "get_model": t2 - t1},
        "torch_threads": torch.get_num_threads(),
        "uids": uids,
    }


def _barrier(folder: str, me: int, parties: int, timeout: float = 600.0) -> None:
    """Wait until all ``parties`` processes have reached this point (a file each in ``folder``)."""
    Path(folder, f"ready-{me}").touch()
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).glob("ready-*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark barrier: only some of {parties} processes arrived")
        time.sleep(0.005)


def measure_shard(folder: str, case: ModelCase, shard: int, shards: int, barrier: str) -> dict[str, Any]:
    """``embed_batches`` with 1 torch thread on the ``shard``-th contiguous part of the rows; started together.

    One of ``shards`` fresh processes run side by side (Spark's ``local[2]`` layout without Spark).
    """
    from clipsift.udfs.models import get_model

    table = read_samples(folder)
    per = math.ceil(table.num_rows / shards)
    mine = table.slice(shard * per, per)
    encoder = get_model(case.spec(threads=1))
    settings = case.settings()
    pipeline(mine.slice(0, min(mine.num_rows, WARM_ROWS)), encoder, settings)  # warm
    _barrier(barrier, shard, shards)
    result = pipeline(mine, encoder, settings)
    return {
        "rows": mine.num_rows,
        "seconds": result["seconds"],
        "region": result["region"],
        "stats": result["stats"],
        "ok": result["ok"],
    }


def _two_processes(folder: Path, case: ModelCase, workdir: Path) -> dict[str, Any]:
    """Run :func:`measure_shard` in two fresh processes at once; span from the first start to the last end."""
    barrier = Path(tempfile.mkdtemp(prefix="barrier-", dir=workdir))
    procs = [FreshProcess(measure_shard, (str(folder), case, s, 2, str(barrier)), {}) for s in range(2)]
    parts = [p.result() for p in procs]
    regions = [p["region"] for p in parts]
    return {
        "seconds": max(r["wall1"] for r in regions) - min(r["wall0"] for r in regions),
        "parts": parts,
        "rows": sum(p["rows"] for p in parts),
        "ok": sum(p["ok"] for p in parts),
        "others_cores": foreign_cores(regions),
    }


# --------------------------------------------------------------------------------------------------
# Spark


def timed_embed_fn(spec: Any, settings: Any, log_path: str, label: str) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """``embed_fn(spec, settings)``, each task appending one JSON line to ``log_path`` when done.

    The line says which worker ran the task, how long building the model took there (0 when the
    worker had it cached), the torch threads the task found and ran with, rows and ``ok`` rows.
    The task first sets ``spec.threads`` torch threads: ``ClipEncoder`` applies them only when it
    builds the model, and torch's setting is per process, so a worker that built the 2-thread model
    after the 1-thread one would otherwise run the cached 1-thread model with 2 threads.
    """
    from clipsift.udfs.embed import embed_fn
    from clipsift.udfs.models import get_model

    inner = embed_fn(spec, settings)

    def timed(batches: Iterator[Any]) -> Iterator[Any]:
        import json
        import os
        import time

        import pyarrow.compute as pc
        import torch
        from pyspark import TaskContext

        start = time.time()
        threads_found = torch.get_num_threads()
        if spec.threads:
            torch.set_num_threads(spec.threads)
        get_model(spec)  # the same call embed_fn makes first: here it is timed (cached: ~0 s)
        loaded = time.time()
        rows = ok = 0
        for out in inner(batches):
            rows += out.num_rows
            ok += int(pc.sum(pc.equal(out.column("status"), "ok")).as_py() or 0)
            yield out
        ctx = TaskContext.get()
        record = {
            "label": label,
            "partition": ctx.partitionId() if ctx else -1,
            "pid": os.getpid(),
            "start": start,
            "end": time.time(),
            "load_s": loaded - start,
            "rows": rows,
            "ok": ok,
            "threads_found": threads_found,
            "threads": torch.get_num_threads(),
        }
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    return timed


def _task_records(log_path: Path, label: str) -> list[dict[str, Any]]:
    if not log_path.exists():
        return []
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["label"] == label]


@contextmanager
def _read_conf(spark: Any, case: ModelCase) -> Iterator[None]:
    """Session confs for a UDF run, restored after it.

    Each Parquet file is read as exactly one partition (neither split nor packed with another), and
    Arrow batches hold one image batch each, as ``clipsift.jobs.embed`` sets them.
    """
    conf = {
        "spark.sql.files.maxPartitionBytes": "1g",
        "spark.sql.files.openCostInBytes": "1g",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(case.image_batch_size),
    }
    saved = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, old)


def _spark_run(spark: Any, case: ModelCase, folder: Path, spec: Any, log_path: Path, label: str) -> float:
    """One ``mapInArrow`` over the files in ``folder`` into the noop sink; wall seconds."""
    from clipsift.udfs.embed import output_ddl

    with _read_conf(spark, case):
        df = spark.read.parquet(str(folder))
        out = df.mapInArrow(timed_embed_fn(spec, case.settings(), str(log_path), label), output_ddl("float32"))
        start = time.perf_counter()
        out.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - start


def spark_embeddings(spark: Any, case: ModelCase, folder: Path, spec: Any) -> dict[str, Any]:
    """Embeddings of the samples in ``folder`` through ``embed_fn`` in Spark, collected and sorted by uid."""
    from clipsift.udfs.embed import embed_fn, output_ddl

    with _read_conf(spark, case):
        rows = (
            spark.read.parquet(str(folder))
            .mapInArrow(embed_fn(spec, case.settings()), output_ddl("float32"))
            .select("uid", "status", "image_emb", "text_emb")
            .collect()
        )
    rows = sorted(rows, key=lambda r: str(r["uid"]))
    return {
        "uids": [r["uid"] for r in rows],
        "ok": sum(1 for r in rows if r["status"] == "ok"),
        "image_emb": np.array([r["image_emb"] for r in rows], dtype=np.float32),
        "text_emb": np.array([r["text_emb"] for r in rows], dtype=np.float32),
    }


#: The two Spark layouts: key, tasks (= Parquet files), torch threads per task.
LAYOUTS = (("a", 2, 1, SPARK_2x1), ("b", 1, 2, SPARK_1x2))


def spark_layout(
    spark: Any,
    case: ModelCase,
    threads: int,
    folder: Path,
    warm_dir: Path,
    log_path: Path,
    label: str,
    monitor: ProcessTreeMonitor,
) -> dict[str, Any]:
    """One warm-up and one timed run of the Spark UDF on ``folder`` (one task per file).

    The warm-up runs as 2 tasks, so both Python workers build the model whichever one a 1-task run
    lands on; it collects the embeddings of ``warm_dir`` (``check``).
    """
    spec = case.spec(threads=threads)
    t0 = time.perf_counter()
    check = spark_embeddings(spark, case, warm_dir, spec)
    warm_s = time.perf_counter() - t0
    with monitor.phase() as mem:
        seconds = _spark_run(spark, case, folder, spec, log_path, label)
    peaks = sorted(mem.of_kind("python worker"), reverse=True)
    return {
        "seconds": seconds,
        "warm_seconds": warm_s,
        "tasks": _task_records(log_path, label),
        "others_cores": mem.cpu.others,
        "worker_peak_rss": peaks[:2],
        "jvm_peak_rss": max(mem.of_kind("jvm"), default=0),
        "check": check,
    }


def max_abs_diff(a: dict[str, Any], b: dict[str, Any], uids: Sequence[str]) -> float:
    """Largest absolute difference of image and text embeddings of ``uids`` between two results."""
    ia = {u: i for i, u in enumerate(a["uids"])}
    ib = {u: i for i, u in enumerate(b["uids"])}
    common = [u for u in uids if u in ia and u in ib]
    if not common:
        return math.nan
    ra, rb = [ia[u] for u in common], [ib[u] for u in common]
    return float(
        max(
            np.max(np.abs(a["image_emb"][ra] - b["image_emb"][rb])),
            np.max(np.abs(a["text_emb"][ra] - b["text_emb"][rb])),
        )
    )


# --------------------------------------------------------------------------------------------------
# The benchmark


def run_cpu(spark: Any, preset: str, workdir: Path, monitor: ProcessTreeMonitor | None = None) -> Report:
    """The ``embed_cpu`` benchmark at the sizes of ``preset``: every model, every path, ratios."""
    sizes = embed_sizes(preset)
    rep = Report()
    monitor = monitor if monitor is not None else ProcessTreeMonitor()
    largest = max(c.samples for c in sizes.models)
    t0 = time.perf_counter()
    pictures, source = base_pictures(largest)
    rep.raw["embed_data"] = {
        "source": source,
        "prepare_seconds": time.perf_counter() - t0,
        "mean_jpeg_bytes": float(np.mean([len(j) for _, j in pictures])),
    }
    rep.raw["embed_sizes"] = asdict(sizes)
    for case in sizes.models:
        rep.extend(_run_case(spark, case, sizes, source, make_samples(case.samples, pictures), workdir, monitor))
    return rep


def wait_quiet(limit: float, threshold: float = 0.25, window: float = 2.0) -> float:
    """Wait until processes outside this tree use less than ``threshold`` cores over ``window`` s (or ``limit`` s).

    The machine is shared: starting a timed run in a quiet moment makes the paths comparable more
    often. Returns the seconds waited.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        with CpuWatch() as watch:
            time.sleep(window)
        if not watch.others >= threshold:  # NaN (no /proc) counts as quiet
            break
    return time.perf_counter() - start


def _measure_rounds(
    spark: Any, case: ModelCase, sizes: EmbedSizes, samples: Sequence[Sample], workdir: Path, monitor: Any
) -> list[dict[str, Any]]:
    """``sizes.repeats`` rounds, each timing every path once in turn (so they share the machine's load)."""
    lab = case.label
    folder = write_parquet(samples, workdir / f"samples-{lab}", files=1)
    warm_dir = write_parquet(samples[: sizes.check_rows], workdir / f"spark-{lab}-warm", files=2)
    spark_dirs = {
        key: write_parquet(samples, workdir / f"spark-{lab}-{key}", files=tasks) for key, tasks, _, _ in LAYOUTS
    }
    log_path = workdir / "embed_tasks.jsonl"
    rounds: list[dict[str, Any]] = []
    for r in range(max(1, sizes.repeats)):
        waited: dict[str, float] = {}
        one: dict[str, Any] = {"waited_for_quiet_s": waited}
        t0 = time.perf_counter()
        waited["local"] = wait_quiet(sizes.quiet_wait_s)
        one["local"] = in_fresh_process(measure_in_process, str(folder), case, r % 2 == 0)
        t1 = time.perf_counter()
        waited["two"] = wait_quiet(sizes.quiet_wait_s)
        one["two"] = _two_processes(folder, case, workdir)
        t2 = time.perf_counter()
        one["phase_seconds"] = {
            "bare loop + embed_batches (fresh process)": t1 - t0,
            "embed_batches, 2 processes": t2 - t1,
        }
        if spark is not None:
            for key, _, threads, _ in LAYOUTS:
                waited[key] = wait_quiet(sizes.quiet_wait_s)
                one[key] = spark_layout(
                    spark, case, threads, spark_dirs[key], warm_dir, log_path, f"{lab}-{key}-{r}", monitor
                )
            one["phase_seconds"]["Spark, both layouts with warm-ups"] = time.perf_counter() - t2
        rounds.append(one)
    return rounds


def _best(rounds: Sequence[dict[str, Any]], key: str, sub: str | None = None) -> dict[str, Any]:
    runs = [r[key][sub] if sub else r[key] for r in rounds]
    best: dict[str, Any] = min(runs, key=lambda x: x["seconds"])
    return best


def _run_case(
    spark: Any,
    case: ModelCase,
    sizes: EmbedSizes,
    source: str,
    samples: Sequence[Sample],
    workdir: Path,
    monitor: ProcessTreeMonitor,
) -> Report:
    rep = Report()
    lab, n = case.label, len(samples)
    rounds = _measure_rounds(spark, case, sizes, samples, workdir, monitor)
    best_of = f"best of {len(rounds)} rounds"
    bare = {**_best(rounds, "local", "bare"), "uids": rounds[0]["local"]["uids"]}
    pipe = _best(rounds, "local", "pipe")
    local = rounds[0]["local"]
    others, others_pipe = foreign_cores([bare["region"]]), foreign_cores([pipe["region"]])
    rep.add(
        BENCH,
        f"{lab}: {BARE}",
        "samples/s",
        n / bare["seconds"],
        "samples/s",
        f"{n:,} samples, batches {case.image_batch_size} images / {case.text_batch_size} texts, decode included; "
        f"{best_of}; model build {local['load_seconds']['open_clip']:.1f} s not timed; fresh process; "
        f"others used {others:.2f} cores",
    )
    _split_rows(
        rep,
        f"{lab}: {BARE}",
        bare["seconds"],
        {"decode + preprocess": bare["decode_s"], "model, images": bare["image_s"], "model, texts": bare["text_s"]},
    )
    st = pipe["stats"]
    rep.add(
        BENCH,
        f"{lab}: {PIPE_1x2}",
        "samples/s",
        n / pipe["seconds"],
        "samples/s",
        f"same process as the bare loop, one after the other; decode_threads 2, prefetch 2; {int(st['ok']):,} of "
        f"{int(st['rows']):,} rows ok; get_model {local['load_seconds']['get_model']:.1f} s not timed; {best_of}; "
        f"others used {others_pipe:.2f} cores",
    )
    _split_rows(
        rep,
        f"{lab}: {PIPE_1x2}",
        pipe["seconds"],
        {"model, images": st["image_s"], "model, texts": st["text_s"], "waiting for decode": st["wait_s"]},
    )
    rep.add(
        BENCH,
        f"{lab}: {PIPE_1x2}",
        "decode thread time per sample",
        1e3 * st["fetch_decode_s"] / max(n, 1),
        "ms",
        "fetch + decode + resize, summed over the decode threads",
    )
    rep.add(
        BENCH,
        f"{lab}: embed_batches vs bare loop",
        "max abs difference of embeddings",
        max_abs_diff(pipe, bare, bare["uids"]),
        "",
        f"all {n:,} rows, image and text",
    )
    two = _best(rounds, "two")
    each = ", ".join(f"{p['seconds']:.1f}" for p in two["parts"])
    waits = sum(p["stats"]["wait_s"] for p in two["parts"])
    rep.add(
        BENCH,
        f"{lab}: {PIPE_2x1}",
        "samples/s",
        n / two["seconds"],
        "samples/s",
        f"span from the first start to the last end (started at a barrier after a warm run); per process {each} s, "
        f"waiting for decode {waits:.1f} s in all; {best_of}; others used {two['others_cores']:.2f} cores",
    )

    rates: dict[str, float] = {}
    for key, _, _, label in LAYOUTS if spark is not None else ():
        best = _best(rounds, key)
        tasks = best["tasks"]
        rates[key] = n / best["seconds"]
        rss = ", ".join(f"{v / 2**20:,.0f}" for v in best["worker_peak_rss"])
        rep.add(
            BENCH,
            f"{lab}: {label}",
            "samples/s",
            rates[key],
            "samples/s",
            f"local[2], Parquet read → mapInArrow(embed_fn) → noop; {len(tasks)} task(s), "
            f"{sum(t['ok'] for t in tasks):,} rows ok, torch threads {sorted({t['threads'] for t in tasks})} "
            f"(found {sorted({t['threads_found'] for t in tasks})}), "
            f"{sum(1 for t in tasks if t['load_s'] > 0.01)} task(s) built the model while timed; warm-up "
            f"{best['warm_seconds']:.1f} s not timed; {best_of}; peak RSS of the busiest workers {rss} MiB; "
            f"others used {best['others_cores']:.2f} cores",
        )
    if spark is not None:
        check = rounds[0]["b"]["check"]
        rep.add(
            BENCH,
            f"{lab}: Spark UDF vs bare loop",
            "max abs difference of embeddings",
            max(max_abs_diff(rounds[0][k]["check"], bare, rounds[0][k]["check"]["uids"]) for k in ("a", "b")),
            "",
            f"first {len(check['uids'])} rows collected from Spark ({check['ok']} ok), both layouts, image and text",
        )
        rep.raw[f"embed_{lab}_spark_check_ok"] = check["ok"]

    bare_rate, pipe_rate, two_rate = n / bare["seconds"], n / pipe["seconds"], n / two["seconds"]
    if rates:
        best_key = max(rates, key=lambda k: rates[k])
        best_label = SPARK_2x1 if best_key == "a" else SPARK_1x2
        rep.ratios.append(
            Ratio(
                f"{lab}: Spark UDF (best: {best_label}) / bare loop",
                ratio(rates[best_key], bare_rate),
                0.9,
                f"{best_label} samples/s",
                f"{BARE} samples/s",
            )
        )
        rep.ratios.append(
            Ratio(
                f"{lab}: {SPARK_2x1} / embed_batches 2 processes × 1 thread (Spark's own cost)",
                ratio(rates["a"], two_rate),
                None,
                SPARK_2x1,
                PIPE_2x1,
            )
        )
        rep.ratios.append(
            Ratio(
                f"{lab}: {SPARK_1x2} / embed_batches 1 process × 2 threads (Spark's own cost)",
                ratio(rates["b"], pipe_rate),
                None,
                SPARK_1x2,
                PIPE_1x2,
            )
        )
    rep.ratios.append(
        Ratio(
            f"{lab}: embed_batches 1 process × 2 threads / bare loop (our pipeline's cost)",
            ratio(pipe_rate, bare_rate),
            None,
            PIPE_1x2,
            BARE,
        )
    )
    rep.ratios.append(
        Ratio(
            f"{lab}: embed_batches 2 processes × 1 thread / bare loop", ratio(two_rate, bare_rate), None, PIPE_2x1, BARE
        )
    )
    rep.raw[f"embed_{lab}_rounds"] = [_strip_arrays(r) for r in rounds]
    rep.raw[f"embed_{lab}_bare_rate"] = bare_rate
    rep.raw[f"embed_{lab}_source"] = source
    return rep


def _split_rows(rep: Report, case: str, wall: float, parts: dict[str, float]) -> None:
    """One row per part of the wall time, as a share of it."""
    for name, seconds in parts.items():
        rep.add(
            BENCH,
            case,
            f"time share: {name}",
            100.0 * seconds / wall if wall > 0 else math.nan,
            "%",
            f"{seconds:.2f} s of {wall:.2f} s",
        )


def _strip_arrays(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without its embedding matrices and uid lists (kept out of results.json)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out[k] = _strip_arrays(v)
        elif not isinstance(v, np.ndarray) and k != "uids":
            out[k] = v
    return out


def run_job(spark: Any, preset: str, workdir: Path) -> Report:
    """The ``embed_job`` benchmark: ``clipsift.jobs.embed.run`` on a 2-shard WebDataset of the tiny model's samples.

    A first run on 8 samples warms the workers and Delta; the timed run writes a fresh table.
    """
    from clipsift.jobs import embed
    from clipsift.jobs.config import EmbedConfig, from_dict

    sizes = embed_sizes(preset)
    case = replace(next(c for c in sizes.models if c.label == "tiny"), samples=sizes.job_samples)
    pictures, source = base_pictures(case.samples)
    samples = make_samples(case.samples, pictures)
    config_path = workdir / "job" / f"{TINY_NAME}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(TINY_CONFIG_JSON)

    def config(wds: Path, table: Path) -> Any:
        return from_dict(
            EmbedConfig,
            {
                "input": {"kind": "webdataset", "path": str(wds)},
                "model": {
                    "name": TINY_NAME,
                    "config_json": str(config_path),
                    "device": "cpu",
                    "precision": "fp32",
                    "seed": SEED,
                    "threads": 1,
                },
                "output": {"path": str(table)},
                "embed": {
                    "image_batch_size": case.image_batch_size,
                    "text_batch_size": case.text_batch_size,
                    "decode_threads": 2,
                    "prefetch_batches": 2,
                },
            },
        )

    rep = Report()
    warm = write_webdataset(samples[:8], workdir / "job" / "wds-warm", shards=2)
    t0 = time.perf_counter()
    embed.run(spark, config(warm, workdir / "job" / "warm-table"))
    warm_s = time.perf_counter() - t0
    wds = write_webdataset(samples, workdir / "job" / "wds", shards=2)
    with CpuWatch() as watch:
        t0 = time.perf_counter()
        result = embed.run(spark, config(wds, workdir / "job" / "table"))
        seconds = time.perf_counter() - t0
    rate = result.embedded / seconds if seconds > 0 else math.nan
    rep.add(
        BENCH,
        f"tiny: {JOB}",
        "samples/s",
        rate,
        "samples/s",
        f"{result.embedded:,} of {result.rows_in:,} rows embedded ({source}) in {seconds:.1f} s, "
        f"statuses {json.dumps(result.by_status, sort_keys=True)}; whole run: listing, rejects, embed, Delta "
        f"commit, run record; warm-up run {warm_s:.1f} s not timed; {quiet_note(watch)}",
    )
    rep.raw["embed_job"] = {
        "seconds": seconds,
        "rows_in": result.rows_in,
        "embedded": result.embedded,
        "by_status": result.by_status,
        "warm_seconds": warm_s,
        "samples": case.samples,
    }
    return rep


def job_ratios(rep: Report) -> list[Ratio]:
    """The whole job against the tiny bare loop and the Spark UDF, where both ran (``embed_job`` + ``embed_cpu``)."""
    job = rep.value(BENCH, f"tiny: {JOB}", "samples/s")
    out = []
    for case in (BARE, SPARK_2x1):
        other = rep.value(BENCH, f"tiny: {case}", "samples/s")
        if math.isfinite(job) and math.isfinite(other):
            out.append(Ratio(f"tiny: whole embed job / {case}", ratio(job, other), None, JOB, case))
    return out
