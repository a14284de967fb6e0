"""Unit tests for ``clipsift.udfs.kernels.dedup`` (no Spark): nearest centroid and SemDeDup-style groups.

Both kernels are checked against float64 brute forces written here (dense similarity matrix,
breadth-first components), on random data with planted near-duplicates and exact copies.
"""

from __future__ import annotations

import tracemalloc
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from clipsift.udfs.kernels import dedup, nearest_centroid, semantic_duplicates

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]

EPS = dedup.SIMILARITY_EPS


# --------------------------------------------------------------------------------------------
# helpers: data and brute-force references (float64)
# --------------------------------------------------------------------------------------------


def _unit(x: NDArray[np.floating]) -> F64:
    """Return the rows of ``x`` scaled to unit L2 norm, in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    out: F64 = x64 / np.linalg.norm(x64, axis=-1, keepdims=True)
    return out


def _planted(rng: np.random.Generator, n_base: int, d: int) -> F32:
    """Random unit rows plus planted near-duplicates at several noise levels and exact copies, shuffled.

    Per base row: one copy at cosine ≈ 0.9995, one at ≈ 0.97, one at ≈ 0.92, a two-step chain at
    ≈ 0.96 per step, and (for every third base) two bitwise-identical copies.
    """
    base = _unit(rng.normal(size=(n_base, d)))
    rows = [base]
    for sigma in (0.03, 0.25, 0.42):
        rows.append(_unit(base + sigma * rng.normal(size=base.shape) / np.sqrt(d)))
    step = _unit(base + 0.28 * rng.normal(size=base.shape) / np.sqrt(d))
    rows += [step, _unit(step + 0.28 * rng.normal(size=base.shape) / np.sqrt(d))]
    x = np.concatenate(rows).astype(np.float32)
    x = np.concatenate([x, x[:n_base:3], x[:n_base:3]])
    out: F32 = x[rng.permutation(x.shape[0])]
    return out


def _identical(x: F32) -> NDArray[np.bool_]:
    """Dense ``(n, n)`` matrix: rows ``i`` and ``j`` have the same bytes."""
    keys = [row.tobytes() for row in x]
    return np.array([[a == b for b in keys] for a in keys], dtype=np.bool_).reshape(len(keys), len(keys))


def _components(adjacency: NDArray[np.bool_]) -> I64:
    """Component label (lowest member index) of each node, by breadth-first search."""
    n = adjacency.shape[0]
    label = np.full(n, -1, dtype=np.int64)
    for start in range(n):
        if label[start] >= 0:
            continue
        label[start] = start
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in np.flatnonzero(adjacency[node]):
                if label[other] < 0:
                    label[other] = start
                    queue.append(int(other))
    return label


def _brute_dedup(x: F32, rank: NDArray[np.generic], threshold: float) -> tuple[I64, F64, F64]:
    """Float64 reference: representatives, similarities, and the smallest |sim − cut| over all pairs."""
    x64 = np.asarray(x, dtype=np.float64)
    sim = x64 @ x64.T
    cut = threshold - EPS
    same = _identical(x)
    label = _components((sim >= cut) | same)
    n = x.shape[0]
    keep = np.empty(n, dtype=np.int64)
    for group in np.unique(label):
        members = np.flatnonzero(label == group)
        best = max(members, key=lambda i: (rank[i], -i))
        keep[members] = best
    similarity = sim[np.arange(n), keep]
    similarity[same[np.arange(n), keep]] = 1.0
    off = ~np.eye(n, dtype=np.bool_) & ~same
    margin = float(np.min(np.abs(sim[off] - cut))) if off.any() else np.inf
    return keep, similarity, np.asarray(margin)


def _brute_nearest(x: F32, centroids: F32) -> tuple[I64, F64, F64]:
    """Float64 argmax of ``x @ centroidsᵀ`` (first maximum), its value, and the full matrix."""
    sim = np.asarray(x, dtype=np.float64) @ np.asarray(centroids, dtype=np.float64).T
    idx = np.argmax(sim, axis=1).astype(np.int64)
    return idx, sim[np.arange(x.shape[0]), idx], sim


def _check_groups(keep: I64, rank: NDArray[np.generic]) -> None:
    """Idempotent representatives, each with the highest rank of its group (ties: lowest index)."""
    np.testing.assert_array_equal(keep[keep], keep)
    for rep in np.unique(keep):
        members = np.flatnonzero(keep == rep)
        top = max(rank[i] for i in members)
        assert rank[rep] == top
        assert rep == min(i for i in members if rank[i] == top)


# --------------------------------------------------------------------------------------------
# semantic_duplicates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.9, 0.95, 0.999])
@pytest.mark.parametrize(("n_base", "d", "block_rows", "seed"), [(40, 32, 4096, 0), (45, 24, 37, 1), (60, 64, 97, 2)])
def test_semantic_duplicates_matches_brute_force(
    threshold: float, n_base: int, d: int, block_rows: int, seed: int
) -> None:
    """Groups, representatives and similarities match the float64 reference, whatever the tiles."""
    rng = np.random.default_rng(seed)
    x = _planted(rng, n_base, d)
    rank = rng.integers(0, 5, size=x.shape[0])
    want_keep, want_sim, margin = _brute_dedup(x, rank, threshold)
    assert margin > 1e-5, "test data too close to the threshold for a float32 kernel"
    assert block_rows >= x.shape[0] or x.shape[0] % block_rows != 0

    keep, sim = semantic_duplicates(x, rank, threshold, block_rows=block_rows)
    assert keep.dtype == np.int64 and sim.dtype == np.float32
    np.testing.assert_array_equal(keep, want_keep)
    np.testing.assert_allclose(sim, want_sim, atol=1e-5, rtol=0)
    _check_groups(keep, rank)


@pytest.mark.parametrize("group_above", [0.0, float("inf")])
@pytest.mark.parametrize("max_pairs", [5, 1 << 20])
def test_tile_paths_match_brute_force(monkeypatch: pytest.MonkeyPatch, group_above: float, max_pairs: int) -> None:
    """Pairs taken one by one or reduced to pairs of groups, in small chunks or at once: same groups."""
    monkeypatch.setattr(dedup, "_GROUP_ABOVE", group_above)
    monkeypatch.setattr(dedup, "_MAX_PAIRS", max_pairs)
    rng = np.random.default_rng(11)
    x = _planted(rng, 30, 16)
    rank = rng.integers(0, 3, size=x.shape[0])
    want_keep, want_sim, margin = _brute_dedup(x, rank, 0.9)
    assert margin > 1e-5
    for block_rows in (3, 13, 64):
        keep, sim = semantic_duplicates(x, rank, 0.9, block_rows=block_rows)
        np.testing.assert_array_equal(keep, want_keep)
        np.testing.assert_allclose(sim, want_sim, atol=1e-5, rtol=0)


def test_planted_data_has_chains_and_groups() -> None:
    """The planted data exercises transitivity: some member is below threshold to its representative."""
    rng = np.random.default_rng(0)
    x = _planted(rng, 40, 32)
    keep, sim = semantic_duplicates(x, np.zeros(x.shape[0]), 0.95)
    sizes = np.bincount(keep)
    assert sizes.max() >= 3
    assert (sim < 0.95).any()
    assert np.unique(keep).size < x.shape[0] - 40


@pytest.mark.parametrize("block_rows", [1, 2, 3, 5, 1000])
def test_chain_is_one_group_with_similarity_below_threshold(block_rows: int) -> None:
    """a–b–c at cos θ = 0.96 per step form one group although cos(a, c) = 2·0.96² − 1 < 0.95."""
    theta = np.arccos(0.96)
    angles = np.array([0.0, theta, 2 * theta, 2.0])
    x = np.stack([np.cos(angles), np.sin(angles), np.zeros(4)], axis=1).astype(np.float32)
    keep, sim = semantic_duplicates(x, np.array([3, 0, 1, 9]), 0.95, block_rows=block_rows)
    np.testing.assert_array_equal(keep, [0, 0, 0, 3])
    np.testing.assert_allclose(sim, [1.0, 0.96, 2 * 0.96**2 - 1, 1.0], atol=1e-6)
    assert sim[2] < 0.95


def test_rank_ties_keep_lowest_index() -> None:
    """Equal ranks in a group: the lowest index is kept; a strictly higher rank beats a lower index."""
    v = _unit(np.random.default_rng(3).normal(size=(1, 8))).astype(np.float32)
    x = np.repeat(v, 4, axis=0)
    keep, sim = semantic_duplicates(x, np.array([1, 2, 2, 0]), 0.9)
    np.testing.assert_array_equal(keep, [1, 1, 1, 1])
    np.testing.assert_array_equal(sim, np.ones(4, dtype=np.float32))
    keep, _ = semantic_duplicates(x, np.array([1.5, 1.5, 1.5, 1.5]), 0.9)
    np.testing.assert_array_equal(keep, [0, 0, 0, 0])


def test_rank_descending_by_distance_keeps_farthest_from_centroid() -> None:
    """The SemDeDup-paper variant: rank = −(x · centroid) keeps the duplicate farthest from the centroid."""
    x = _unit(np.array([[1.0, 0.05], [1.0, 0.0], [1.0, 0.1]])).astype(np.float32)
    centroid = np.array([1.0, -0.2], dtype=np.float32)
    keep, _ = semantic_duplicates(x, -(x @ centroid), 0.99)
    np.testing.assert_array_equal(keep, [2, 2, 2])


@pytest.mark.parametrize("threshold", [-0.5, 0.5, 0.95, 0.999, 1.0])
def test_exact_duplicates_grouped_whatever_the_threshold(threshold: float) -> None:
    """Bitwise-identical rows share a group even when their dot product is far below the threshold."""
    rng = np.random.default_rng(4)
    x = _unit(rng.normal(size=(6, 16))).astype(np.float32)
    x[2] *= np.float32(0.3)  # not unit: x[2] · x[2] ≈ 0.09, only the byte hash can group its copy
    x = np.concatenate([x, x[[2, 4, 4]]])
    keep, sim = semantic_duplicates(x, np.arange(9), threshold)
    assert keep[2] == keep[6]
    assert keep[4] == keep[7] == keep[8]
    assert sim[2] == sim[6]
    assert threshold < 0 or sim[2] == 1.0  # below 0 the whole cluster is one group, kept at row 8
    assert sim[4] == sim[7] == sim[8] == 1.0


@pytest.mark.parametrize(("below", "grouped"), [(0.5e-6, True), (2e-6, False)])
def test_similarity_just_below_threshold(below: float, grouped: bool) -> None:
    """A dot product less than ``SIMILARITY_EPS`` below the threshold still counts (float32 rounding)."""
    c = np.float32(0.95)
    x = np.array([[1.0, 0.0], [c, np.sqrt(1 - np.float64(c) ** 2)]], dtype=np.float32)
    keep, _ = semantic_duplicates(x, np.zeros(2), float(c) + below)
    assert bool(keep[1] == 0) == grouped


def test_threshold_one_groups_only_exact_duplicates() -> None:
    """At threshold 1.0 a 0.9995-cosine near-duplicate stays apart; exact copies do not."""
    rng = np.random.default_rng(5)
    a = _unit(rng.normal(size=(1, 32)))
    near = _unit(a + 0.03 * rng.normal(size=a.shape) / np.sqrt(32))
    x = np.concatenate([a, near, a, _unit(rng.normal(size=(2, 32)))]).astype(np.float32)
    keep, _ = semantic_duplicates(x, np.zeros(5), 1.0)
    np.testing.assert_array_equal(keep, [0, 1, 0, 3, 4])


def test_singleton_and_empty_cluster() -> None:
    """One row is its own representative with similarity 1; zero rows give empty arrays."""
    keep, sim = semantic_duplicates(np.ones((1, 4), dtype=np.float32) * 0.5, np.array([7]), 0.95)
    np.testing.assert_array_equal(keep, [0])
    np.testing.assert_array_equal(sim, [1.0])
    keep, sim = semantic_duplicates(np.zeros((0, 4), dtype=np.float32), np.zeros(0), 0.95)
    assert keep.shape == (0,) and keep.dtype == np.int64
    assert sim.shape == (0,) and sim.dtype == np.float32


def test_hash_collisions_are_resolved_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every row hashed alike, byte comparison still finds the exact copies and nothing else."""
    rng = np.random.default_rng(6)
    x = _planted(rng, 20, 16)
    rank = rng.integers(0, 3, size=x.shape[0])
    want = semantic_duplicates(x, rank, 0.999)
    monkeypatch.setattr(dedup, "_row_hash", lambda f: np.zeros(f.shape[0], dtype=np.uint64))
    got = semantic_duplicates(x, rank, 0.999)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    first = dedup._first_identical(x)
    same = _identical(x)
    np.testing.assert_array_equal(first, np.argmax(same, axis=1))


def test_float64_input_and_inputs_unchanged() -> None:
    """float64 rows are used as float32; neither input array is modified."""
    rng = np.random.default_rng(7)
    x = _planted(rng, 15, 16).astype(np.float64)
    rank = rng.normal(size=x.shape[0])
    x_copy, rank_copy = x.copy(), rank.copy()
    got = semantic_duplicates(x, rank, 0.95, block_rows=16)
    want = semantic_duplicates(x.astype(np.float32), rank, 0.95)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(rank, rank_copy)


@pytest.mark.parametrize(
    ("threshold", "rank", "block_rows"),
    [
        (1.01, np.zeros(3), 8),
        (float("nan"), np.zeros(3), 8),
        (0.9, np.zeros(2), 8),
        (0.9, np.array([0, np.nan, 1]), 8),
        (0.9, np.zeros(3), 0),
    ],
)
def test_semantic_duplicates_rejects_bad_arguments(
    threshold: float, rank: NDArray[np.generic], block_rows: int
) -> None:
    """Threshold above 1 or NaN, rank of the wrong length or with NaN, and empty tiles are refused."""
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError):
        semantic_duplicates(x, rank, threshold, block_rows=block_rows)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_groups=st.integers(1, 8),
    n=st.integers(0, 40),
    d=st.integers(2, 6),
    threshold=st.sampled_from([0.9, 0.95, 0.999, 1.0]),
    block_rows=st.integers(1, 16),
    n_ranks=st.integers(1, 4),
)
def test_groups_are_consistent(
    seed: int, n_groups: int, n: int, d: int, threshold: float, block_rows: int, n_ranks: int
) -> None:
    """Property: representatives are idempotent, top-ranked in their group, clear pairs are merged."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_groups, d)))
    pick = rng.integers(0, n_groups, size=n)
    noise = rng.choice([0.0, 0.01, 0.2], size=(n, 1))
    x = _unit(centres[pick] + noise * rng.normal(size=(n, d))).astype(np.float32)
    rank = rng.integers(0, n_ranks, size=n)

    keep, sim = semantic_duplicates(x, rank, threshold, block_rows=block_rows)
    assert keep.shape == sim.shape == (n,)
    _check_groups(keep, rank)
    np.testing.assert_array_equal(sim[np.unique(keep)], 1.0)
    x64 = x.astype(np.float64)
    clear = (x64 @ x64.T) >= threshold + 1e-4
    i, j = np.nonzero(clear)
    np.testing.assert_array_equal(keep[i], keep[j])


def test_memory_stays_below_a_dense_similarity_matrix() -> None:
    """A 20k × 128 cluster never holds an n × n float32 matrix (traced peak below a quarter of one)."""
    rng = np.random.default_rng(8)
    n, d = 20_000, 128
    x = _unit(rng.normal(size=(n, d))).astype(np.float32)
    x[1::50] = _unit(x[::50] + 0.05 * rng.normal(size=x[::50].shape) / np.sqrt(d))
    x[2::50] = x[::50]
    rank = rng.normal(size=n)
    tracemalloc.start()
    try:
        keep, _ = semantic_duplicates(x, rank, 0.95)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 4, f"peak {peak / 2**20:.0f} MiB"
    assert np.unique(keep).size == n - 2 * (n // 50)


# --------------------------------------------------------------------------------------------
# nearest_centroid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "d", "block_rows", "centroid_block"),
    [(300, 50, 16, 8192, 4096), (257, 101, 32, 64, 17), (100, 7, 8, 7, 3), (5, 1, 4, 2, 1)],
)
def test_nearest_centroid_matches_brute_force(n: int, k: int, d: int, block_rows: int, centroid_block: int) -> None:
    """Index and dot product of the best centroid match the float64 argmax, for any blocking."""
    rng = np.random.default_rng(n + k)
    x = _unit(rng.normal(size=(n, d))).astype(np.float32)
    c = _unit(rng.normal(size=(k, d))).astype(np.float32)
    want_idx, want_dot, sim = _brute_nearest(x, c)
    top2 = np.sort(sim, axis=1)[:, -2:] if k > 1 else np.zeros((n, 2))
    assert k == 1 or np.min(top2[:, 1] - top2[:, 0]) > 1e-6, "near-tie in the test data"

    idx, dot = nearest_centroid(x, c, block_rows=block_rows, centroid_block=centroid_block)
    assert idx.dtype == np.int64 and dot.dtype == np.float32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dot, want_dot, atol=1e-6, rtol=0)


@pytest.mark.parametrize("centroid_block", [1, 2, 3, 4096])
def test_nearest_centroid_duplicate_centroids_tie_to_lower_index(centroid_block: int) -> None:
    """Bitwise-identical centroids (also in different blocks) always resolve to the first copy."""
    rng = np.random.default_rng(9)
    base = _unit(rng.normal(size=(5, 8))).astype(np.float32)
    order = rng.permutation(15)
    c = np.concatenate([base, base, base])[order]
    x = np.concatenate([base, _unit(rng.normal(size=(40, 8))).astype(np.float32)])
    idx, dot = nearest_centroid(x, c, block_rows=7, centroid_block=centroid_block)
    want_idx, want_dot, _ = _brute_nearest(x, c)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dot, want_dot, atol=1e-6, rtol=0)
    first = np.array([np.flatnonzero((c == c[i]).all(axis=1))[0] for i in range(15)])
    np.testing.assert_array_equal(first[idx], idx)


@pytest.mark.parametrize("centroid_block", [1, 2, 4096])
def test_nearest_centroid_distinct_centroids_with_equal_dot_tie_to_lower_index(centroid_block: int) -> None:
    """Distinct centroids with exactly the same dot product: the lower index wins."""
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    c = np.array([[0.0, 1.0], [0.6, 0.8], [0.6, -0.8], [0.6, 0.0]], dtype=np.float32)
    idx, dot = nearest_centroid(x, c, centroid_block=centroid_block)
    np.testing.assert_array_equal(idx, [1])
    np.testing.assert_array_equal(dot, np.float32([0.6]))


def test_nearest_centroid_uses_dot_product_not_cosine() -> None:
    """No renormalisation: a longer centroid in the same direction has the larger dot product."""
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    c = np.array([[0.9, 0.0], [2.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    idx, dot = nearest_centroid(x, c)
    np.testing.assert_array_equal(idx, [1, 2])
    np.testing.assert_array_equal(dot, np.float32([2.0, 0.5]))


def test_nearest_centroid_memory_mapped_centroids_and_empty_x(tmp_path: Path) -> None:
    """Centroids may be a memory map; zero rows give empty outputs."""
    rng = np.random.default_rng(10)
    c = _unit(rng.normal(size=(33, 8))).astype(np.float32)
    path = tmp_path / "c.npy"
    np.save(path, c)
    mapped = np.load(path, mmap_mode="r")
    x = _unit(rng.normal(size=(20, 8))).astype(np.float32)
    idx, _ = nearest_centroid(x, mapped, centroid_block=10)
    np.testing.assert_array_equal(idx, _brute_nearest(x, c)[0])
    idx, dot = nearest_centroid(np.zeros((0, 8), dtype=np.float32), c)
    assert idx.shape == dot.shape == (0,)


@pytest.mark.parametrize("shape", [(0, 8), (4, 7)])
def test_nearest_centroid_rejects_bad_centroids(shape: tuple[int, int]) -> None:
    """Empty centroids or a dimension mismatch are refused."""
    with pytest.raises(ValueError):
        nearest_centroid(np.ones((2, 8), dtype=np.float32), np.ones(shape, dtype=np.float32))
