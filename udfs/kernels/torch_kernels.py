"""negCLIPLoss and NormSim∞ on torch: the GPU path of :mod:`.negclip` and :mod:`.normsim` (ALGORITHMS.md §1, §2).

Imported only when a score runs on torch (``negclip.device`` / ``normsim.device``, chosen in
:func:`clipsift.udfs.score.kernel_device`): importing :mod:`clipsift.udfs.kernels` never imports torch, and the
CPU image scores without it. Same arguments, blocking and results (numpy float64) as the numpy kernels, plus
``device`` and ``precision``; equal to them within 1e-5 at the default ``precision="fp32"``.

* negCLIPLoss: the group's rows move to the device once. Per batch and per block of ``block_rows`` rows, the
  float32 logits ``(f/τ)·gᵀ``, their row log-sum-exp and their column log-sum-exp, the columns combined across
  blocks by a running log-add-exp (float64), so memory is O(block_rows·B), never O(B²). Every log-sum-exp
  subtracts its maximum and sums float32 exponentials (``torch.logsumexp``). The numpy kernel shares one
  exponential between both directions and repairs columns that underflow, to save a pass through memory on the
  CPU; on the device both directions are direct, with nothing to repair and no sync with the host.
* NormSim∞: a running maximum of ``|f·t|`` (or ``f·t``) over target blocks × pool blocks. A target that is
  already a tensor (:func:`resident`, kept on the GPU once per worker) is used where it is.

``precision`` is the matmul's only: ``fp32`` is IEEE float32 (TF32 off, whatever the process's global setting);
``tf32`` and ``bf16`` round the matmul inputs (10- and 7-bit mantissas) and accumulate and return float32. On
CUDA they run on the tensor cores (cuBLAS TF32; ``torch.mm(..., out_dtype=torch.float32)`` on bfloat16); on
the CPU they are emulated by rounding the inputs, so their error is measurable without a GPU. The log-sum-exp
and the maxima are float32 in every case.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

from clipsift.udfs.kernels._checks import as_matrix
from clipsift.udfs.kernels.negclip import BLOCK_ELEMENTS, _batch_members

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
#: Share of the device's free memory a target may take to stay resident (:func:`resident`).
RESIDENT_SHARE = 0.5


def negclip_loss(
    img: np.ndarray,
    txt: np.ndarray,
    batches: np.ndarray,
    tau: float = 0.01,
    return_parts: bool = False,
    block_rows: int | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
) -> np.ndarray | dict[str, np.ndarray]:
    """negCLIPLoss of every sample, averaged over K rounds of batches, on ``device``.

    Args:
        img: ``(N, d)`` image embeddings, used as given.
        txt: ``(N, d)`` caption embeddings, row-aligned with ``img``.
        batches: ``(K, N)`` integer batch ids (any ids; batch sizes may differ).
        tau: temperature τ > 0.
        return_parts: return ``clip_score``, ``r_i2t``, ``r_t2i`` and ``negclip_loss`` in a dict.
        block_rows: rows of the similarity block; default keeps a block under 256 MiB.
        device: a torch device (``cpu``, ``cuda``, ``cuda:1``).
        precision: the matmul's, one of :data:`PRECISIONS`.

    Returns:
        ``(N,)`` float64 negCLIPLoss, or the dict of parts, as :func:`clipsift.udfs.kernels.negclip_loss`.
    """
    f = as_matrix(img, "img")
    g = as_matrix(txt, "txt")
    if f.shape != g.shape:
        raise ValueError(f"img and txt must have the same shape, got {f.shape} and {g.shape}")
    plan = np.asarray(batches)
    if plan.ndim == 1:
        plan = plan[None, :]
    if plan.ndim != 2 or plan.shape[1] != f.shape[0]:
        raise ValueError(f"batches must have shape (K, {f.shape[0]}), got {np.asarray(batches).shape}")
    if not np.issubdtype(plan.dtype, np.integer):
        raise ValueError(f"batches must hold integer batch ids, got dtype {plan.dtype}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    _check_precision(precision)

    dev = torch.device(device)
    n, rounds = f.shape[0], plan.shape[0]
    with torch.inference_mode(), _matmul_mode(dev, precision):
        f_dev, g_dev = _to_device(f, dev), _to_device(g, dev)
        sums = torch.zeros((4, n), dtype=torch.float64, device=dev)  # clip_score, r_i2t, r_t2i, negclip_loss
        for k in range(rounds):
            for idx in _batch_members(plan[k]):
                rows = torch.from_numpy(idx).to(dev)
                d, ri, rt = batch_parts(f_dev[rows], g_dev[rows], tau, block_rows, precision)
                sums[:, rows] += torch.stack((d, ri, rt, (d - ri) - rt))
        if rounds > 1:
            sums /= rounds
        parts: np.ndarray = sums.cpu().numpy()
    if return_parts:
        return {key: parts[i] for i, key in enumerate(("clip_score", "r_i2t", "r_t2i", "negclip_loss"))}
    total: np.ndarray = parts[3]
    return total


def batch_parts(
    f: torch.Tensor, g: torch.Tensor, tau: float, block_rows: int | None = None, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIPScore, R_i2t and R_t2i of one batch, on the batch's device (float64 ``(B,)`` tensors each).

    ``f`` and ``g`` are the batch's ``(B, d)`` float32 rows on one device. As in the numpy kernel, the diagonal is
    read off the same logits the log-sum-exps see, and ``R ≥ ½ s_ii`` holds in both directions, so that
    ``s_ii − R_i2t − R_t2i ≤ 0`` exactly in floating point. Call it under :func:`_matmul_mode` for ``fp32`` on CUDA
    to be IEEE whatever the global TF32 setting (:func:`negclip_loss` does).
    """
    n = f.shape[0]
    rows = block_rows or max(1, min(n, BLOCK_ELEMENTS // max(n, 1)))
    a = _operand(f * (1.0 / tau), precision)  # the matmul then yields logits s/τ directly
    b = _operand(g, precision)
    diag = torch.empty(n, dtype=torch.float64, device=f.device)
    row_lse = torch.empty(n, dtype=torch.float64, device=f.device)
    col_lse = torch.full((n,), -math.inf, dtype=torch.float64, device=f.device)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        s = _mm(a[lo:hi], b)
        diag[lo:hi] = torch.diagonal(s, offset=lo)
        row_lse[lo:hi] = torch.logsumexp(s, dim=1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(s, dim=0).double())
        del s
    diag *= tau
    half = 0.5 * tau
    return diag, torch.maximum(half * row_lse, 0.5 * diag), torch.maximum(half * col_lse, 0.5 * diag)


def normsim_inf(
    img: np.ndarray,
    target: np.ndarray | torch.Tensor,
    signed: bool = False,
    block_size: int = 8192,
    *,
    device: str = "cpu",
    precision: str = "fp32",
) -> np.ndarray:
    """NormSim_∞: ``max_j |f_i · t_j|`` (or ``max_j f_i · t_j`` when ``signed``), float64 ``(N,)``, on ``device``.

    Args:
        img: ``(N, d)`` pool image embeddings.
        target: ``(M, d)`` target image embeddings: a float32 array (a memory map is read block by block and each
            block copied to the device), or a tensor, e.g. from :func:`resident`, used where it is.
        signed: the plain maximum instead of the maximum absolute similarity.
        block_size: target rows per block.
        device: a torch device.
        precision: the matmul's, one of :data:`PRECISIONS`.
    """
    f = as_matrix(img, "img")
    t = target if isinstance(target, torch.Tensor) else np.asarray(target)
    if t.ndim != 2 or t.shape[1] != f.shape[1]:
        raise ValueError(f"target must be (M, {f.shape[1]}), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("target is empty")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    _check_precision(precision)

    dev = torch.device(device)
    pool_rows = max(1, BLOCK_ELEMENTS // block_size)
    with torch.inference_mode(), _matmul_mode(dev, precision):
        a = _operand(_to_device(f, dev), precision)
        best = torch.full((f.shape[0],), -math.inf, dtype=torch.float32, device=dev)
        for tlo in range(0, t.shape[0], block_size):
            blk = t[tlo : tlo + block_size]
            if isinstance(blk, torch.Tensor):
                tb = _operand(blk.to(dev), precision)
            else:
                tb = _operand(_to_device(as_matrix(blk, "target"), dev), precision)
            for lo in range(0, f.shape[0], pool_rows):
                sim = _mm(a[lo : lo + pool_rows], tb)
                if not signed:
                    sim.abs_()
                best[lo : lo + pool_rows] = torch.maximum(best[lo : lo + pool_rows], sim.amax(dim=1))
        result: np.ndarray = best.cpu().numpy().astype(np.float64)
    return result


def resident(target: np.ndarray, device: str, precision: str = "fp32") -> np.ndarray | torch.Tensor:
    """``target`` as a tensor on ``device`` in the form the matmul takes (bfloat16 for ``bf16`` on CUDA), when it
    fits in :data:`RESIDENT_SHARE` of the device's free memory; else ``target`` itself, streamed block by block.

    The NormSim UDF keeps the result per worker, so a target of a million rows crosses the bus once, not per batch.
    """
    _check_precision(precision)
    dev = torch.device(device)
    t = np.asarray(target)
    if t.ndim != 2:
        raise ValueError(f"target must be a 2-D (rows, dim) array, got shape {t.shape}")
    if dev.type != "cuda":
        with torch.inference_mode():
            return _operand(_to_device(as_matrix(t, "target"), dev), precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    free, _total = torch.cuda.mem_get_info(dev)
    if t.shape[0] * t.shape[1] * dtype.itemsize > RESIDENT_SHARE * free:
        return target
    with torch.inference_mode():
        out = torch.empty(t.shape, dtype=dtype, device=dev)
        step = max(1, BLOCK_ELEMENTS // max(t.shape[1], 1))  # a block at a time: no full float32 copy for bf16
        for lo in range(0, t.shape[0], step):
            out[lo : lo + step] = _operand(_to_device(as_matrix(t[lo : lo + step], "target"), dev), precision)
    return out


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _to_device(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A C-contiguous float32 array as a tensor on ``dev`` (no copy on the CPU; the kernels never write to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # Arrow buffers, memmaps
        return torch.from_numpy(x).to(dev)


def _operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``x`` (float32) as the matmul takes it at ``precision``: bfloat16 for ``bf16`` on CUDA; on the CPU, float32
    rounded to bfloat16's or TF32's mantissa (what the tensor cores see); else ``x``. Idempotent."""
    if precision == "fp32" or x.dtype == torch.bfloat16:
        return x
    if x.device.type == "cuda":
        return x.to(torch.bfloat16) if precision == "bf16" else x  # tf32: cuBLAS rounds (see _matmul_mode)
    if precision == "bf16":
        return x.to(torch.bfloat16).to(torch.float32)
    drop = 23 - 10  # TF32 keeps 10 of float32's 23 mantissa bits: round to nearest on the magnitude
    bits = x.contiguous().view(torch.int32)
    return ((bits + (1 << (drop - 1))) & -(1 << drop)).view(torch.float32)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a · bᵀ`` as float32: bfloat16 operands are multiplied on the tensor cores with a float32 result."""
    if a.dtype == torch.bfloat16:
        try:
            return torch.mm(a, b.t(), out_dtype=torch.float32)
        except TypeError as err:  # torch.mm gained out_dtype in torch 2.8
            raise RuntimeError(
                f"precision bf16 needs torch >= 2.8 (torch.mm with out_dtype), this is {torch.__version__}; "
                "use precision: tf32 or fp32"
            ) from err
    return a @ b.t()


@contextmanager
def _matmul_mode(dev: torch.device, precision: str) -> Iterator[None]:
    """float32 matmuls in IEEE float32, or TF32 on CUDA for ``tf32``; the process's setting is restored after.

    The CPU always runs IEEE float32 here (tf32/bf16 are emulated in :func:`_operand`): a global ``medium`` or
    ``high`` setting would otherwise let oneDNN round on CPUs that can.
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" and dev.type == "cuda" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
