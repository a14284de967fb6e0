"""CLIP-powered data selection (Yang et al., ICLR 2025; ALGORITHMS.md §4): scores and selection.

Inputs are features that already went through the trained adapters (image adapter ``A_I`` for
images, text adapter ``A_T`` for class prompts; the released scoring script's shared-adapter defect
is not reproduced: the caller passes each side through its own adapter).

* :func:`semantic_alignment` (SAS): cosine of an adapted image and the adapted prompt of its label.
* :func:`diversity_within_label` / :func:`diversity_of_group` (SDS): mean Euclidean distance to the
  ``k − 1`` nearest neighbours **with the same label** (exact kNN, features not normalised). Rows
  are grouped by their actual label, not by the released code's contiguous index blocks of size
  ``N / C`` (equal only when the file is sorted by label). Tiled over rows and columns: memory is
  O(``block_rows`` × ``col_block``), never O(class size²).
* :func:`minmax`: min-max normalisation of a score over the dataset.
* :func:`selection_scores` and :func:`select_top_k`: the scalable criterion
  ``c_i = SAS'_i / mean(SAS') + λ · SDS'_i / mean(SDS')`` and its exact top-k.
* :func:`optimise_selection` / :func:`run_selection_optimiser`: the paper's STE optimiser, literally,
  kept for parity with the released code (it selects the top-k by ``c`` up to ties and a few
  boundary rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipsift.udfs.kernels._checks import as_matrix

#: Class rows per distance tile in :func:`diversity_of_group`.
COLUMN_BLOCK = 4096
#: Rows per block in :func:`semantic_alignment`.
_SAS_BLOCK = 8192


def semantic_alignment(img_adapted: np.ndarray, prompt_adapted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Semantic Alignment Score: ``SAS_i = cos(img_i, prompt[label_i])``.

    Both sides are normalised here (cosine, as in the paper), in float64. A row or prompt with norm
    0 (or non-finite values) gets NaN.

    Args:
        img_adapted: ``(n, d)`` adapted image features ``A_I(E_I(x_i))``.
        prompt_adapted: ``(C, d)`` adapted class-prompt features ``A_T(E_T("A photo of a {c}"))``.
        labels: ``(n,)`` integer labels in ``[0, C)``.

    Returns:
        ``(n,)`` float64 scores in ``[-1, 1]``.
    """
    img = as_matrix(img_adapted, "img_adapted")
    prompts = np.asarray(prompt_adapted, dtype=np.float64)
    if prompts.ndim != 2 or prompts.shape[1] != img.shape[1]:
        raise ValueError(f"prompt_adapted must be (C, {img.shape[1]}), got shape {prompts.shape}")
    lab = _as_labels(labels, img.shape[0])
    if lab.size and (lab.min() < 0 or lab.max() >= prompts.shape[0]):
        raise ValueError(f"labels must lie in [0, {prompts.shape[0]}), got [{lab.min()}, {lab.max()}]")
    prompt_unit = prompts / _safe_norms(prompts)[:, None]
    out = np.empty(img.shape[0], dtype=np.float64)
    for lo in range(0, img.shape[0], _SAS_BLOCK):
        blk = img[lo : lo + _SAS_BLOCK].astype(np.float64)
        dots = np.einsum("ij,ij->i", blk, prompt_unit[lab[lo : lo + _SAS_BLOCK]])
        out[lo : lo + _SAS_BLOCK] = dots / _safe_norms(blk)
    return out


def diversity_of_group(x: np.ndarray, k: int, block_rows: int = 4096, col_block: int = COLUMN_BLOCK) -> np.ndarray:
    """Sample Diversity Score within one class: mean distance to the ``k − 1`` nearest other rows.

    Matches scikit-learn's exact ``NearestNeighbors(n_neighbors=k).kneighbors(x)`` with the first
    neighbour (the row itself) dropped: the row is excluded by index, so an exact duplicate still
    counts as a neighbour at distance 0. A class with ``n ≤ k − 1`` other rows uses all of them
    (scikit-learn would refuse); a singleton class has no neighbour and gets NaN, which callers fill
    before selecting (see :func:`selection_scores`).

    The class is compared in tiles of ``block_rows × col_block`` float64 squared distances from the
    ``‖a‖² + ‖b‖² − 2a·b`` expansion on class-centred rows (float64 like scikit-learn's distances of
    float32 inputs; centring keeps the expansion well conditioned far from the origin); each query
    row keeps its ``k − 1`` best candidates across column tiles, which are finally re-measured as
    direct float64 distances. Memory is O(``block_rows`` × (``col_block`` + k)) for the tiles plus
    O(n × d) for the centred copy, whatever the class size.

    Args:
        x: ``(n, d)`` adapted image features of one class, used as given (not normalised).
        k: scikit-learn's ``n_neighbors`` (itself included), ``k ≥ 2``; the paper uses 50 for
            CIFAR-100 and 100 for CIFAR-10.
        block_rows: query rows per tile.
        col_block: class rows per tile.

    Returns:
        ``(n,)`` float64 scores (NaN for a singleton class).
    """
    f = as_matrix(x, "x")
    _check_k(k)
    _check_block(block_rows, "block_rows")
    _check_block(col_block, "col_block")
    n = f.shape[0]
    out = np.full(n, np.nan, dtype=np.float64)
    n_nb = min(k - 1, n - 1)
    if n_nb < 1:
        return out
    centred = f.astype(np.float64)
    centred -= centred.mean(axis=0)
    sq = np.einsum("ij,ij->i", centred, centred)
    for lo in range(0, n, block_rows):
        hi = min(n, lo + block_rows)
        nb = _nearest_in_tiles(centred, sq, lo, hi, n_nb, col_block)
        total = np.zeros(hi - lo, dtype=np.float64)
        for j in range(n_nb):
            diff = centred[lo:hi] - centred[nb[:, j]]
            total += np.sqrt(np.einsum("ij,ij->i", diff, diff))
        out[lo:hi] = total / n_nb
    return out


def _nearest_in_tiles(centred: np.ndarray, sq: np.ndarray, lo: int, hi: int, n_nb: int, col_block: int) -> np.ndarray:
    """Indices ``(hi − lo, n_nb)`` of the ``n_nb`` nearest rows to rows ``lo:hi``, themselves excluded."""
    rows = hi - lo
    best_d2 = np.empty((rows, 0), dtype=np.float64)
    best_idx = np.empty((rows, 0), dtype=np.int64)
    for clo in range(0, centred.shape[0], col_block):
        chi = min(centred.shape[0], clo + col_block)
        d2 = centred[lo:hi] @ centred[clo:chi].T
        d2 *= -2.0
        d2 += sq[lo:hi, None]
        d2 += sq[None, clo:chi]
        own = np.arange(max(lo, clo), min(hi, chi))
        d2[own - lo, own - clo] = np.inf
        cand_d2 = np.concatenate([best_d2, d2], axis=1)
        cand_idx = np.concatenate([best_idx, np.broadcast_to(np.arange(clo, chi), d2.shape)], axis=1)
        del d2
        if cand_d2.shape[1] > n_nb:
            part = np.argpartition(cand_d2, n_nb - 1, axis=1)[:, :n_nb]
            cand_d2 = np.take_along_axis(cand_d2, part, axis=1)
            cand_idx = np.take_along_axis(cand_idx, part, axis=1)
        best_d2, best_idx = cand_d2, cand_idx
    return best_idx


def diversity_within_label(
    x: np.ndarray, labels: np.ndarray, k: int, block_rows: int = 4096, col_block: int = COLUMN_BLOCK
) -> np.ndarray:
    """Sample Diversity Score of every row, with neighbours taken among rows of the same label.

    Rows are grouped by their label value (any order; the released code's contiguous-block grouping
    is not reproduced) and each group goes through :func:`diversity_of_group`.

    Args:
        x: ``(n, d)`` adapted image features, used as given (not normalised).
        labels: ``(n,)`` integer labels, in any order.
        k: scikit-learn's ``n_neighbors`` (itself included), ``k ≥ 2``.
        block_rows: query rows per tile.
        col_block: class rows per tile (memory O(``block_rows`` × (``col_block`` + k)) per class).

    Returns:
        ``(n,)`` float64 scores; rows of a singleton class get NaN.
    """
    f = as_matrix(x, "x")
    lab = _as_labels(labels, f.shape[0])
    _check_k(k)
    _check_block(block_rows, "block_rows")
    _check_block(col_block, "col_block")
    out = np.full(f.shape[0], np.nan, dtype=np.float64)
    if f.shape[0] == 0:
        return out
    order = np.argsort(lab, kind="stable")
    bounds = np.flatnonzero(np.diff(lab[order])) + 1
    for rows in np.split(order, bounds):
        out[rows] = diversity_of_group(f[rows], k, block_rows, col_block)
    return out


def minmax(x: np.ndarray) -> np.ndarray:
    """Min-max normalisation to ``[0, 1]`` over the whole array (ALGORITHMS.md §4.2).

    NaN entries stay NaN and are ignored for the minimum and maximum. A constant input (all finite
    values equal) maps to zeros; an all-NaN or empty input comes back as is. Infinite values are
    rejected.

    Args:
        x: ``(n,)`` scores.

    Returns:
        ``(n,)`` float64 scores.
    """
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {v.shape}")
    if np.isinf(v).any():
        raise ValueError("x contains infinite values")
    finite = ~np.isnan(v)
    if not finite.any():
        return v.copy()
    lo = v[finite].min()
    span = v[finite].max() - lo
    if span == 0:
        return np.where(finite, 0.0, np.nan)
    out: np.ndarray = (v - lo) / span
    return out


def selection_scores(sas_n: np.ndarray, sds_n: np.ndarray, lam: float) -> np.ndarray:
    """The per-row criterion ``c_i = SAS'_i / mean(SAS') + λ · SDS'_i / mean(SDS')``.

    Minimising the paper's loss at a fixed count selects the rows with the highest ``c``, so this is
    the scalable form of the selection (:func:`select_top_k`). A term whose mean is 0 (an all-zero,
    e.g. constant, score) carries no ranking information and contributes 0.

    Args:
        sas_n: ``(N,)`` min-max normalised SAS, finite.
        sds_n: ``(N,)`` min-max normalised SDS, finite (fill singleton-class NaNs first).
        lam: λ, the weight of diversity (0.1 in the paper's code).

    Returns:
        ``(N,)`` float64 criterion.
    """
    sas = _as_scores(sas_n, "sas_n")
    sds = _as_scores(sds_n, "sds_n")
    if sas.shape != sds.shape:
        raise ValueError(f"sas_n and sds_n must have the same shape, got {sas.shape} and {sds.shape}")
    if not np.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    return _over_mean(sas) + lam * _over_mean(sds)


def select_top_k(c: np.ndarray, ratio: float) -> np.ndarray:
    """Keep exactly ``int(N · ratio)`` rows with the highest ``c`` (ties: the lower index).

    Args:
        c: ``(N,)`` finite criterion from :func:`selection_scores`.
        ratio: selection ratio in ``[0, 1]``; the count is ``int(N · ratio)`` as in the paper's code.

    Returns:
        ``(N,)`` bool mask.
    """
    v = _as_scores(c, "c")
    k = _target_count(v.size, ratio)
    mask = np.zeros(v.size, dtype=bool)
    mask[np.argsort(-v, kind="stable")[:k]] = True
    return mask


@dataclass(frozen=True)
class SelectionRun:
    """Outcome of :func:`run_selection_optimiser`.

    Attributes:
        mask: ``(N,)`` bool, the selected rows ``{i : m_i > 0.5}``.
        steps: SGD steps taken.
        converged: whether it stopped on the β-term ``< 0.001`` rather than at ``max_steps``.
    """

    mask: np.ndarray
    steps: int
    converged: bool


def run_selection_optimiser(
    sas_n: np.ndarray,
    sds_n: np.ndarray,
    ratio: float,
    lam: float = 0.1,
    beta: float = 2.0,
    lr: float = 1e-3,
    momentum: float = 0.9,
    max_steps: int = 100_000,
    init: float = 0.01,
    temperature: float = 100.0,
) -> SelectionRun:
    """The paper's multi-objective STE selection optimiser, literally, in numpy (ALGORITHMS.md §4.3).

    ``w`` starts at ``init`` for every row, ``m = σ(temperature · w)`` and, with ``k = int(N · ratio)``,

        L(w) = −mean(m · SAS'/mean(SAS')) − λ · mean(m · SDS'/mean(SDS')) + β · |Σ STE(m) − k| / N

    where ``STE(m) = 1[m > 0.5]`` forward and the identity backward. The gradient is analytic:
    ``∂L/∂w_i = temperature · m_i(1 − m_i) · (β · sign(count − k) − c_i) / N`` with ``c`` from
    :func:`selection_scores`. SGD with momentum as in PyTorch (``buf = momentum · buf + grad``,
    ``w −= lr · buf``); the loop stops before a step once the β-term is below 0.001. Computed in
    float64 (the released code runs float32 on a GPU).

    Rows with equal ``c`` follow equal trajectories, so a tie group is kept or dropped whole: if the
    group at the boundary is wider than the tolerance (``|count − k| < 0.0005 · N / (β / 2)``),
    the loop runs to ``max_steps``. A row with ``c_i > β`` is never dropped (its gradient keeps
    pushing it up), so a ratio below the share of such rows cannot be met either.

    Args:
        sas_n: ``(N,)`` min-max normalised SAS, finite.
        sds_n: ``(N,)`` min-max normalised SDS, finite.
        ratio: selection ratio in ``[0, 1]``.
        lam: λ.
        beta: β, the weight of the count penalty.
        lr: SGD learning rate.
        momentum: SGD momentum.
        max_steps: most steps.
        init: initial value of every ``w_i`` (0.01: every row starts selected).
        temperature: the sigmoid's sharpness (100).

    Returns:
        The mask, the number of steps and whether the count criterion was met.
    """
    c = selection_scores(sas_n, sds_n, lam)
    n = c.size
    k = _target_count(n, ratio)
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    w = np.full(n, float(init), dtype=np.float64)
    if n == 0:
        return SelectionRun(mask=np.zeros(0, dtype=bool), steps=0, converged=True)
    buf = np.zeros(n, dtype=np.float64)
    m = np.empty(n, dtype=np.float64)
    grad = np.empty(n, dtype=np.float64)
    half_t = 0.5 * temperature
    scale = temperature / n
    steps = 0
    converged = False
    while True:
        # σ(t·w) = (1 + tanh(t·w / 2)) / 2 never overflows.
        np.multiply(w, half_t, out=m)
        np.tanh(m, out=m)
        m += 1.0
        m *= 0.5
        count = int(np.count_nonzero(m > 0.5))
        if beta * abs(count - k) / n < 0.001:
            converged = True
            break
        if steps >= max_steps:
            break
        # grad = t · m(1 − m) · (β·sign(count − k) − c) / N
        np.subtract(1.0, m, out=grad)
        grad *= m
        grad *= scale
        grad *= beta * np.sign(count - k) - c
        buf *= momentum
        buf += grad
        w -= lr * buf
        steps += 1
    return SelectionRun(mask=m > 0.5, steps=steps, converged=converged)


def optimise_selection(
    sas_n: np.ndarray,
    sds_n: np.ndarray,
    ratio: float,
    lam: float = 0.1,
    beta: float = 2.0,
    lr: float = 1e-3,
    momentum: float = 0.9,
    max_steps: int = 100_000,
    init: float = 0.01,
    temperature: float = 100.0,
) -> np.ndarray:
    """The mask chosen by the paper's STE optimiser; see :func:`run_selection_optimiser`.

    Returns:
        ``(N,)`` bool mask ``{i : m_i > 0.5}``.
    """
    return run_selection_optimiser(sas_n, sds_n, ratio, lam, beta, lr, momentum, max_steps, init, temperature).mask


def _as_labels(labels: np.ndarray, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    return lab.astype(np.int64, copy=False)


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite (fill NaN, e.g. singleton-class SDS, first)")
    return v


def _over_mean(v: np.ndarray) -> np.ndarray:
    mean = float(v.mean()) if v.size else 0.0
    out: np.ndarray = np.zeros_like(v) if mean == 0 else v / mean
    return out


def _safe_norms(x: np.ndarray) -> np.ndarray:
    norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[~(np.isfinite(norms) & (norms > 0))] = np.nan
    return norms


def _target_count(n: int, ratio: float) -> int:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return int(n * ratio)


def _check_k(k: int) -> None:
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2 (n_neighbors, itself included), got {k}")


def _check_block(size: int, name: str) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"{name} must be a positive integer, got {size}")
