"""negCLIPLoss and NormSim∞ on torch against the numpy kernels: side by side on the CPU, and on a GPU if there is one.

    python -m tests.benchmarks.bench_kernels_torch --out bench-output/torch            # CPU part; GPU part with CUDA
    python -m tests.benchmarks.bench_kernels_torch --out DIR --quick                   # small sizes, ~30 s
    python -m tests.benchmarks.bench_kernels_torch --out DIR --quick --gpu-device cpu  # GPU part's code on the CPU
    python -m tests.benchmarks.run --only torch_kernels                                 # CPU part inside the suite

Run from the repository root with the project's interpreter. Needs numpy and torch (no Spark, no Java). Writes
``OUT/results.json`` and ``OUT/results.md``. Nothing fails on a slow result; every accuracy figure is the max
absolute difference from the numpy kernel on the same rows.

* **CPU, side by side** (this process's cores; numpy's BLAS and torch use the same thread count): one
  negCLIPLoss batch of ``cpu_batch`` rows (K = 1, τ = 0.01, d = 768) by the numpy kernel and by the torch kernel
  (``device="cpu"``, fp32), GFLOP/s of the similarity matmuls (2·B²·d) and the torch/numpy ratio; NormSim∞ of
  ``cpu_normsim_rows`` pool rows against ``cpu_normsim_targets`` target rows, rows/s both ways. The tf32 and bf16
  errors are measured here too (emulated by rounding the matmul inputs, which is what the tensor cores see; not
  timed). The DataComp-medium projection (N = 128M, B = 32,768, K = 10: 2·K·N·B·d = 6.4·10¹⁶ FLOP) is the FLOP
  count over each measured rate.
* **GPU** (skipped with a note without CUDA): one negCLIPLoss batch of B = 32,768 (the issue's size) at fp32,
  tf32 and bf16, with the kernel's default blocks (256 MiB) and with 1 GiB blocks; the device's plain matmul rate
  at the same block shapes and precision, for the kernel/matmul ratio; the numpy kernel on the same batch on
  the host's cores, for the accuracy and the speed-up. NormSim∞ of one Arrow batch (10,000 pool rows) against
  1M target rows: the target made resident once (host→device copy timed), then rows/s at each precision, and
  fp32 with the target streamed from host memory block by block; accuracy on 512 pool rows against numpy.
  Projections: DataComp-medium negCLIPLoss GPU-hours, and NormSim∞ seconds per 1M pool rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import CpuWatch, Ratio, Report, best_time, blas_info, quiet_note, ratio

BENCH = "torch kernels"
SEED = 0
#: DataComp-medium negCLIPLoss work: 2·K·N·B·d with K = 10, N = 128M, B = 32,768, d = 768.
DATACOMP_MEDIUM_FLOPS = 2.0 * 10 * 128e6 * 32768 * 768
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class TorchSizes:
    """Sizes of one run (see :data:`SIZES`)."""

    name: str
    dim: int
    tau: float
    repeats: int
    cpu_batch: int
    cpu_normsim_rows: int
    cpu_normsim_targets: int
    gpu_batch: int
    gpu_normsim_rows: int
    gpu_normsim_targets: int
    gpu_check_rows: int
    """Pool rows of the NormSim∞ accuracy check against numpy (on the host)."""


SIZES = {
    "full": TorchSizes("full", 768, 0.01, 3, 8192, 2048, 50_000, 32768, 10_000, 1_000_000, 512),
    "quick": TorchSizes("quick", 768, 0.01, 1, 2048, 512, 10_000, 8192, 2_000, 100_000, 128),
    "toy": TorchSizes("toy", 32, 0.01, 1, 256, 64, 500, 256, 64, 2_000, 16),
}


def sizes_for(preset: str) -> TorchSizes:
    """The sizes matching a suite preset (``full``, ``quick``, ``toy``)."""
    return SIZES[preset]


def _unit_pair(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit image/caption rows, own-pair cosine ≈ 2/√d against ±1/√d for the others (CLIP-like logit gaps)."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, d), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cos = min(0.5, 2 / math.sqrt(d))
    txt = img + rng.standard_normal((n, d), dtype=np.float32) * np.float32(math.sqrt((1 / cos**2 - 1) / d))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}


def _interleaved_best(runs: Mapping[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], CpuWatch]:
    """Best wall time of each run, the runs taken in turn (A, B, A, B, ...) so that a change in foreign load
    hits both sides alike; and the foreign load over the whole loop."""
    best = dict.fromkeys(runs, math.inf)
    with CpuWatch() as watch:
        for _ in range(max(1, repeats)):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return best, watch


def _hours(flops: float, gflops: float) -> float:
    return flops / (gflops * 1e9) / 3600 if gflops > 0 and math.isfinite(gflops) else math.nan


# --------------------------------------------------------------------------------------------------
# CPU: numpy and torch side by side


def run_cpu(sizes: TorchSizes) -> Report:
    """negCLIPLoss and NormSim∞: numpy kernel against the torch kernel on the CPU, same rows, same threads."""
    rep = Report()
    try:
        import torch
    except ImportError:
        rep.raw["torch_kernels_cpu"] = {"skipped": "torch is not installed (pip install torch)"}
        return rep
    from clipsift.udfs.kernels import negclip_loss, normsim_inf
    from clipsift.udfs.kernels import torch_kernels as tk

    threads = torch.get_num_threads()
    b, d, tau = sizes.cpu_batch, sizes.dim, sizes.tau
    img, txt = _unit_pair(b, d, SEED)
    plan = np.zeros((1, b), dtype=np.int64)
    flops = 2.0 * b * b * d
    runs: dict[str, Callable[[], Any]] = {
        "numpy": lambda: negclip_loss(img, txt, plan, tau=tau, return_parts=True),
        "torch fp32": lambda: tk.negclip_loss(img, txt, plan, tau=tau, return_parts=True, device="cpu"),
    }
    results: dict[str, Any] = {name: fn() for name, fn in runs.items()}  # warm-up, and the scores compared
    raw: dict[str, Any] = {"threads": threads, "blas": blas_info(), "torch": torch.__version__}
    rates: dict[str, float] = {}
    times, watch = _interleaved_best(runs, sizes.repeats)
    for name, seconds in times.items():
        rates[name] = flops / seconds / 1e9
        case = f"negCLIPLoss, {name}, CPU ({threads} threads)"
        rep.add(BENCH, case, "throughput", rates[name], "GFLOP/s",
                f"one batch B = {b:,}, d = {d}, {flops / 1e12:.3f} TFLOP in {seconds:.2f} s; best of "
                f"{sizes.repeats}, numpy and torch in turn; {quiet_note(watch)}")  # fmt: skip
        rep.add(BENCH, case, "DataComp-medium K = 10, projected", _hours(DATACOMP_MEDIUM_FLOPS, rates[name]), "h",
                "6.4·10¹⁶ FLOP at this rate")  # fmt: skip
        raw[name] = {"seconds": seconds, "gflops": rates[name], "others_cores": watch.others}
    rep.ratios.append(Ratio("negCLIPLoss torch CPU / numpy (GFLOP/s)", ratio(rates["torch fp32"], rates["numpy"]),
                            None, "torch fp32 on the CPU", "numpy kernel"))  # fmt: skip
    diffs = {"fp32": _max_diff(results["torch fp32"], results["numpy"])}
    for precision in ("tf32", "bf16"):
        got = tk.negclip_loss(img, txt, plan, tau=tau, return_parts=True, device="cpu", precision=precision)
        assert isinstance(got, dict)
        diffs[precision] = _max_diff(got, results["numpy"])
    for precision, diff in diffs.items():
        how = "" if precision == "fp32" else " (emulated: matmul inputs rounded as the tensor cores round them)"
        rep.add(BENCH, f"negCLIPLoss, torch {precision} vs numpy", "max abs difference of negclip_loss",
                diff["negclip_loss"], "",
                f"clip_score {diff['clip_score']:.2g}, r_i2t {diff['r_i2t']:.2g}, r_t2i {diff['r_t2i']:.2g}; "
                f"B = {b:,}{how}")  # fmt: skip
    raw["negclip_max_abs_diff"] = diffs

    n, m = sizes.cpu_normsim_rows, sizes.cpu_normsim_targets
    pool, target = _unit_rows(n, d, SEED + 1), _unit_rows(m, d, SEED + 2)
    ns_runs: dict[str, Callable[[], np.ndarray]] = {
        "numpy": lambda: normsim_inf(pool, target),
        "torch fp32": lambda: tk.normsim_inf(pool, target, device="cpu"),
    }
    ns = {name: fn() for name, fn in ns_runs.items()}
    ns_rates: dict[str, float] = {}
    ns_times, watch = _interleaved_best(ns_runs, sizes.repeats)
    for name, seconds in ns_times.items():
        ns_rates[name] = n / seconds
        rep.add(BENCH, f"NormSim∞, {name}, CPU ({threads} threads)", "rows/s", ns_rates[name], "rows/s",
                f"{n:,} pool rows against M = {m:,} in {seconds:.2f} s "
                f"({2.0 * n * m * d / seconds / 1e9:.0f} GFLOP/s); {quiet_note(watch)}")  # fmt: skip
        raw[f"normsim_{name}"] = {"seconds": seconds, "rows_per_s": ns_rates[name], "others_cores": watch.others}
    rep.ratios.append(Ratio("NormSim∞ torch CPU / numpy (rows/s)", ratio(ns_rates["torch fp32"], ns_rates["numpy"]),
                            None, "torch fp32 on the CPU", "numpy kernel"))  # fmt: skip
    ns_diffs = {"fp32": float(np.max(np.abs(ns["torch fp32"] - ns["numpy"])))}
    for precision in ("tf32", "bf16"):
        ns_diffs[precision] = float(np.max(np.abs(tk.normsim_inf(pool, target, precision=precision) - ns["numpy"])))
    for precision, ns_diff in ns_diffs.items():
        rep.add(BENCH, f"NormSim∞, torch {precision} vs numpy", "max abs difference", ns_diff, "",
                f"M = {m:,}" + ("" if precision == "fp32" else " (emulated)"))  # fmt: skip
    raw["normsim_max_abs_diff"] = ns_diffs
    rep.raw["torch_kernels_cpu"] = raw
    return rep


# --------------------------------------------------------------------------------------------------
# GPU


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _plain_matmul_gflops(device: str, rows: int, cols: int, d: int, precision: str, repeats: int) -> float:
    """The device's ``(rows × d) @ (d × cols)`` rate at ``precision``, as the kernel multiplies (float32 out)."""
    import torch

    from clipsift.udfs.kernels import torch_kernels as tk

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(SEED)
    with torch.inference_mode(), tk._matmul_mode(dev, precision):
        a = tk._operand(torch.randn(rows, d, device=dev, generator=gen), precision)
        b = tk._operand(torch.randn(cols, d, device=dev, generator=gen), precision)
        tk._mm(a, b)
        _sync(device)
        reps = 10

        def products() -> None:
            for _ in range(reps):
                tk._mm(a, b)
            _sync(device)

        seconds = best_time(products, repeats)
    return 2.0 * rows * cols * d * reps / seconds / 1e9


def run_gpu(sizes: TorchSizes, device: str = "cuda", numpy_check: bool = True) -> Report:
    """The torch kernels on ``device`` (``cuda`` for the real figures; ``cpu`` exercises the same code).

    Without CUDA (when ``device`` is a CUDA device) it returns a report that says so and measures nothing.
    """
    rep = Report()
    try:
        import torch
    except ImportError:
        rep.raw["torch_kernels_gpu"] = {"skipped": "torch is not installed"}
        return rep
    if device.startswith("cuda") and not torch.cuda.is_available():
        rep.raw["torch_kernels_gpu"] = {"skipped": "no CUDA device: GPU figures not measured"}
        return rep
    from clipsift.udfs.kernels import negclip_loss, normsim_inf
    from clipsift.udfs.kernels import torch_kernels as tk
    from clipsift.udfs.kernels.negclip import BLOCK_ELEMENTS

    raw: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device.startswith("cuda"):
        raw["gpu"] = torch.cuda.get_device_name(device)
        raw["cuda"] = torch.version.cuda
    where = raw.get("gpu", device)
    b, d, tau = sizes.gpu_batch, sizes.dim, sizes.tau
    img, txt = _unit_pair(b, d, SEED)
    plan = np.zeros((1, b), dtype=np.int64)
    flops = 2.0 * b * b * d
    reference: dict[str, np.ndarray] | None = None
    if numpy_check:
        start = time.perf_counter()
        ref = negclip_loss(img, txt, plan, tau=tau, return_parts=True)
        numpy_seconds = time.perf_counter() - start
        assert isinstance(ref, dict)
        reference = ref
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        rep.add(BENCH, f"negCLIPLoss, numpy on the host ({cores} cores)", "throughput", flops / numpy_seconds / 1e9,
                "GFLOP/s", f"B = {b:,}, one run, {numpy_seconds:.1f} s; the accuracy reference")  # fmt: skip
        raw["numpy_host_seconds"] = numpy_seconds

    default_rows = max(1, min(b, BLOCK_ELEMENTS // b))
    big_rows = max(1, min(b, 4 * BLOCK_ELEMENTS // b))
    for precision in PRECISIONS:
        mm = _plain_matmul_gflops(device, default_rows, b, d, precision, sizes.repeats)
        rep.add(BENCH, f"plain matmul, {precision}, {where}", "throughput", mm, "GFLOP/s",
                f"({default_rows}×{d}) @ ({d}×{b:,}), float32 out")  # fmt: skip
        for block_rows in dict.fromkeys((default_rows, big_rows)):

            def kernel(p: str = precision, r: int = block_rows) -> Any:
                return tk.negclip_loss(img, txt, plan, tau=tau, return_parts=True, block_rows=r, device=device,
                                       precision=p)  # fmt: skip

            got = kernel()  # warm-up (allocator, cuBLAS handles)
            seconds = best_time(kernel, sizes.repeats)
            gflops = flops / seconds / 1e9
            case = f"negCLIPLoss, torch {precision}, {where}, block_rows {block_rows}"
            diff = _max_diff(got, reference)["negclip_loss"] if reference is not None else math.nan
            rep.add(BENCH, case, "throughput", gflops, "GFLOP/s",
                    f"one batch B = {b:,}, d = {d} in {seconds * 1e3:.0f} ms (host→device copy and results back "
                    f"included); max abs diff from numpy {diff:.2g}; best of {sizes.repeats}")  # fmt: skip
            rep.add(BENCH, case, "DataComp-medium K = 10, projected", _hours(DATACOMP_MEDIUM_FLOPS, gflops),
                    "h", "6.4·10¹⁶ FLOP at this rate, one device")  # fmt: skip
            raw[f"negclip_{precision}_{block_rows}"] = {"seconds": seconds, "gflops": gflops, "max_abs_diff": diff}
            if block_rows == default_rows:
                rep.ratios.append(Ratio(f"negCLIPLoss torch {precision} / plain matmul {precision}",
                                        ratio(gflops, mm), None, "kernel GFLOP/s", "matmul GFLOP/s"))  # fmt: skip

    n, m = sizes.gpu_normsim_rows, sizes.gpu_normsim_targets
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(SEED + 2)
    with torch.inference_mode():
        t = torch.randn(m, d, device=dev, generator=gen)
        target = torch.nn.functional.normalize(t, dim=1).cpu().numpy()
        del t
    pool = _unit_rows(n, d, SEED + 1)
    check = sizes.gpu_check_rows
    want = normsim_inf(pool[:check], target) if numpy_check else None
    for precision in PRECISIONS:
        start = time.perf_counter()
        resident = tk.resident(target, device, precision)
        _sync(device)
        copy_seconds = time.perf_counter() - start

        def normsim(p: str = precision, tgt: Any = resident) -> np.ndarray:
            return tk.normsim_inf(pool, tgt, device=device, precision=p)

        got = normsim()
        seconds = best_time(normsim, sizes.repeats)
        diff = float(np.max(np.abs(got[:check] - want))) if want is not None else math.nan
        on = "resident" if isinstance(resident, torch.Tensor) else "streamed (did not fit)"
        rep.add(BENCH, f"NormSim∞, torch {precision}, {where}, target {on}", "rows/s", n / seconds, "rows/s",
                f"{n:,} pool rows against M = {m:,} in {seconds * 1e3:.0f} ms "
                f"({2.0 * n * m * d / seconds / 1e12:.1f} TFLOP/s); target made resident in {copy_seconds:.2f} s; "
                f"max abs diff from numpy {diff:.2g} on {check} rows")  # fmt: skip
        rep.add(BENCH, f"NormSim∞, torch {precision}, {where}, target {on}", "seconds per 1M pool rows",
                1e6 * seconds / n, "s", f"M = {m:,}")  # fmt: skip
        raw[f"normsim_{precision}"] = {"seconds": seconds, "copy_seconds": copy_seconds, "max_abs_diff": diff}
        del resident
    streamed_seconds = best_time(lambda: tk.normsim_inf(pool, target, device=device), 1)
    rep.add(BENCH, f"NormSim∞, torch fp32, {where}, target streamed from host", "rows/s", n / streamed_seconds,
            "rows/s", f"each call copies the {m * d * 4 / 2**30:.2f} GiB target block by block")  # fmt: skip
    raw["normsim_fp32_streamed_seconds"] = streamed_seconds
    rep.raw["torch_kernels_gpu"] = raw
    return rep


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "":
        return f"{value:.2g}"
    if unit in ("h", "s"):
        return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def render(doc: dict[str, Any]) -> str:
    """The results document as Markdown."""
    lines = [
        f"## torch kernels against numpy ({doc['sizes']['name']} sizes)",
        "",
        f"- command: `{doc['command']}` ({doc['seconds']:.0f} s)",
        f"- machine: {doc['machine']['cores']} CPU cores, {doc['machine']['cpu']}; torch {doc['machine']['torch']}, "
        f"numpy {doc['machine']['numpy']}; GPU: {doc['machine'].get('gpu', 'none')}",
    ]
    for part in ("torch_kernels_cpu", "torch_kernels_gpu"):
        skipped = doc["raw"].get(part, {}).get("skipped")
        if skipped:
            lines.append(f"- {part.rsplit('_', 1)[-1].upper()} part not run: {skipped}")
    lines += ["", "| case | metric | value | note |", "|---|---|---:|---|"]
    for r in doc["rows"]:
        cells = (r["case"], r["metric"], _fmt(r["value"], r["unit"]), r["note"])
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if doc["ratios"]:
        lines += ["", "| ratio | value |", "|---|---:|"]
        for r in doc["ratios"]:
            value = "n/a" if not math.isfinite(r["value"]) else f"{r['value']:.2f}"
            lines.append(f"| {r['name']} | {value} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    import torch

    from .common import _cpu_model

    info: dict[str, Any] = {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def run(sizes: TorchSizes, gpu_device: str = "cuda", numpy_check: bool = True, command: str = "") -> dict[str, Any]:
    """Both parts; returns the results document."""
    started = time.time()
    rep = run_cpu(sizes)
    rep.extend(run_gpu(sizes, gpu_device, numpy_check))
    return {
        "command": command,
        "sizes": asdict(sizes),
        "machine": machine(),
        "seconds": time.time() - started,
        "rows": [asdict(r) for r in rep.rows],
        "ratios": [asdict(r) for r in rep.ratios],
        "raw": rep.raw,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.benchmarks.bench_kernels_torch``."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_kernels_torch",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--quick", action="store_true", help="small sizes (an end-to-end check, ~30 s on 2 cores)")
    parser.add_argument("--gpu-device", default="cuda", help="cuda (default), cuda:N, or cpu to run the GPU code")
    parser.add_argument("--no-numpy-check", action="store_true", help="GPU part: skip the numpy reference runs")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401  (checked here for a clear message)
    except ImportError:
        print("torch is not installed: pip install torch", file=sys.stderr)
        return 1
    command = "python -m tests.benchmarks.bench_kernels_torch " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = run(SIZES["quick" if args.quick else "full"], args.gpu_device, not args.no_numpy_check, command)
    args.out.mkdir(parents=True, exist_ok=True)
    md = render(doc)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
