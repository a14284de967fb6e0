"""Smoke test of ``bench_kernels_torch`` at toy sizes (both parts, the GPU part's code on the CPU), so it cannot rot.

It checks that every figure is finite and that the torch path agrees with numpy; it never looks at a timing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="pip install torch (clipsift's gpu extra)")

from . import bench_kernels_torch as bench


def test_both_parts_report_finite_numbers_and_agree_with_numpy(tmp_path: Path) -> None:
    doc = bench.run(bench.SIZES["toy"], gpu_device="cpu", command="pytest")
    rows = doc["rows"]
    assert {r["case"].split(",")[0] for r in rows} >= {"negCLIPLoss", "NormSim∞", "plain matmul"}
    for r in rows:
        assert math.isfinite(r["value"]), r
    fp32 = [r for r in rows if r["case"] in ("negCLIPLoss, torch fp32 vs numpy", "NormSim∞, torch fp32 vs numpy")]
    assert len(fp32) == 2 and all(r["value"] < 1e-5 for r in fp32)
    gpu = doc["raw"]["torch_kernels_gpu"]
    assert [v["max_abs_diff"] < 1e-5 for k, v in gpu.items() if k.startswith("negclip_fp32_")] == [True]
    assert gpu["normsim_fp32"]["max_abs_diff"] < 1e-5
    md = bench.render(doc)
    assert "| case | metric | value | note |" in md


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this host has CUDA")
def test_gpu_part_without_cuda_says_so_and_measures_nothing() -> None:
    rep = bench.run_gpu(bench.SIZES["toy"], "cuda")
    assert rep.rows == [] and rep.raw == {"torch_kernels_gpu": {"skipped": "no CUDA device: GPU figures not measured"}}
