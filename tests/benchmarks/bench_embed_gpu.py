"""Embedding samples/s on one GPU, no Spark: ViT-B-32 and ViT-L-14 (random weights, bf16) from JPEG bytes.

    python -m tests.benchmarks.bench_embed_gpu --out bench-output/gpu                  # needs CUDA
    python -m tests.benchmarks.bench_embed_gpu --out /tmp/gpu --device cpu --quick     # end-to-end check on a CPU

Run from the repository root. Needs torch, open_clip, Pillow, numpy and pyarrow only (no Spark, no
Java). Without CUDA (and without ``--device cpu``) it prints why and exits 0. Writes
``OUT/results.json`` and ``OUT/results.md``.

For each model, on the same samples (real pictures stored as img2dataset stores them, see
:mod:`.bench_embed`; photo-like synthetic JPEGs where the Debian packages are missing), cycled
to ``--samples``:

* **decode included**: :func:`clipsift.udfs.embed.embed_batches`, the Spark UDF's whole task, from JPEG
  bytes: decode + resize on ``--decode-threads`` threads one batch ahead, then the model;
* **decode alone**: the pipeline's decode stage (:func:`clipsift.udfs.embed.prepare_batch`) on the same
  threads, nothing else running;
* **decode excluded**: the pre-decoded batches through the pipeline's model stage
  (:func:`clipsift.udfs.embed.encode_prepared`: pinned host→device copy of uint8 pixels, normalisation on
  the device, tokenizer, both encoders, device→host copy, Arrow output);
* **transfer alone**, **tokenizer alone**: the host→device copy of a batch's pixels, and the
  tokenizer, each timed by itself;
* **compute**: ``encode_image`` + ``encode_text`` on random pixels and tokens already on the GPU,
  under the encoder's autocast, synchronised.

What limits the decode-included figure is read off the others: the pipeline overlaps decode with
the model stage, so it runs near the slower of "decode alone" and "decode excluded"; the model
stage runs near "compute" unless the host work around it (transfer, tokenizer, copies) is what
takes the time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .bench_embed import base_pictures, make_samples

DEFAULT_MODELS = ("ViT-B-32", "ViT-L-14")
#: Image batch size per model on the GPU (texts use the same).
DEFAULT_BATCH = {"ViT-B-32": 1024, "ViT-L-14": 512}
GOALS = {"ViT-B-32": 2500.0, "ViT-L-14": 1000.0}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def samples_table(n: int) -> tuple[Any, str]:
    """``n`` samples as an Arrow table of ``uid, caption (binary), image (JPEG bytes)``, and their source."""
    import pyarrow as pa

    pictures, source = base_pictures(min(n, 1024))
    samples = make_samples(n, pictures)
    table = pa.table(
        {
            "uid": pa.array([s.uid for s in samples], pa.string()),
            "caption": pa.array([s.caption.encode() for s in samples], pa.binary()),
            "image": pa.array([s.jpeg for s in samples], pa.binary()),
        }
    )
    return table, source


def _batches(table: Any) -> list[Any]:
    """The table as Spark hands it to the UDF (Arrow batches of up to 10,000 rows)."""
    return list(table.to_batches(max_chunksize=10_000))


def measure_model(
    name: str, table: Any, device: str, precision: str, batch: int, decode_threads: int, repeats: int
) -> dict[str, Any]:
    """Every figure of one model (see the module docstring); samples/s unless named otherwise."""
    import torch

    from clipsift.udfs.embed import EmbedSettings, EmbedStats, embed_batches, encode_prepared, prepare_batch, rebatch
    from clipsift.udfs.models import ModelSpec, get_model

    n = table.num_rows
    settings = EmbedSettings(
        image_batch_size=batch, text_batch_size=batch, decode_threads=decode_threads, prefetch_batches=2
    )
    t0 = time.perf_counter()
    encoder = get_model(ModelSpec(name, pretrained=None, device=device, precision=precision, seed=0))
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "model": name,
        "device": encoder.device,
        "precision": encoder.precision,
        "image_size": encoder.identity.image_size,
        "batch": batch,
        "samples": n,
        "decode_threads": decode_threads,
        "load_seconds": load_s,
    }

    # Warm-up: cuBLAS/cuDNN handles, autocast, allocator, the thread pools (two batches).
    warm = table.slice(0, min(n, 2 * batch))
    for _ in embed_batches(iter(_batches(warm)), encoder, settings):
        pass

    # Decode included: the UDF's whole task from JPEG bytes.
    best: tuple[float, EmbedStats] | None = None
    ok = 0
    for _ in range(repeats):
        stats = EmbedStats()
        t0 = time.perf_counter()
        ok = 0
        for b in embed_batches(iter(_batches(table)), encoder, settings, stats=stats):
            ok += sum(1 for s in b.column("status").to_pylist() if s == "ok")
        seconds = time.perf_counter() - t0
        if best is None or seconds < best[0]:
            best = (seconds, stats)
    assert best is not None
    seconds, stats = best
    out["decode_included"] = n / seconds
    out["ok_rows"] = ok
    out["split"] = {
        "wall_s": seconds,
        "wait_for_decode_s": stats.wait_s,
        "model_images_s": stats.image_s,
        "model_texts_s": stats.text_s,
        "decode_thread_s": stats.fetch_decode_s,
    }

    # Decode alone: the pipeline's decode stage over every batch; keeps the prepared batches.
    prepared = []
    with ThreadPoolExecutor(decode_threads) as pool:
        t0 = time.perf_counter()
        for b in rebatch(iter(_batches(table)), batch):
            prepared.append(prepare_batch(b, encoder, settings, pool, None)[0])
        decode_s = time.perf_counter() - t0
    out["decode_alone"] = n / decode_s

    # Decode excluded: the pipeline's model stage on the pre-decoded batches.
    best_s = math.inf
    for _ in range(repeats):
        stats = EmbedStats()
        t0 = time.perf_counter()
        for p in prepared:
            encode_prepared(encoder, p, settings, stats)
        best_s = min(best_s, time.perf_counter() - t0)
    out["decode_excluded"] = n / best_s

    # Transfer alone (pinned copy of one batch's uint8 pixels to the device) and the tokenizer alone.
    pixels = prepared[0].pixels
    captions = [c or "" for c in prepared[0].captions]
    out["transfer_alone"] = out["transfer_gb_per_s"] = math.nan
    if encoder.device != "cpu":
        t_copy = math.inf
        for _ in range(max(3, repeats)):
            t0 = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(pixels)).pin_memory().to(encoder.device, non_blocking=True)
            _sync(encoder.device)
            t_copy = min(t_copy, time.perf_counter() - t0)
        del x
        out["transfer_alone"] = len(pixels) / t_copy
        out["transfer_gb_per_s"] = pixels.nbytes / t_copy / 1e9
    t0 = time.perf_counter()
    encoder.tokenizer(captions)
    out["tokenizer_alone"] = len(captions) / (time.perf_counter() - t0)

    out.update(_compute(encoder, batch, captions, repeats))
    out["limit"] = limit(out)
    return out


def _compute(encoder: Any, batch: int, captions: Sequence[str], repeats: int) -> dict[str, float]:
    """Model compute alone: random normalised pixels and tokens already on the device, synchronised."""
    import torch

    device = encoder.device
    size = encoder.identity.image_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    tokens = encoder.tokenizer(list(captions) * math.ceil(batch / max(1, len(captions))))[:batch].to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(encoder.precision)

    def run(image: bool, text: bool) -> float:
        best = math.inf
        for _ in range(max(2, repeats)):
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                if image:
                    encoder.model.encode_image(x)
                if text:
                    encoder.model.encode_text(tokens)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        return batch / best

    run(True, True)  # warm
    return {"compute": run(True, True), "compute_images": run(True, False), "compute_texts": run(False, True)}


def limit(r: dict[str, Any]) -> str:
    """What bounds the decode-included rate, from the other figures of the same model."""
    decode, model, compute = r["decode_alone"], r["decode_excluded"], r["compute"]
    if decode < model:
        what = "decode"
        why = f"decode alone {_rate(decode)}/s < model stage {_rate(model)}/s"
    elif model < 0.8 * compute:
        what = "transfer and host work of the model stage"
        why = (
            f"model stage {_rate(model)}/s vs compute {_rate(compute)}/s; pinned copy alone "
            f"{_rate(r['transfer_alone'])} images/s, tokenizer alone {_rate(r['tokenizer_alone'])} captions/s"
        )
    else:
        what = "compute"
        why = f"model stage {_rate(model)}/s ≈ compute {_rate(compute)}/s"
    achieved = r["decode_included"] / min(decode, model)
    return f"{what} ({why}; decode included reaches {100 * achieved:.0f} % of the slower stage)"


def machine() -> dict[str, Any]:
    """GPU, CPU and library versions behind the numbers."""
    import open_clip
    import PIL
    import torch
    from PIL import features

    info: dict[str, Any] = {
        "cpu_cores": _cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _rate(v: float) -> str:
    return "n/a" if not math.isfinite(v) else (f"{v:,.1f}" if v < 100 else f"{v:,.0f}")


def render(doc: dict[str, Any]) -> str:
    """The results as Markdown."""
    m = doc["machine"]
    lines = [
        f"## Embedding on {m.get('gpu', doc['device'])} ({doc['preset']})",
        "",
        f"- command: `{doc['command']}` ({doc['seconds'] / 60:.1f} min)",
        f"- machine: {m['cpu_cores']} CPU cores; torch {m['torch']}, CUDA {m.get('cuda')}, open_clip "
        f"{m['open_clip']}, Pillow {m['pillow']} (libjpeg-turbo: {m['libjpeg_turbo']}); Python {m['python']}",
        f"- data: {doc['samples']:,} samples, {doc['source']}; random weights; best of {doc['repeats']}",
        "",
        "| model | precision | batch | decode included | decode alone | decode excluded | compute | goal | "
        "transfer alone | tokenizer alone |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["models"]:
        goal = GOALS.get(r["model"])
        transfer = (
            f"{_rate(r['transfer_alone'])} ({r['transfer_gb_per_s']:.1f} GB/s)"
            if math.isfinite(r["transfer_alone"])
            else "n/a (CPU)"
        )
        cells = (
            r["model"], r["precision"], r["batch"], _rate(r["decode_included"]), _rate(r["decode_alone"]),
            _rate(r["decode_excluded"]), _rate(r["compute"]), "—" if goal is None else f"≥ {goal:,.0f}",
            transfer, _rate(r["tokenizer_alone"]),
        )  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "samples/s (images/s for transfer, captions/s for the tokenizer)", ""]
    for r in doc["models"]:
        s = r["split"]
        lines.append(
            f"- {r['model']}: limited by {r['limit']}. {r['ok_rows']:,} of {r['samples']:,} rows ok. "
            f"Time split of the decode-included run "
            f"({s['wall_s']:.1f} s): model images {s['model_images_s']:.1f} s, texts {s['model_texts_s']:.1f} s, "
            f"waiting for decode {s['wait_for_decode_s']:.1f} s; decode thread time {s['decode_thread_s']:.1f} s "
            f"over {r['decode_threads']} threads; compute images alone {_rate(r['compute_images'])}/s, texts alone "
            f"{_rate(r['compute_texts'])}/s; model build {r['load_seconds']:.1f} s (not timed)"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.benchmarks.bench_embed_gpu``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_embed_gpu", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a functional check")
    parser.add_argument("--quick", action="store_true", help="a few samples and small batches (an end-to-end check)")
    parser.add_argument("--samples", type=int, default=None, help="samples per model (default 10,240; quick 24)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated open_clip names")
    parser.add_argument("--batch", type=int, default=None, help="image and text batch size (default per model)")
    parser.add_argument("--decode-threads", type=int, default=None, help="decode threads (default: all cores)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each figure (default 2; quick 1)")
    args = parser.parse_args(argv)
    command = "python -m tests.benchmarks.bench_embed_gpu " + " ".join(argv if argv is not None else sys.argv[1:])

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_embed_gpu: skipped: torch sees no CUDA device (use --device cpu --quick for a functional check)")
        return 0
    n = args.samples or (24 if args.quick else 10_240)
    repeats = args.repeats or (1 if args.quick else 2)
    threads = args.decode_threads or _cores()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    table, source = samples_table(n)
    doc: dict[str, Any] = {
        "command": command,
        "preset": "quick" if args.quick else "full",
        "device": args.device,
        "samples": n,
        "source": source,
        "repeats": repeats,
        "machine": machine(),
        "models": [],
    }
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        batch = args.batch or (8 if args.quick else DEFAULT_BATCH.get(name, 512))
        result = measure_model(name, table, args.device, args.precision, batch, threads, repeats)
        doc["models"].append(result)
        print(
            f"{name}: {result['decode_included']:,.1f} samples/s decode included; limit: {result['limit']}", flush=True
        )
        _free(args.device)
    doc["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = render(doc)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


def _free(device: str) -> None:
    """Drop the cached encoders before the next model (a GPU holds one at a time comfortably)."""
    import gc

    import torch

    from clipsift.udfs import models

    models._CACHE.clear()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
