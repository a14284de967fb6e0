"""The score kernels' torch path on CUDA against the numpy kernels (skipped without a GPU).

fp32 must equal numpy within 1e-5 (TF32 off whatever the process's global setting); tf32 and bf16 run on the
tensor cores and must stay within their documented error. Then the UDF side: ``device: auto`` picks the GPU,
the job's group function and the NormSim∞ body give the numpy path's numbers, and the target stays on the GPU.
The same comparisons on the CPU are ``tests/unit/test_kernels_torch.py``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest
from numpy.typing import NDArray

torch = pytest.importorskip("torch", reason="pip install torch (clipsift's gpu extra)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from clipsift.udfs.arrow import from_matrix  # noqa: E402  (after the skips)
from clipsift.udfs.kernels import negclip_loss, normsim_inf, second_moment  # noqa: E402
from clipsift.udfs.kernels import torch_kernels as tk  # noqa: E402
from clipsift.udfs.score import (  # noqa: E402
    _DEVICE_TARGETS,
    NegClipSettings,
    TargetHandle,
    _normsim_inf,
    kernel_device,
    negclip_table,
)

F32 = NDArray[np.float32]
PART_KEYS = ("clip_score", "r_i2t", "r_t2i", "negclip_loss")
ATOL = 1e-5


def _unit(x: NDArray[np.floating]) -> F32:
    x64 = np.asarray(x, dtype=np.float64)
    out: F32 = (x64 / np.linalg.norm(x64, axis=-1, keepdims=True)).astype(np.float32)
    return out


def _pair(rng: np.random.Generator, n: int, d: int) -> tuple[F32, F32]:
    cos = min(0.5, 2 / math.sqrt(d))
    img = _unit(rng.normal(size=(n, d)))
    return img, _unit(img + rng.normal(size=(n, d)) * math.sqrt((1 / cos**2 - 1) / d))


def _plan(rng: np.random.Generator, n: int, batch_size: int, rounds: int) -> NDArray[np.int64]:
    plan = np.empty((rounds, n), dtype=np.int64)
    for k in range(rounds):
        plan[k, rng.permutation(n)] = np.arange(n) // batch_size
    return plan


@pytest.mark.parametrize(("tau", "block_rows"), [(0.01, None), (0.01, 1000), (0.001, None), (1.0, None)])
def test_negclip_cuda_fp32_equals_numpy(tau: float, block_rows: int | None) -> None:
    rng = np.random.default_rng(0)
    img, txt = _pair(rng, 10_000, 768)
    plan = _plan(rng, 10_000, 4096, 2)  # two full batches and a remainder
    want = negclip_loss(img, txt, plan, tau=tau, return_parts=True, block_rows=block_rows)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed globally: the kernel must still be IEEE at fp32
    try:
        got = tk.negclip_loss(img, txt, plan, tau=tau, return_parts=True, block_rows=block_rows, device="cuda")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    assert isinstance(want, dict) and isinstance(got, dict)
    for key in PART_KEYS:
        np.testing.assert_allclose(got[key], want[key], atol=ATOL, rtol=0, err_msg=key)


def test_negclip_cuda_duplicates_and_single_row_batches() -> None:
    rng = np.random.default_rng(1)
    img, txt = _pair(rng, 600, 64)
    img[10:40] = img[0]
    txt[10:40] = txt[0]
    img[50:80] = -txt[50:80]
    plan = np.concatenate([_plan(rng, 600, 64, 2), np.arange(600, dtype=np.int64)[None, :]])
    want = negclip_loss(img, txt, plan, return_parts=True, block_rows=7)
    got = tk.negclip_loss(img, txt, plan, return_parts=True, block_rows=7, device="cuda")
    assert isinstance(want, dict) and isinstance(got, dict)
    for key in PART_KEYS:
        np.testing.assert_allclose(got[key], want[key], atol=ATOL, rtol=0, err_msg=key)
    one = tk.negclip_loss(img[:1], txt[:1], np.zeros((1, 1), dtype=np.int64), device="cuda")
    assert isinstance(one, np.ndarray) and one[0] == 0.0


@pytest.mark.parametrize(("precision", "atol"), [("tf32", 1e-3), ("bf16", 6e-3)])
def test_negclip_cuda_reduced_precision_within_bounds(precision: str, atol: float) -> None:
    rng = np.random.default_rng(2)
    img, txt = _pair(rng, 8192, 768)
    plan = _plan(rng, 8192, 4096, 1)
    want = negclip_loss(img, txt, plan, return_parts=True)
    got = tk.negclip_loss(img, txt, plan, return_parts=True, device="cuda", precision=precision)
    assert isinstance(want, dict) and isinstance(got, dict)
    assert float(np.max(np.abs(got["clip_score"] - want["clip_score"]))) > 1e-6, "ran at full precision"
    for key in PART_KEYS:
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=0, err_msg=key)
    assert np.all(got["negclip_loss"] <= 0.0)


@pytest.mark.parametrize(("precision", "atol"), [("fp32", ATOL), ("tf32", 1e-3), ("bf16", 6e-3)])
@pytest.mark.parametrize("signed", [False, True])
def test_normsim_inf_cuda_equals_numpy(precision: str, atol: float, signed: bool) -> None:
    rng = np.random.default_rng(3)
    img = _unit(rng.normal(size=(5000, 768)))
    target = _unit(rng.normal(size=(50_000, 768)))
    want = normsim_inf(img, target, signed=signed)
    streamed = tk.normsim_inf(img, target, signed=signed, device="cuda", precision=precision)
    on_gpu = tk.resident(target, "cuda", precision)
    assert isinstance(on_gpu, torch.Tensor) and on_gpu.is_cuda
    resident = tk.normsim_inf(img, on_gpu, signed=signed, device="cuda", precision=precision)
    np.testing.assert_allclose(streamed, want, atol=atol, rtol=0)
    np.testing.assert_allclose(resident, streamed, atol=1e-6, rtol=0)


def test_auto_picks_the_gpu_and_the_udf_bodies_match_numpy() -> None:
    assert kernel_device("auto", "negclip.device") in ("cuda", "cuda:0")
    assert kernel_device("cuda:0", "negclip.device") == "cuda:0"
    rng = np.random.default_rng(4)
    img, txt = _pair(rng, 3000, 64)
    table = pa.table({"uid": [f"u{i:05d}" for i in range(3000)], "image_emb": from_matrix(img),
                      "text_emb": from_matrix(txt)})  # fmt: skip
    s = NegClipSettings(rounds=3, batch_size=1024, tau=0.01, seed=7, dim=64)
    on_cpu = negclip_table(table, dataclasses.replace(s, device="cpu"))
    on_gpu = negclip_table(table, dataclasses.replace(s, device="auto"))
    for col in ("negclip_loss", "negclip_r_i2t", "negclip_r_t2i"):
        np.testing.assert_allclose(on_gpu.column(col).to_numpy(), on_cpu.column(col).to_numpy(), atol=ATOL, rtol=0)

    target = _unit(rng.normal(size=(20_000, 64)))
    handle = TargetHandle("t", "sha-of-t", 20_000, second_moment(target), matrix=target)
    got = _normsim_inf(img, handle, False, 8192, "auto", "fp32")
    np.testing.assert_allclose(got, normsim_inf(img, target), atol=ATOL, rtol=0)
    assert any(k[:2] == ("t", "sha-of-t") and isinstance(v, torch.Tensor) for k, v in _DEVICE_TARGETS.items())
