"""Unit tests for ``clipsift.udfs.kernels.clipselect`` (no Spark): SAS, SDS, min-max and the STE optimiser.

SAS and SDS are checked against float64 brute forces written here from ALGORITHMS.md §4.2 (dense
per-label distance matrices, sorted rows, the first neighbour dropped as scikit-learn's
``kneighbors`` does). The optimiser of §4.3 is compared with the exact top-k by the criterion ``c``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from numpy.typing import NDArray

from clipsift.udfs.kernels import (
    diversity_of_group,
    diversity_within_label,
    minmax,
    optimise_selection,
    run_selection_optimiser,
    select_top_k,
    selection_scores,
    semantic_alignment,
)

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

RTOL = 1e-6


# --------------------------------------------------------------------------------------------
# helpers: brute-force references (float64)
# --------------------------------------------------------------------------------------------


def _brute_sas(img: F32, prompts: F32, labels: I64) -> F64:
    """Return ``a · b / (‖a‖ ‖b‖)`` row by row in float64."""
    a = img.astype(np.float64)
    b = prompts.astype(np.float64)[labels]
    out: F64 = np.array([ai @ bi / (np.linalg.norm(ai) * np.linalg.norm(bi)) for ai, bi in zip(a, b, strict=True)])
    return out


def _brute_group(x: F32, k: int) -> F64:
    """Return scikit-learn's ``kneighbors(n_neighbors=k)`` distances, first column dropped, averaged."""
    x64 = x.astype(np.float64)
    if x64.shape[0] < 2:
        return np.full(x64.shape[0], np.nan)
    dist = np.sqrt(((x64[:, None, :] - x64[None, :, :]) ** 2).sum(axis=-1))
    out: F64 = np.sort(dist, axis=1)[:, 1:k].mean(axis=1)
    return out


def _brute_sds(x: F32, labels: I64, k: int) -> F64:
    """Return the per-label SDS by brute force."""
    out = np.empty(x.shape[0])
    for lab in np.unique(labels):
        rows = np.flatnonzero(labels == lab)
        out[rows] = _brute_group(x[rows], k)
    return out


def _released_sds(x: F32, n_classes: int, k: int) -> F64:
    """Return the released code's SDS: "classes" are contiguous index blocks of size ``N / C``."""
    size = x.shape[0] // n_classes
    out = np.empty(x.shape[0])
    for c in range(n_classes):
        out[c * size : (c + 1) * size] = _brute_group(x[c * size : (c + 1) * size], k)
    return out


def _labelled(rng: np.random.Generator, sizes: list[int], d: int) -> tuple[F32, I64]:
    """Return class-dependent features for classes of the given sizes, rows shuffled."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), d)) * 3.0
    x = (centres[labels] + rng.normal(size=(labels.size, d)) * rng.uniform(0.5, 2.0)).astype(np.float32)
    perm = rng.permutation(labels.size)
    return x[perm], labels[perm].astype(np.int64)


def _scores(rng: np.random.Generator, n: int, tied: bool) -> tuple[F64, F64]:
    """Return min-max normalised (SAS', SDS'); ``tied`` makes every (SAS, SDS) pair occur exactly twice."""
    half = n // 2 if tied else n
    sas = rng.normal(0.3, 0.05, size=half)
    sds = rng.gamma(2.0, 1.0, size=half)
    if tied:
        perm = rng.permutation(n)
        sas, sds = np.tile(sas, 2)[perm], np.tile(sds, 2)[perm]
    return minmax(sas), minmax(sds)


# --------------------------------------------------------------------------------------------
# SAS
# --------------------------------------------------------------------------------------------


def test_sas_matches_brute_force_cosine() -> None:
    rng = np.random.default_rng(0)
    img = (rng.normal(size=(300, 24)) * rng.uniform(0.1, 5.0, size=(300, 1))).astype(np.float32)
    prompts = (rng.normal(size=(7, 24)) * rng.uniform(0.1, 5.0, size=(7, 1))).astype(np.float32)
    labels = rng.integers(0, 7, size=300)
    got = semantic_alignment(img, prompts, labels)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _brute_sas(img, prompts, labels), rtol=RTOL, atol=1e-12)
    # Invariant to the scale of either side (a cosine, normalised inside); powers of 2 scale exactly.
    np.testing.assert_allclose(semantic_alignment(img * 4, prompts * 0.5, labels), got, rtol=1e-12)


def test_sas_zero_rows_are_nan_and_labels_checked() -> None:
    img = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    prompts = np.array([[2.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    got = semantic_alignment(img, prompts, np.array([0, 0, 1]))
    assert got[0] == pytest.approx(1.0)
    assert np.isnan(got[1]) and np.isnan(got[2])
    with pytest.raises(ValueError, match="labels"):
        semantic_alignment(img, prompts, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="labels"):
        semantic_alignment(img, prompts, np.array([0, -1, 1]))


# --------------------------------------------------------------------------------------------
# SDS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "block_rows", "col_block"),
    # k = 40 exceeds every class below but the largest; col_block < k merges candidates over tiles.
    [(2, 7, 5), (5, 13, 16), (12, 10, 3), (12, 64, 30), (40, 9, 11), (40, 4096, 4096)],
)
def test_sds_matches_brute_force(k: int, block_rows: int, col_block: int) -> None:
    rng = np.random.default_rng(k + block_rows)
    x, labels = _labelled(rng, [1, 3, 11, 37, 90], d=9)
    labels = labels * 10 - 20  # arbitrary, non-contiguous, negative label values
    got = diversity_within_label(x, labels, k, block_rows=block_rows, col_block=col_block)
    want = _brute_sds(x, labels, k)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-9, equal_nan=True)
    singleton = np.flatnonzero(np.isnan(want))
    assert singleton.size == 1 and np.isnan(got[singleton]).all()


def test_sds_duplicates_count_as_neighbours_at_distance_zero() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=np.float32)
    got = diversity_of_group(x, k=2)
    np.testing.assert_allclose(got, [0.0, 0.0, 5.0, 5.0])
    got3 = diversity_of_group(x, k=3)
    np.testing.assert_allclose(got3, [2.5, 2.5, 5.0, 7.5])


def test_sds_far_tight_clusters_are_accurate() -> None:
    """Two tight sub-clusters far apart: in float32 the ‖a‖² + ‖b‖² − 2a·b expansion would lose them."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 16)) * 0.01
    x[:100, 0] += 1000.0
    x[100:, 0] -= 1000.0
    x32 = x.astype(np.float32)
    got = diversity_of_group(x32, 10, block_rows=33, col_block=47)
    np.testing.assert_allclose(got, _brute_group(x32, 10), rtol=1e-6)


def test_sds_group_equals_within_label_on_one_class() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 5)).astype(np.float32)
    np.testing.assert_array_equal(
        diversity_of_group(x, 8, block_rows=40, col_block=64),
        diversity_within_label(x, np.full(150, 3), 8, block_rows=40, col_block=64),
    )


def test_released_contiguous_blocks_differ_on_unsorted_labels() -> None:
    """Why the released grouping is not reproduced: it is right only for a file sorted by label."""
    rng = np.random.default_rng(5)
    x, labels = _labelled(rng, [60, 60, 60, 60], d=6)
    per_label = diversity_within_label(x, labels, 10)
    released = _released_sds(x, 4, 10)
    assert np.abs(per_label - released).max() > 0.1
    assert np.mean(~np.isclose(per_label, released, rtol=1e-6)) > 0.9
    order = np.argsort(labels, kind="stable")
    np.testing.assert_allclose(_released_sds(x[order], 4, 10), per_label[order], rtol=RTOL)


@pytest.mark.parametrize(("block_rows", "col_block"), [(50, 500), (500, 50)])
def test_sds_memory_is_bounded_by_tiles(block_rows: int, col_block: int) -> None:
    rng = np.random.default_rng(6)
    n = 3000
    x = rng.normal(size=(n, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        diversity_of_group(x, 20, block_rows=block_rows, col_block=col_block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A dense class matrix is 72 MB (float64); a tile and its candidates stay under 2 MB.
    assert peak < 8 * 2**20, peak


def test_sds_rejects_bad_arguments() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k must"):
        diversity_of_group(x, 1)
    with pytest.raises(ValueError, match="block_rows"):
        diversity_of_group(x, 2, block_rows=0)
    with pytest.raises(ValueError, match="col_block"):
        diversity_within_label(x, np.zeros(4, dtype=np.int64), 2, col_block=0)
    with pytest.raises(ValueError, match="labels"):
        diversity_within_label(x, np.zeros(3, dtype=np.int64), 2)
    assert diversity_within_label(np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.int64), 3).shape == (0,)


# --------------------------------------------------------------------------------------------
# min-max and the criterion
# --------------------------------------------------------------------------------------------


def test_minmax() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0, 6.0])), [0.0, 0.5, 0.25, 1.0])
    np.testing.assert_array_equal(minmax(np.array([1.5, 1.5, 1.5])), [0.0, 0.0, 0.0])
    got = minmax(np.array([np.nan, 1.0, 3.0, np.nan, 2.0]))
    np.testing.assert_array_equal(got, [np.nan, 0.0, 1.0, np.nan, 0.5])
    np.testing.assert_array_equal(minmax(np.array([np.nan, 7.0, 7.0])), [np.nan, 0.0, 0.0])
    assert np.isnan(minmax(np.array([np.nan, np.nan]))).all()
    assert minmax(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="infinite"):
        minmax(np.array([1.0, np.inf]))


def test_selection_scores_formula() -> None:
    rng = np.random.default_rng(7)
    sas, sds = rng.random(50), rng.random(50)
    np.testing.assert_allclose(selection_scores(sas, sds, 0.3), sas / sas.mean() + 0.3 * sds / sds.mean())
    np.testing.assert_allclose(selection_scores(sas, np.zeros(50), 0.1), sas / sas.mean())
    with pytest.raises(ValueError, match="finite"):
        selection_scores(sas, np.where(sds > 0.5, np.nan, sds), 0.1)


def test_select_top_k_count_and_ties() -> None:
    c = np.array([0.5, 0.9, 0.5, 0.1, 0.5, 0.9])
    np.testing.assert_array_equal(select_top_k(c, 0.5), [True, True, False, False, False, True])
    np.testing.assert_array_equal(select_top_k(c, 0.34), [False, True, False, False, False, True])
    assert select_top_k(c, 0.0).sum() == 0 and select_top_k(c, 1.0).all()
    rng = np.random.default_rng(8)
    big = rng.random(1001)
    for ratio in (0.9, 0.5, 0.3, 0.123):
        mask = select_top_k(big, ratio)
        assert mask.sum() == int(1001 * ratio)
        assert big[mask].min() > big[~mask].max()
    with pytest.raises(ValueError, match="ratio"):
        select_top_k(c, 1.5)


# --------------------------------------------------------------------------------------------
# the STE optimiser
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.3])
@pytest.mark.parametrize("n", [2000, 20000])
def test_optimiser_agrees_with_top_k(n: int, ratio: float, tied: bool) -> None:
    sas, sds = _scores(np.random.default_rng(n + int(100 * ratio)), n, tied)
    c = selection_scores(sas, sds, 0.1)
    k = int(n * ratio)
    run = run_selection_optimiser(sas, sds, ratio)
    top = select_top_k(c, ratio)
    count = int(run.mask.sum())
    assert run.converged
    assert abs(count - k) < 0.0005 * n
    # Thresholded by c: no row left out has a higher c than a selected row.
    assert c[run.mask].min() >= c[~run.mask].max()
    # Strictly: equal c means equal trajectories, so a tie group is selected whole. Both masks are
    # then prefixes of the same order and differ by the count slack only.
    assert c[run.mask].min() > c[~run.mask].max()
    sym = int(np.count_nonzero(run.mask != top))
    assert sym == abs(count - k)
    if n == 2000:
        assert sym == 0  # 0.0005 · N = 1: the count must be exact


def test_optimiser_cannot_split_a_tie_group() -> None:
    """A tie group wider than the count tolerance straddling k: the literal optimiser runs to max_steps."""
    rng = np.random.default_rng(9)
    n, ratio = 2000, 0.5
    sas, sds = rng.random(n), rng.random(n)
    c = selection_scores(sas, sds, 0.1)
    boundary = np.argsort(-c, kind="stable")[int(n * ratio) - 2 : int(n * ratio) + 2]
    sas[boundary], sds[boundary] = sas[boundary[0]], sds[boundary[0]]
    c = selection_scores(sas, sds, 0.1)
    run = run_selection_optimiser(sas, sds, ratio, max_steps=3000)
    assert not run.converged and run.steps == 3000
    tie = np.flatnonzero(c == c[boundary[0]])
    assert tie.size == 4
    assert run.mask[tie].all() or not run.mask[tie].any()
    assert abs(int(run.mask.sum()) - int(n * ratio)) == 2


def _reference_optimiser(sas: F64, sds: F64, ratio: float, max_steps: int) -> tuple[B, int]:
    """Return a term-by-term transcription of the released PyTorch loop (mask, steps), one row at a time."""
    n, k = sas.size, int(sas.size * ratio)
    w = [0.01] * n
    buf: list[float] | None = None
    for step in range(max_steps + 1):
        m = [1.0 / (1.0 + np.exp(-100.0 * wi)) for wi in w]
        hard = [1.0 if mi > 0.5 else 0.0 for mi in m]
        count_term = 2.0 * abs(sum(hard) - k) / n
        if count_term < 0.001 or step == max_steps:
            return np.array(hard, dtype=bool), step
        sign = float(np.sign(sum(hard) - k))
        grad = []
        for i in range(n):
            dm = -sas[i] / sas.mean() / n - 0.1 * sds[i] / sds.mean() / n + 2.0 * sign / n  # ∂L/∂m_i (STE: identity)
            grad.append(dm * 100.0 * m[i] * (1.0 - m[i]))
        buf = grad if buf is None else [0.9 * b + g for b, g in zip(buf, grad, strict=True)]  # torch: buf₁ = g₁
        w = [wi - 1e-3 * b for wi, b in zip(w, buf, strict=True)]
    raise AssertionError("unreachable")


def test_optimiser_matches_a_literal_transcription() -> None:
    sas, sds = _scores(np.random.default_rng(13), 300, tied=False)
    want_mask, want_steps = _reference_optimiser(sas, sds, 0.6, max_steps=2000)
    run = run_selection_optimiser(sas, sds, 0.6)
    assert run.converged and run.steps == want_steps
    np.testing.assert_array_equal(run.mask, want_mask)


def test_optimiser_is_deterministic_and_matches_its_mask() -> None:
    sas, sds = _scores(np.random.default_rng(10), 3000, tied=False)
    a = run_selection_optimiser(sas, sds, 0.7)
    b = run_selection_optimiser(sas.copy(), sds.copy(), 0.7)
    assert a.steps == b.steps and a.steps > 0
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(optimise_selection(sas, sds, 0.7), a.mask)


def test_optimiser_edge_cases() -> None:
    sas, sds = _scores(np.random.default_rng(11), 500, tied=False)
    full = run_selection_optimiser(sas, sds, 1.0)
    assert full.steps == 0 and full.converged and full.mask.all()  # init 0.01: every row starts selected
    none = run_selection_optimiser(sas, sds, 0.0, beta=10.0)
    assert none.converged and not none.mask.any()
    capped = run_selection_optimiser(sas, sds, 0.5, max_steps=5)
    assert capped.steps == 5 and not capped.converged


def test_optimiser_never_drops_rows_with_c_above_beta() -> None:
    """∂L/∂w_i ∝ β · sign(count − k) − c_i: a row with c_i > β rises even while too many are selected."""
    sas, sds = _scores(np.random.default_rng(12), 500, tied=False)
    c = selection_scores(sas, sds, 0.1)
    above = c > 2.0
    assert 0 < above.sum() < 50
    run = run_selection_optimiser(sas, sds, 0.0, beta=2.0, max_steps=3000)
    assert not run.converged
    assert run.mask[above].all()
    assert not run.mask[c < 1.9].any()
