"""Image-based filtering and SemDeDup-style deduplication (ALGORITHMS.md §5.2; Abbas et al., 2023).

Two kernels, both over embeddings used as given (unit rows, dot product = cosine, no renormalisation):

* :func:`nearest_centroid`: DataComp's image-based rule assigns each ``l14_img`` to the pool
  centroid with the **maximum dot product** (ties: the lower centroid index). Blocked over rows and
  centroids, so 100k centroids stream through O(block_rows · centroid_block) memory.
* :func:`semantic_duplicates`: within one cluster, rows whose cosine is ≥ ``threshold`` are
  duplicates; groups are the connected components of that graph and each keeps one representative,
  the row with the highest ``rank``. The cluster is compared in square tiles of the upper triangle
  and the pairs found are merged with a vectorised union-find, so memory is
  O(block_rows² + block_rows · d + n), never O(n²).

Exact duplicates are grouped by hashing the float32 row bytes (and checking them), before any
similarity is computed, so rounding can never split them and they are compared only once.
"""

from __future__ import annotations

import math

import numpy as np

from clipsift.udfs.kernels._checks import as_matrix

#: Similarities within this much below ``threshold`` still count as duplicates (float32 rounding).
SIMILARITY_EPS = 1e-6
#: Centroids per block in :func:`nearest_centroid`.
CENTROID_BLOCK = 4096
#: Most candidate pairs extracted from a tile at once (two int64 arrays: 16 MiB).
_MAX_PAIRS = 1 << 20
#: A tile with more pairs than this many per row and column is reduced to pairs of groups.
_GROUP_ABOVE = 1.0
#: Rows per block when hashing or comparing row bytes.
_HASH_BLOCK = 4096


def nearest_centroid(
    x: np.ndarray,
    centroids: np.ndarray,
    block_rows: int = 8192,
    centroid_block: int = CENTROID_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """The centroid with the maximum dot product for every row (DataComp's image-based assignment).

    Centroids that are bitwise identical are collapsed to their first occurrence, so an exact tie
    between copies always goes to the lower index; among distinct centroids, ties in the float32
    dot product also go to the lower index.

    Args:
        x: ``(n, d)`` embeddings (e.g. ``l14_img``), used as given.
        centroids: ``(k, d)`` centroids, ``k ≥ 1``, used as given; may be a memory map (read one
            block at a time).
        block_rows: rows of ``x`` per block.
        centroid_block: centroids per block; the similarity block is at most
            ``block_rows × centroid_block`` float32 (128 MiB with the defaults).

    Returns:
        ``(index, dot)``: ``(n,)`` int64 centroid indices and ``(n,)`` float32 dot products.
    """
    f = as_matrix(x, "x")
    c = np.asarray(centroids)
    if c.ndim != 2 or c.shape[1] != f.shape[1]:
        raise ValueError(f"centroids must be (k, {f.shape[1]}), got shape {c.shape}")
    if c.shape[0] == 0:
        raise ValueError("centroids is empty")
    _check_block(block_rows, "block_rows")
    _check_block(centroid_block, "centroid_block")
    n = f.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    best_idx = np.zeros(n, dtype=np.int64)
    if n == 0:
        return best_idx, best
    first = _first_identical(c)
    distinct = np.flatnonzero(first == np.arange(c.shape[0]))
    all_distinct = distinct.size == c.shape[0]
    buf = np.empty(min(block_rows, n) * min(centroid_block, distinct.size), dtype=np.float32)
    for clo in range(0, distinct.size, centroid_block):
        chi = min(distinct.size, clo + centroid_block)
        cblk = as_matrix(c[clo:chi] if all_distinct else c[distinct[clo:chi]], "centroids")
        for lo in range(0, n, block_rows):
            hi = min(n, lo + block_rows)
            sim = buf[: (hi - lo) * (chi - clo)].reshape(hi - lo, chi - clo)
            np.matmul(f[lo:hi], cblk.T, out=sim)
            arg = np.argmax(sim, axis=1)
            val = sim[np.arange(hi - lo), arg]
            # Strictly greater: an equal value in a later block keeps the lower index.
            better = val > best[lo:hi]
            best[lo:hi][better] = val[better]
            best_idx[lo:hi][better] = arg[better] + clo
    return distinct[best_idx], best


def semantic_duplicates(
    x: np.ndarray,
    rank: np.ndarray,
    threshold: float,
    block_rows: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup within one cluster: group near-duplicates and pick one representative per group.

    Rows ``i, j`` are duplicates when ``x[i] · x[j] ≥ threshold − SIMILARITY_EPS`` (rows as given,
    so the cosine for unit rows); bitwise-identical rows are always duplicates, whatever the
    threshold. Groups are the connected components of the duplicate graph, so duplication is
    transitive: a member's similarity to its representative may be **below** ``threshold`` (a chain
    a–b–c with only neighbours similar). Each group keeps the row with the highest ``rank``, ties
    to the lowest index.

    ``rank`` picks the variant. The SemDeDup paper keeps, among duplicates, the point farthest
    from its cluster centroid: pass ``rank = −(x · centroid)``. DataComp-style curation keeps the
    best by a chosen score: pass e.g. the CLIPScore or negCLIPLoss. (The paper also removes a
    point when any point ranked before it is within the threshold, without transitivity; the
    components here remove at least as much.)

    Args:
        x: ``(n, d)`` embeddings of one cluster, used as given.
        rank: ``(n,)`` numbers (int, float or bool; no NaN); higher is kept.
        threshold: cosine threshold, at most 1 (e.g. 0.95; SemDeDup's ε is ``1 − threshold``).
        block_rows: side of the square similarity tiles; working memory is about
            ``6 · block_rows² + 8 · block_rows · d`` bytes plus O(n) (about 100 MiB with the
            default at d = 768, whatever n).

    Returns:
        ``(keep_index, similarity)``: ``(n,)`` int64, the index of each row's representative
        (itself when kept, so ``keep_index[keep_index] == keep_index``), and ``(n,)`` float32,
        the dot product of each row with its representative, exactly 1.0 for the representative
        and its bitwise copies.
    """
    f = as_matrix(x, "x")
    n = f.shape[0]
    r = np.asarray(rank)
    if r.shape != (n,):
        raise ValueError(f"rank must have shape ({n},), got {r.shape}")
    if not (np.issubdtype(r.dtype, np.number) or r.dtype == np.bool_):
        raise ValueError(f"rank must be numeric, got dtype {r.dtype}")
    if np.issubdtype(r.dtype, np.complexfloating):
        raise ValueError("rank must be real")
    if np.issubdtype(r.dtype, np.floating) and np.isnan(r).any():
        raise ValueError("rank contains NaN")
    if not (math.isfinite(threshold) and threshold <= 1.0):
        raise ValueError(f"threshold must be finite and <= 1, got {threshold}")
    _check_block(block_rows, "block_rows")
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)

    # parent[i] is always the root (the lowest index) of i's group: a flat union-find forest.
    first = _first_identical(f)
    parent = first.copy()
    distinct = np.flatnonzero(first == np.arange(n))
    _link_similar(f, distinct, np.float32(threshold - SIMILARITY_EPS), block_rows, parent)

    dense = np.unique(r, return_inverse=True)[1].reshape(n)
    order = np.lexsort((np.arange(n), -dense.astype(np.int64)))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    best = np.full(n, n, dtype=np.int64)
    np.minimum.at(best, parent, position)
    keep = order[best[parent]]

    similarity = np.empty(n, dtype=np.float32)
    for lo in range(0, n, _HASH_BLOCK):
        hi = min(n, lo + _HASH_BLOCK)
        similarity[lo:hi] = np.einsum("ij,ij->i", f[lo:hi], f[keep[lo:hi]], dtype=np.float64)
    similarity[first == first[keep]] = 1.0
    return keep, similarity


def _check_block(size: int, name: str) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"{name} must be a positive integer, got {size}")


def _link_similar(f: np.ndarray, rows: np.ndarray, cut: np.float32, side: int, parent: np.ndarray) -> None:
    """Union every pair of ``rows`` with ``f[i] · f[j] ≥ cut`` into ``parent``, tile by tile.

    Only the upper triangle of tiles is computed. Each column tile is gathered sorted by the
    current group of its rows, so that a tile with many pairs can be reduced to pairs of groups
    (:func:`_link_groups`) instead of extracting every pair: a cluster of near-identical rows
    then costs about as much as one without duplicates.
    """
    m = rows.size
    tile = min(side, m)
    buf = np.empty(tile * tile, dtype=np.float32)
    mask_buf = np.empty(tile * tile, dtype=np.bool_)
    for lo in range(0, m, side):
        row_idx = rows[lo : lo + side]
        a = f[row_idx]
        for clo in range(lo, m, side):
            col_idx = rows[clo : clo + side]
            col_idx = col_idx[np.argsort(parent[col_idx], kind="stable")]
            shape = (row_idx.size, col_idx.size)
            sim = buf[: shape[0] * shape[1]].reshape(shape)
            np.matmul(a, f[col_idx].T, out=sim)
            mask = mask_buf[: shape[0] * shape[1]].reshape(shape)
            np.greater_equal(sim, cut, out=mask)
            found = int(np.count_nonzero(mask))
            if found > _GROUP_ABOVE * (shape[0] + shape[1]):
                _link_groups(mask, row_idx, col_idx, parent)
            elif found:
                i, j = np.nonzero(mask)
                _union(parent, row_idx[i], col_idx[j])


def _link_groups(mask: np.ndarray, row_idx: np.ndarray, col_idx: np.ndarray, parent: np.ndarray) -> None:
    """Union the groups linked by a dense tile: OR the mask over rows, then columns, of one group.

    ``col_idx`` must be sorted by group (``parent``); rows are put in group order here.
    """
    row_root = parent[row_idx]
    order = np.argsort(row_root, kind="stable")
    row_root = row_root[order]
    starts = np.flatnonzero(np.r_[True, row_root[1:] != row_root[:-1]])
    if starts.size < row_root.size:
        mask = np.logical_or.reduceat(mask[order], starts, axis=0)
        row_root = row_root[starts]
    else:
        row_root = parent[row_idx]
    col_root = parent[col_idx]
    starts = np.flatnonzero(np.r_[True, col_root[1:] != col_root[:-1]])
    if starts.size < col_root.size:
        mask = np.logical_or.reduceat(mask, starts, axis=1)
        col_root = col_root[starts]
    step = max(1, _MAX_PAIRS // mask.shape[1])
    for s in range(0, mask.shape[0], step):
        i, j = np.nonzero(mask[s : s + step])
        _union(parent, row_root[i + s], col_root[j])


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Merge the groups of each pair ``(a[k], b[k])`` in a flat forest rooted at the lowest index.

    Vectorised hooking: each round hooks the larger root of every still-split pair onto the
    smallest root paired with it, then flattens the forest by pointer jumping. Roots only ever
    decrease, so there are no cycles, and every round merges groups, so the loop ends.
    """
    while a.size:
        ra = parent[a]
        rb = parent[b]
        split = ra != rb
        if not split.any():
            return
        a, b, ra, rb = a[split], b[split], ra[split], rb[split]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent[:] = jumped


def _row_hash(f: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's float32 bytes (a random linear form over the 32-bit words, mod 2⁶⁴)."""
    n, d = f.shape
    weights = np.random.default_rng(0x5EED).integers(0, 1 << 62, size=d, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    h = np.empty(n, dtype=np.uint64)
    for lo in range(0, n, _HASH_BLOCK):
        words = as_matrix(f[lo : lo + _HASH_BLOCK], "x").view(np.uint32).astype(np.uint64)
        words *= weights
        h[lo : lo + _HASH_BLOCK] = words.sum(axis=1, dtype=np.uint64)
    return h


def _first_identical(f: np.ndarray) -> np.ndarray:
    """For each row, the lowest index of a row with the same float32 bytes (itself when none), int64.

    Rows are bucketed by :func:`_row_hash` and each candidate is checked byte for byte against the
    first row of its bucket; buckets with a hash collision are resolved exactly by sorting bytes.
    """
    n = f.shape[0]
    first = np.arange(n, dtype=np.int64)
    if n < 2:
        return first
    h = _row_hash(f)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    head = np.ones(n, dtype=np.bool_)
    head[1:] = hs[1:] != hs[:-1]
    if head.all():
        return first
    head_pos = np.maximum.accumulate(np.where(head, np.arange(n), 0))
    dup_pos = np.flatnonzero(~head)
    cand = order[dup_pos]
    lead = order[head_pos[dup_pos]]
    equal = np.empty(cand.size, dtype=np.bool_)
    for lo in range(0, cand.size, _HASH_BLOCK):
        hi = lo + _HASH_BLOCK
        ca = as_matrix(f[cand[lo:hi]], "x").view(np.uint32)
        le = as_matrix(f[lead[lo:hi]], "x").view(np.uint32)
        equal[lo:hi] = (ca == le).all(axis=1)
    first[cand[equal]] = lead[equal]
    if not equal.all():
        for pos in np.unique(head_pos[dup_pos[~equal]]):
            end = pos + 1
            while end < n and not head[end]:
                end += 1
            members = order[pos:end]
            rows = as_matrix(f[members], "x")
            keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)
            _, idx, inverse = np.unique(keys, return_index=True, return_inverse=True)
            first[members] = members[idx[inverse.reshape(-1)]]
    return first
