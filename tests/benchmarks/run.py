"""Run the clipsift benchmarks and report them as a Markdown table plus JSON.

    python -m tests.benchmarks.run --out bench-output            # full sizes (make bench), ~10 min
    python -m tests.benchmarks.run --out bench-output --quick    # small sizes, ~1-2 min
    python -m tests.benchmarks.run --only negclip_kernel         # one benchmark (repeatable)

Run it from the repository root with the project's interpreter (``.venv/bin/python``); Spark's
Python workers use the same interpreter. Writes ``OUT/results.md`` and ``OUT/results.json``.

Benchmarks (``--only`` names):
  negclip_kernel  plain matmul rate; negCLIPLoss kernel alone (fresh process, both cores; and one
                  single-threaded process per shard side by side), GFLOP/s and peak RSS
  negclip_spark   the score job with/without negCLIPLoss; the negCLIPLoss stage alone; worker RSS
  normsim_kernel  NormSim∞ and NormSim₂ kernels, rows/s at M target rows
  normsim_spark   NormSim∞ and NormSim₂ through the job's UDF in Spark, rows/s
  embed_cpu       embedding samples/s from JPEG bytes on the CPU (a tiny open_clip config and ViT-B-32,
                  random weights): a bare open_clip loop; embed_batches (the UDF's inner function) in
                  1 process × 2 threads and 2 processes × 1 thread; the Spark UDF (mapInArrow into a
                  noop sink) as 2 tasks × 1 thread and 1 task × 2 threads; the time split
  embed_job       the whole embed job (clipsift.jobs.embed.run: WebDataset in, Delta out), tiny model
  dedup_kernels   k-means assignment (nearest centroid) and semantic dedup against pool / cluster size,
                  rows/s and the fitted growth exponent of each
  adapter_stream  clipselect's adapter-training batches streamed to the driver: Row objects against packed
                  chunks, rows/s and the driver's peak RSS
  torch_kernels   negCLIPLoss and NormSim∞ on torch (CPU) against the numpy kernels, side by side: GFLOP/s,
                  rows/s, and the max abs difference at fp32 (and tf32/bf16, emulated)
  report_memory   clipsift report on generated score runs of 100k and 1M rows (quick: 10k, 100k): seconds and
                  the driver's peak RSS increase (bounded: it does not grow with the pool)

The GPU counterparts (no Spark): of embed_cpu, ``python -m tests.benchmarks.bench_embed_gpu --out DIR``; of
torch_kernels (B = 32,768; NormSim∞ against 1M rows), ``python -m tests.benchmarks.bench_kernels_torch --out DIR``.

Ratios are taken between numbers of the same run; nothing here fails on a slow result.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import (
    bench_adapters,
    bench_dedup,
    bench_embed,
    bench_kernels_torch,
    bench_negclip,
    bench_normsim,
    bench_report,
    bench_spark,
)
from .common import (
    FULL,
    QUICK,
    CpuWatch,
    ProcessTreeMonitor,
    Ratio,
    Report,
    Sizes,
    machine_info,
    negclip_flops,
    ratio,
)

SCORE_BENCHMARKS = ("negclip_kernel", "negclip_spark", "normsim_kernel", "normsim_spark")
EMBED_BENCHMARKS = ("embed_cpu", "embed_job")
BASELINE_BENCHMARKS = ("dedup_kernels",)
CLIPSELECT_BENCHMARKS = ("adapter_stream",)
TORCH_BENCHMARKS = ("torch_kernels",)
REPORT_BENCHMARKS = ("report_memory",)
BENCHMARKS = SCORE_BENCHMARKS + EMBED_BENCHMARKS + BASELINE_BENCHMARKS + CLIPSELECT_BENCHMARKS + TORCH_BENCHMARKS
BENCHMARKS += REPORT_BENCHMARKS
_SPARK_BENCHMARKS = frozenset(
    {"negclip_spark", "normsim_spark", "embed_cpu", "embed_job", "adapter_stream", "report_memory"}
)


def pool_flops(sizes: Sizes) -> float:
    """negCLIPLoss FLOPs of the benchmark pool: every shard is one group cut into batches of B."""
    batches: list[int] = []
    for _ in range(sizes.rounds):
        for _shard in range(sizes.shards):
            full, rest = divmod(sizes.rows_per_shard, sizes.batch_size)
            batches += [sizes.batch_size] * full + ([rest] if rest else [])
    return negclip_flops(batches, sizes.dim)


def run_suite(
    sizes: Sizes, selected: Sequence[str], workdir: Path, spark: Any = None, warm_up: bool = True
) -> dict[str, Any]:
    """Run the selected benchmarks at ``sizes`` with data under ``workdir``; returns the results document.

    Args:
        sizes: problem sizes (``common.FULL``, ``QUICK`` or ``TOY``).
        selected: names from :data:`BENCHMARKS`.
        workdir: scratch folder for the pool, the target and the Delta tables.
        spark: a session to use; default: one from :func:`bench_spark.build_session` (or the active one).
        warm_up: start with one tiny score run, so that the measured Spark runs start warm.
    """
    started = time.time()
    before = machine_info()
    flops = pool_flops(sizes)
    with CpuWatch() as whole_run:
        rep, spark_scores = _measure(sizes, selected, workdir, spark, warm_up, flops)
    _cross_ratios(rep, spark_scores)
    kernel_scores = rep.raw.pop("negclip_kernel_scores", {})
    if spark_scores and kernel_scores:
        common = set(spark_scores) & set(kernel_scores)
        diff = max((abs(spark_scores[u] - kernel_scores[u]) for u in common), default=math.nan)
        rep.add(
            bench_spark.BENCH,
            "job scores vs kernel alone",
            "max abs difference of negclip_loss",
            diff,
            "",
            f"over {len(common):,} common uids (the job normalises in Spark SQL)",
        )
    return {
        "preset": sizes.name,
        "others_cores": whole_run.others,
        "sizes": asdict(sizes),
        "negclip_flops": flops,
        "embed_sizes": asdict(bench_embed.embed_sizes(sizes.name)) if set(EMBED_BENCHMARKS) & set(selected) else None,
        "benchmarks": list(selected),
        "machine_start": before,
        "machine_end": {k: machine_info()[k] for k in ("load_average", "other_java_processes")},
        "seconds": time.time() - started,
        "rows": [asdict(r) for r in rep.rows],
        "ratios": [{**asdict(r), "met": r.met} for r in rep.ratios],
        "raw": rep.raw,
    }


def _measure(
    sizes: Sizes, selected: Sequence[str], workdir: Path, spark: Any, warm_up: bool, flops: float
) -> tuple[Report, dict[str, float]]:
    """The benchmarks themselves; returns the report and the Spark job's scores by uid (if it ran)."""
    rep = Report()
    pool = workdir / "pool"
    if set(SCORE_BENCHMARKS) & set(selected):
        bench_spark.write_pool(pool, sizes)
    target = None
    if {"normsim_kernel", "normsim_spark"} & set(selected):
        target = bench_normsim.write_target(workdir / "target.npy", sizes)

    if "negclip_kernel" in selected:
        rep.extend(bench_negclip.run(pool, sizes))
    if "normsim_kernel" in selected:
        rep.extend(bench_normsim.run(sizes))
    if "dedup_kernels" in selected:
        rep.extend(bench_dedup.run(quick=sizes.name != "full"))
    if "torch_kernels" in selected:
        rep.extend(bench_kernels_torch.run_cpu(bench_kernels_torch.sizes_for(sizes.name)))

    spark_scores: dict[str, float] = {}
    if _SPARK_BENCHMARKS & set(selected):
        session = spark if spark is not None else bench_spark.build_session(workdir)
        try:
            with ProcessTreeMonitor() as monitor:
                if warm_up and {"negclip_spark", "normsim_spark"} & set(selected):
                    rep.raw["spark_warm_up_seconds"] = bench_spark.warm_up(session, workdir, sizes)
                rep.raw["spark_workers"] = bench_spark.worker_threads(session)
                if "negclip_spark" in selected:
                    job, spark_scores = bench_spark.negclip_job(session, pool, workdir, sizes, flops, monitor)
                    rep.extend(job)
                    rep.extend(bench_spark.negclip_stage(session, pool, workdir, sizes, flops, monitor))
                if "normsim_spark" in selected and target is not None:
                    rep.extend(bench_spark.normsim_udfs(session, pool, target, sizes, monitor))
                if "adapter_stream" in selected:
                    rep.extend(bench_adapters.run(session, quick=sizes.name != "full"))
                    rep.ratios += bench_adapters.ratios(rep)
                if "report_memory" in selected:
                    rows = bench_report.FULL_ROWS if sizes.name == "full" else bench_report.QUICK_ROWS
                    rep.extend(bench_report.run(session, workdir / "report", rows, monitor))
                    rep.ratios += bench_report.ratios(rep, rows)
                # The job first: it builds its model in fresh workers (embed_cpu's last layout leaves
                # 2 torch threads set in them, which a cached 1-thread model would then run with).
                if "embed_job" in selected:
                    rep.extend(bench_embed.run_job(session, sizes.name, workdir / "embed"))
                if "embed_cpu" in selected:
                    rep.extend(bench_embed.run_cpu(session, sizes.name, workdir / "embed", monitor))
                    rep.ratios += bench_embed.job_ratios(rep)
        finally:
            if spark is None:
                session.stop()

    return rep, spark_scores


def _cross_ratios(rep: Report, spark_scores: dict[str, float]) -> None:
    kernel = rep.value(bench_negclip.BENCH, bench_negclip.KERNEL, "throughput")
    sb = bench_spark
    for case, name in (
        (sb.STAGE, "Spark negCLIPLoss stage / kernel alone"),
        (sb.STAGE_SHUFFLED, "Spark negCLIPLoss stage, groups shuffled / kernel alone"),
        (sb.JOB_DIFF, "Spark job's negCLIPLoss part (on − off) / kernel alone"),
        (sb.JOB_ON, "whole Spark job (read, checks, write included) / kernel alone"),
    ):
        value = rep.value(sb.BENCH, case, "throughput")
        if math.isfinite(value) and math.isfinite(kernel):
            goal = None if case == sb.JOB_ON else 0.70
            rep.ratios.append(Ratio(name, ratio(value, kernel), goal, f"{case} GFLOP/s", "kernel alone GFLOP/s"))
    k = rep.raw.get("normsim_kernel")
    u = rep.raw.get("normsim_inf_udf")
    if k and u:
        rep.ratios.append(
            Ratio(
                "NormSim∞ through Spark / kernel alone (rows/s)",
                ratio(u["rows"] / u["seconds"], k["inf_rows"] / k["inf_seconds"]),
                None,
                "NormSim∞ UDF rows/s",
                "NormSim∞ kernel rows/s",
            )
        )


# --------------------------------------------------------------------------------------------------
# Rendering


def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "rows/s":
        return f"{value:,.0f} rows/s"
    if unit == "s":
        return f"{value:,.1f} s"
    if unit == "GFLOP/s":
        return f"{value:,.1f} GFLOP/s"
    if unit == "samples/s":
        return f"{value:,.1f} samples/s" if value < 100 else f"{value:,.0f} samples/s"
    if unit in ("%", "ms"):
        return f"{value:,.1f} {unit}"
    if unit == "":
        return f"{value:.3g}"
    return f"{value:,.0f} {unit}"


def render_markdown(doc: dict[str, Any], command: str) -> str:
    """The results document as Markdown: context, the results table, the ratios table."""
    m, s = doc["machine_start"], doc["sizes"]
    blas = m["blas"]
    blas_txt = (
        f"{blas.get('internal_api')} {blas.get('version')}, kernel {blas.get('architecture')}, "
        f"{blas.get('num_threads')} threads"
        if "internal_api" in blas
        else blas.get("note", "unknown")
    )
    env = ", ".join(f"{k}={v}" for k, v in m["env"].items() if v is not None) or "none set"
    lines = [
        f"## clipsift benchmarks ({doc['preset']} sizes)",
        "",
        f"- command: `{command}` ({doc['seconds'] / 60:.1f} min)",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}, "
        f"numpy {m['numpy']}, pyspark {m['pyspark']}, pyarrow {m['pyarrow']}",
        f"- BLAS: {blas_txt}; BLAS/OpenMP environment: {env}",
        f"- other Java processes (concurrent Spark) at start / end: {m['other_java_processes']} / "
        f"{doc['machine_end']['other_java_processes']}; load average at start / end: "
        f"{m['load_average'][0]} / {doc['machine_end']['load_average'][0]}; CPU used by other processes "
        f"over the run: {doc['others_cores']:.2f} cores on average (each measurement's own figure is in its note)",
    ]
    if set(SCORE_BENCHMARKS) & set(doc["benchmarks"]):
        lines.append(
            f"- sizes: d = {s['dim']}, B = {s['batch_size']:,}, {s['shards']} shards × {s['rows_per_shard']:,} rows, "
            f"K = {s['rounds']}, τ = {s['tau']}, negCLIPLoss work {doc['negclip_flops'] / 1e12:.2f} TFLOP "
            f"(K·Σ 2·B_b²·d); NormSim M = {s['normsim_targets']:,}"
        )
    e = doc.get("embed_sizes")
    if e:
        cases = "; ".join(
            f"{c['label']} ({c['name']}): {c['samples']:,} samples, batches {c['image_batch_size']} images / "
            f"{c['text_batch_size']} texts"
            for c in e["models"]
        )
        data = doc["raw"].get("embed_data", {}).get("source", "")
        lines.append(f"- embedding: {cases}; best of {e['repeats']}; fp32 CPU, random weights; data: {data}")
    lines += [
        "",
        "| benchmark | case | metric | value | note |",
        "|---|---|---|---:|---|",
    ]
    for r in doc["rows"]:
        cells = (r["bench"], r["case"], r["metric"], _fmt(r["value"], r["unit"]), r["note"])
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if doc["ratios"]:
        lines += ["", "| ratio | value | goal | met |", "|---|---:|---:|---|"]
        for r in doc["ratios"]:
            value = "n/a" if not math.isfinite(r["value"]) else f"{100 * r['value']:.0f} %"
            goal = "—" if r["goal"] is None else f"≥ {100 * r['goal']:.0f} %"
            met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
            lines.append(f"| {r['name']} | {value} | {goal} | {met} |")
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict[str, Any], out: Path, command: str) -> str:
    """Write ``results.md`` and ``results.json`` under ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(doc, command)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({**doc, "command": command}, indent=2, default=str) + "\n")
    return md


def _selected(only: Sequence[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    return [b for b in BENCHMARKS if b in names] if names else list(BENCHMARKS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.benchmarks.run``."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"), help="folder for results.md/json")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the whole suite")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this benchmark (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    selected = _selected(args.only)
    command = "python -m tests.benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="clipsift-bench-"))
    try:
        doc = run_suite(sizes, selected, scratch)
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(write_outputs(doc, args.out, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
