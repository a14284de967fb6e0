"""negCLIPLoss (Wang et al., NeurIPS 2024; ALGORITHMS.md §1): CLIPScore minus the two contrastive normalisers.

For a batch B holding sample i, with s_ab = img_a · txt_b:

    R_i2t(i) = ½ τ · LSE_{j∈B}(s_ij / τ)     R_t2i(i) = ½ τ · LSE_{j∈B}(s_ji / τ)
    negCLIPLoss(i) = s_ii − R_i2t(i) − R_t2i(i)          (≤ 0; averaged over K rounds)

The batch is processed in row blocks: a ``(block_rows, B)`` float32 similarity block at a time, one
exponential per element (shifted by its row maximum) serving both directions. Row sums give the
image→text LSE directly; column sums reuse the same exponentials re-weighted by exp((r_i − a)/τ),
and the rare column whose mass underflows there is recomputed exactly. Column LSEs are combined
across row blocks with a running log-add-exp, so memory is O(block_rows · B), never O(B²).
"""

from __future__ import annotations

import numpy as np

from clipsift.udfs.kernels._checks import as_matrix
from clipsift.udfs.kernels._parallel import exp_sums

#: Largest similarity block (elements) held at once when ``block_rows`` is not given: 256 MiB of float32.
BLOCK_ELEMENTS = 1 << 26
#: Column sums below this are recomputed exactly (their terms may have underflowed in float32).
_UNDERFLOW_GUARD = 1e-20


def negclip_loss(
    img: np.ndarray,
    txt: np.ndarray,
    batches: np.ndarray,
    tau: float = 0.01,
    return_parts: bool = False,
    block_rows: int | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """negCLIPLoss of every sample, averaged over K rounds of batches.

    Args:
        img: ``(N, d)`` image embeddings, used as given (the job L2-normalises on ingest).
        txt: ``(N, d)`` caption embeddings, row-aligned with ``img``.
        batches: ``(K, N)`` integer batch ids; ``batches[k, i]`` is the batch holding sample ``i``
            in round ``k``. Any ids; batch sizes may differ (e.g. a remainder batch).
        tau: temperature τ > 0 (0.01 for OpenAI CLIP).
        return_parts: return a dict with ``clip_score``, ``r_i2t``, ``r_t2i`` and
            ``negclip_loss`` (each ``(N,)``, averaged over rounds) instead of the score alone.
        block_rows: rows of the similarity block; default keeps a block under 256 MiB.

    Returns:
        ``(N,)`` float64 negCLIPLoss, or the dict of parts.
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

    n, rounds = f.shape[0], plan.shape[0]
    diag = np.zeros(n)
    r_i2t = np.zeros(n)
    r_t2i = np.zeros(n)
    total = np.zeros(n)
    for k in range(rounds):
        for idx in _batch_members(plan[k]):
            d, ri, rt = batch_parts(f[idx], g[idx], tau, block_rows)
            diag[idx] += d
            r_i2t[idx] += ri
            r_t2i[idx] += rt
            total[idx] += (d - ri) - rt
    if rounds > 1:
        for arr in (diag, r_i2t, r_t2i, total):
            arr /= rounds
    if return_parts:
        return {"clip_score": diag, "r_i2t": r_i2t, "r_t2i": r_t2i, "negclip_loss": total}
    return total


def _batch_members(ids: np.ndarray) -> list[np.ndarray]:
    """Row indices of each batch, batches in ascending id order, rows in ascending position."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    cuts = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    return np.split(order, cuts)


def batch_parts(
    f: np.ndarray, g: np.ndarray, tau: float, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLIPScore, R_i2t and R_t2i of one batch (rows of ``f`` and ``g`` are the batch members).

    Args:
        f: ``(B, d)`` float32 C-contiguous image embeddings of the batch.
        g: ``(B, d)`` float32 C-contiguous caption embeddings of the batch.
        tau: temperature.
        block_rows: rows per similarity block (default: under 256 MiB).

    Returns:
        ``(s_ii, R_i2t, R_t2i)``, each ``(B,)`` float64, with ``R ≥ ½ s_ii`` in both directions so
        that ``s_ii − R_i2t − R_t2i ≤ 0`` holds exactly in floating point.
    """
    f = as_matrix(f, "img")
    g = as_matrix(g, "txt")
    n = f.shape[0]
    rows = block_rows or max(1, min(n, BLOCK_ELEMENTS // max(n, 1)))
    f_logit = f * np.float32(1.0 / tau)  # the matmul then yields logits s/τ directly
    diag = np.empty(n)
    row_lse = np.empty(n)
    col_lse = np.full(n, -np.inf)
    buffer = np.empty((min(rows, n), n), dtype=np.float32)  # reused: no fresh pages per block
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        s = np.matmul(f_logit[lo:hi], g.T, out=buffer[: hi - lo])
        local = np.arange(hi - lo)
        diag[lo:hi] = s[local, local + lo]
        rmax, rowsum, ref, colsum = exp_sums(s)  # s now holds exp(s - rmax)
        row_lse[lo:hi] = rmax + np.log(rowsum)
        part = np.full(n, -np.inf)
        safe = colsum >= _UNDERFLOW_GUARD
        part[safe] = ref + np.log(colsum[safe])
        if not safe.all():
            cols = np.flatnonzero(~safe)
            exact = (f_logit[lo:hi] @ g[cols].T).astype(np.float64)
            cmax = exact.max(axis=0)
            part[cols] = cmax + np.log(np.exp(exact - cmax).sum(axis=0))
        col_lse = np.logaddexp(col_lse, part)
    # Back from logits to similarity units; R >= s_ii / 2 holds exactly (row) or by the clamp (column).
    diag *= tau
    return diag, 0.5 * tau * row_lse, np.maximum(0.5 * tau * col_lse, 0.5 * diag)
