"""NormSim (Wang et al., NeurIPS 2024; ALGORITHMS.md §2): how close a pool image is to a target set.

    NormSim_p(i) = ‖ (f_i · t_j)_{j=1..M} ‖_p        (image embeddings only; higher is better)

p = 2 goes through the d×d second moment S = Σ_j t_j t_jᵀ: NormSim_2(i) = sqrt(f_iᵀ S f_i), so the
target is reduced once and the pool costs O(N·d²). p = ∞ is the maximum |cosine| (the authors'
``torch.norm(p=inf)``), or the signed maximum on request; it is blocked over pool rows and target
rows so a target of millions of rows (e.g. a memory-mapped ``.npy``) streams through bounded memory.
"""

from __future__ import annotations

import math

import numpy as np

from clipsift.udfs.kernels._checks import as_matrix

#: Pool rows per block for p = ∞.
_POOL_BLOCK = 4096


def second_moment(target: np.ndarray, block_size: int = 65536) -> np.ndarray:
    """Uncentred second moment ``S = Σ_j t_j t_jᵀ`` (not divided by M), float64 ``(d, d)``.

    Args:
        target: ``(M, d)`` target embeddings (may be a memory map; read block by block).
        block_size: target rows read at a time.
    """
    t = np.asarray(target)
    if t.ndim != 2:
        raise ValueError(f"target must be a 2-D (rows, dim) array, got shape {t.shape}")
    moment = np.zeros((t.shape[1], t.shape[1]))
    for lo in range(0, t.shape[0], block_size):
        blk = np.asarray(t[lo : lo + block_size], dtype=np.float64)
        moment += blk.T @ blk
    return moment


def normsim2_from_moment(img: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """NormSim_2 from a precomputed second moment: ``sqrt(f_iᵀ S f_i)``, float64 ``(N,)``."""
    f = as_matrix(img, "img").astype(np.float64)
    s = np.asarray(moment, dtype=np.float64)
    if s.shape != (f.shape[1], f.shape[1]):
        raise ValueError(f"moment must be ({f.shape[1]}, {f.shape[1]}) for dim {f.shape[1]}, got {s.shape}")
    quad: np.ndarray = np.einsum("ij,ij->i", f @ s, f)
    result: np.ndarray = np.sqrt(np.maximum(quad, 0.0))
    return result


def normsim_inf(img: np.ndarray, target: np.ndarray, signed: bool = False, block_size: int = 8192) -> np.ndarray:
    """NormSim_∞: ``max_j |f_i · t_j|`` (or ``max_j f_i · t_j`` when ``signed``), float64 ``(N,)``.

    Args:
        img: ``(N, d)`` pool image embeddings.
        target: ``(M, d)`` target image embeddings, float32 (a memory map is read block by block).
        signed: the plain maximum instead of the maximum absolute similarity.
        block_size: target rows per block.
    """
    f = as_matrix(img, "img")
    t = np.asarray(target)
    if t.ndim != 2 or t.shape[1] != f.shape[1]:
        raise ValueError(f"target must be (M, {f.shape[1]}), got shape {t.shape}")
    if t.shape[0] == 0:
        raise ValueError("target is empty")
    best = np.full(f.shape[0], -np.inf, dtype=np.float32)
    for tlo in range(0, t.shape[0], block_size):
        tblk = as_matrix(t[tlo : tlo + block_size], "target")
        for lo in range(0, f.shape[0], _POOL_BLOCK):
            sim = f[lo : lo + _POOL_BLOCK] @ tblk.T
            if not signed:
                np.abs(sim, out=sim)
            np.maximum(best[lo : lo + _POOL_BLOCK], sim.max(axis=1), out=best[lo : lo + _POOL_BLOCK])
    return best.astype(np.float64)


def normsim(img: np.ndarray, target: np.ndarray, p: float, signed: bool = False, block_size: int = 8192) -> np.ndarray:
    """NormSim_p of each pool image against a target set.

    Args:
        img: ``(N, d)`` pool image embeddings, used as given.
        target: ``(M, d)`` target image embeddings, used as given.
        p: 2 or ``float("inf")``.
        signed: for p = ∞, the signed maximum instead of the maximum absolute similarity.
        block_size: target rows per block.

    Returns:
        ``(N,)`` float64 scores.
    """
    if p == 2:
        if signed:
            raise ValueError("signed applies to p = inf only")
        return normsim2_from_moment(img, second_moment(target, block_size))
    if math.isinf(p) and p > 0:
        return normsim_inf(img, target, signed=signed, block_size=block_size)
    raise ValueError(f"p must be 2 or inf, got {p}")


def normsim2_dynamic(img: np.ndarray, candidates: np.ndarray, n_final: int, iterations: int) -> np.ndarray:
    """NormSim₂-D (VAS-D, ALGORITHMS.md §2.3): target-free, iteratively shrinking selection.

    S₀ is the second moment of the whole pool; each iteration scores the current rows by fᵀ S f,
    keeps the best ``n − chunk`` (exactly ``n_final`` at the last iteration) and recomputes S from
    the kept rows. Deterministic: ties keep the lower index.

    Args:
        img: ``(N, d)`` pool image embeddings.
        candidates: indices of the starting set (e.g. the CLIPScore top 30 %).
        n_final: rows to keep.
        iterations: T ≥ 1.

    Returns:
        The ``n_final`` kept indices, ascending.
    """
    f = as_matrix(img, "img")
    cur = np.unique(np.asarray(candidates, dtype=np.int64))
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if cur.size and (cur[0] < 0 or cur[-1] >= f.shape[0]):
        raise ValueError("candidates must index rows of img")
    if not 0 <= n_final <= cur.size:
        raise ValueError(f"n_final must be in [0, {cur.size}] (the number of candidates), got {n_final}")
    moment = second_moment(f) / max(f.shape[0], 1)
    chunk = math.ceil((cur.size - n_final) / iterations)
    for t in range(iterations):
        if cur.size == n_final:
            break
        fc = f[cur].astype(np.float64)
        scores = np.einsum("ij,ij->i", fc @ moment, fc)
        keep = n_final if t == iterations - 1 else max(n_final, cur.size - chunk)
        order = np.lexsort((cur, -scores))[:keep]
        cur = np.sort(cur[order])
        kept = f[cur].astype(np.float64)
        moment = kept.T @ kept / max(cur.size, 1)
    return cur
