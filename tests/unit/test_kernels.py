"""Unit tests for the numpy kernels in ``clipsift.udfs.kernels`` (no Spark).

Every kernel is checked against a float64 brute force written here from the specification in
ALGORITHMS.md §1 (negCLIPLoss) and §2 (NormSim, NormSim_2-D), plus properties of the scores.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from clipsift.udfs.kernels import clip_score, negclip_loss, normsim, normsim2_dynamic

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]

REPO_ROOT = Path(__file__).resolve().parents[2]
PART_KEYS = ("clip_score", "r_i2t", "r_t2i", "negclip_loss")
ATOL = 1e-5


# --------------------------------------------------------------------------------------------
# helpers: data and brute-force references (float64, plain loops)
# --------------------------------------------------------------------------------------------


def _unit(x: NDArray[np.floating]) -> F64:
    """Return the rows of ``x`` scaled to unit L2 norm, in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    out: F64 = x64 / np.linalg.norm(x64, axis=-1, keepdims=True)
    return out


def _random_unit(rng: np.random.Generator, n: int, d: int) -> F32:
    """Return ``n`` random unit vectors of dimension ``d`` as float32."""
    return _unit(rng.normal(size=(n, d))).astype(np.float32)


def _pair(rng: np.random.Generator, n: int, d: int, noise: float = 1.0) -> tuple[F32, F32]:
    """Return row-aligned unit image/caption embeddings with a positive correlation."""
    img = _unit(rng.normal(size=(n, d)))
    txt = _unit(img + noise * rng.normal(size=(n, d)) / math.sqrt(d))
    return img.astype(np.float32), txt.astype(np.float32)


def _batch_plan(rng: np.random.Generator, n: int, batch_size: int, rounds: int, shuffle_ids: bool = True) -> I64:
    """Return a (rounds, n) plan: a random permutation cut into chunks of ``batch_size``.

    The last chunk is a remainder batch when ``n`` is not a multiple of ``batch_size``. Chunk
    numbers are mapped to arbitrary, non-contiguous (also negative) integer ids.
    """
    n_chunks = -(-n // batch_size)
    plan = np.empty((rounds, n), dtype=np.int64)
    for k in range(rounds):
        perm = rng.permutation(n)
        chunk = np.empty(n, dtype=np.int64)
        chunk[perm] = np.arange(n) // batch_size
        if shuffle_ids:
            fixed = np.array([7, 1000, -3], dtype=np.int64)
            extra = rng.choice(np.arange(-(10**6), 10**6), size=n_chunks, replace=False) * 3 + 1
            ids = np.concatenate([fixed, extra])[:n_chunks]
            ids = ids[rng.permutation(n_chunks)]
            plan[k] = ids[chunk]
        else:
            plan[k] = chunk
    return plan


def _lse(x: F64) -> float:
    """Numerically stable log-sum-exp of a 1-D float64 array."""
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


def _brute_negclip(img: NDArray[np.floating], txt: NDArray[np.floating], batches: I64, tau: float) -> dict[str, F64]:
    """Float64 negCLIPLoss and its parts, one batch and one row at a time (ALGORITHMS.md §1.1)."""
    f = np.asarray(img, dtype=np.float64)
    g = np.asarray(txt, dtype=np.float64)
    plan = np.asarray(batches)
    n = f.shape[0]
    k_rounds = plan.shape[0]
    cs = np.einsum("nd,nd->n", f, g)
    r_i2t = np.zeros(n)
    r_t2i = np.zeros(n)
    for k in range(k_rounds):
        for b in np.unique(plan[k]):
            idx = np.flatnonzero(plan[k] == b)
            s = f[idx] @ g[idx].T / tau
            for a, i in enumerate(idx):
                r_i2t[i] += 0.5 * tau * _lse(s[a, :])
                r_t2i[i] += 0.5 * tau * _lse(s[:, a])
    r_i2t /= k_rounds
    r_t2i /= k_rounds
    return {
        "clip_score": cs,
        "r_i2t": r_i2t,
        "r_t2i": r_t2i,
        "negclip_loss": cs - r_i2t - r_t2i,
    }


def _brute_normsim(img: NDArray[np.floating], target: NDArray[np.floating], p: float, signed: bool = False) -> F64:
    """Float64 NormSim_p per row from the explicit similarity vector (ALGORITHMS.md §2.1)."""
    f = np.asarray(img, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    out = np.empty(f.shape[0])
    for i in range(f.shape[0]):
        sims = np.array([float(f[i] @ t[j]) for j in range(t.shape[0])])
        if p == 2:
            out[i] = math.sqrt(float(np.sum(sims**2)))
        elif signed:
            out[i] = float(np.max(sims))
        else:
            out[i] = float(np.max(np.abs(sims)))
    return out


def _brute_normsim2_dynamic(
    img: NDArray[np.floating],
    candidates: I64,
    n_final: int,
    iterations: int,
    min_gap: float = 1e-6,
) -> I64:
    """Float64 NormSim_2-D (ALGORITHMS.md §2.3, deterministic version).

    Asserts that no kept/dropped decision is a near-tie (the test data would then be
    ambiguous between float32 and float64).
    """
    f = np.asarray(img, dtype=np.float64)
    s_mat = f.T @ f / f.shape[0]
    current = np.asarray(candidates, dtype=np.int64).copy()
    chunk = math.ceil((len(current) - n_final) / iterations)
    for t in range(iterations):
        rows = f[current]
        scores = np.array([float(x @ s_mat @ x) for x in rows])
        keep = n_final if t == iterations - 1 else len(current) - chunk
        assert keep >= n_final, "test parameters remove too many rows before the last step"
        order = np.argsort(-scores, kind="stable")
        if keep < len(current):
            gap = scores[order[keep - 1]] - scores[order[keep]]
            assert gap > min_gap, f"test data has a near-tie at iteration {t}: gap {gap}"
        current = current[order[:keep]]
        kept = f[current]
        s_mat = kept.T @ kept / len(current)
    return np.sort(current)


def _as_parts(result: object) -> dict[str, NDArray[np.floating]]:
    """Check that ``result`` is the ``return_parts`` dict and return it typed."""
    assert isinstance(result, dict)
    missing = set(PART_KEYS) - set(result)
    assert not missing, f"missing keys {missing}"
    return {key: np.asarray(result[key]) for key in PART_KEYS}


# --------------------------------------------------------------------------------------------
# clip_score
# --------------------------------------------------------------------------------------------


def test_clip_score_is_rowwise_dot() -> None:
    """clip_score equals the row-wise dot product of the given rows."""
    rng = np.random.default_rng(0)
    img, txt = _pair(rng, 40, 16)
    got = np.asarray(clip_score(img, txt))
    want = np.array([float(np.dot(img[i].astype(np.float64), txt[i])) for i in range(40)])
    assert got.shape == (40,)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_clip_score_not_renormalised() -> None:
    """Scaling the inputs by 2 and 3 scales the output by 6 (no renormalisation inside)."""
    rng = np.random.default_rng(1)
    img, txt = _pair(rng, 25, 12)
    base = np.asarray(clip_score(img, txt), dtype=np.float64)
    scaled = np.asarray(clip_score(2.0 * img, 3.0 * txt), dtype=np.float64)
    np.testing.assert_allclose(scaled, 6.0 * base, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(scaled)) > 1.5 * np.max(np.abs(base))


# --------------------------------------------------------------------------------------------
# negclip_loss against the brute force
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.01, 0.07])
@pytest.mark.parametrize(
    ("n", "d", "batch_size", "rounds", "seed"),
    [
        (53, 16, 10, 1, 0),
        (137, 32, 32, 2, 1),
        (300, 64, 64, 3, 2),
        (91, 24, 91, 2, 3),
    ],
)
def test_negclip_loss_matches_brute_force(tau: float, n: int, d: int, batch_size: int, rounds: int, seed: int) -> None:
    """negclip_loss and every return_parts entry match the float64 brute force."""
    rng = np.random.default_rng(seed)
    img, txt = _pair(rng, n, d)
    batches = _batch_plan(rng, n, batch_size, rounds)
    want = _brute_negclip(img, txt, batches, tau)

    got = np.asarray(negclip_loss(img, txt, batches, tau=tau))
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want["negclip_loss"], atol=ATOL, rtol=0)

    parts = _as_parts(negclip_loss(img, txt, batches, tau=tau, return_parts=True))
    for key in PART_KEYS:
        assert parts[key].shape == (n,), key
        np.testing.assert_allclose(parts[key], want[key], atol=ATOL, rtol=0, err_msg=key)


def test_negclip_loss_plan_uses_non_contiguous_ids() -> None:
    """The batch plan of the tests really has a remainder batch and arbitrary ids."""
    rng = np.random.default_rng(4)
    plan = _batch_plan(rng, 53, 10, 1)
    ids, sizes = np.unique(plan[0], return_counts=True)
    assert sorted(sizes.tolist()) == [3, 10, 10, 10, 10, 10]
    assert {7, 1000, -3} <= set(ids.tolist())


def test_negclip_loss_default_tau_is_0_01() -> None:
    """Without ``tau`` the kernel uses τ = 0.01."""
    rng = np.random.default_rng(5)
    img, txt = _pair(rng, 60, 16)
    batches = _batch_plan(rng, 60, 16, 2)
    want = _brute_negclip(img, txt, batches, 0.01)["negclip_loss"]
    got = np.asarray(negclip_loss(img, txt, batches))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_negclip_loss_parts_are_consistent() -> None:
    """negclip_loss part equals clip_score − r_i2t − r_t2i and the plain call."""
    rng = np.random.default_rng(6)
    img, txt = _pair(rng, 70, 16)
    batches = _batch_plan(rng, 70, 20, 3)
    parts = _as_parts(negclip_loss(img, txt, batches, tau=0.07, return_parts=True))
    plain = np.asarray(negclip_loss(img, txt, batches, tau=0.07))
    np.testing.assert_allclose(parts["negclip_loss"], parts["clip_score"] - parts["r_i2t"] - parts["r_t2i"], atol=1e-6)
    np.testing.assert_allclose(parts["negclip_loss"], plain, atol=1e-6)
    np.testing.assert_allclose(parts["clip_score"], np.einsum("nd,nd->n", img, txt), atol=1e-6)


def test_negclip_loss_does_not_modify_inputs() -> None:
    """The kernel leaves its input arrays unchanged."""
    rng = np.random.default_rng(7)
    img, txt = _pair(rng, 30, 8)
    batches = _batch_plan(rng, 30, 8, 2)
    copies = (img.copy(), txt.copy(), batches.copy())
    negclip_loss(img, txt, batches, tau=0.01, return_parts=True)
    for before, after in zip(copies, (img, txt, batches), strict=True):
        np.testing.assert_array_equal(before, after)


# --------------------------------------------------------------------------------------------
# negclip_loss properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    d=st.integers(min_value=2, max_value=12),
    batch_size=st.integers(min_value=1, max_value=40),
    rounds=st.integers(min_value=1, max_value=3),
    tau=st.sampled_from([0.01, 0.07, 1.0]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_negclip_loss_never_positive(n: int, d: int, batch_size: int, rounds: int, tau: float, seed: int) -> None:
    """negCLIPLoss ≤ 0 for every row (each LSE ≥ s_ii/τ), for random shapes and plans."""
    rng = np.random.default_rng(seed)
    img, txt = _pair(rng, n, d, noise=float(rng.uniform(0.0, 3.0)))
    batches = _batch_plan(rng, n, batch_size, rounds)
    got = np.asarray(negclip_loss(img, txt, batches, tau=tau))
    assert got.shape == (n,)
    assert np.all(np.isfinite(got))
    assert np.all(got <= 1e-6), got.max()


def test_negclip_loss_zero_for_singleton_batches() -> None:
    """Every batch of size 1 gives negCLIPLoss = 0 (R = s_ii exactly)."""
    rng = np.random.default_rng(8)
    n = 50
    img, txt = _pair(rng, n, 16)
    batches = np.stack([rng.permutation(n) * 5 - 17, rng.permutation(n)]).astype(np.int64)
    for tau in (0.01, 0.07):
        got = np.asarray(negclip_loss(img, txt, batches, tau=tau))
        assert np.max(np.abs(got)) < 1e-6


def test_negclip_loss_independent_of_block_rows() -> None:
    """block_rows = 1, 7 and larger than any batch give the same result."""
    rng = np.random.default_rng(9)
    n = 150
    img, txt = _pair(rng, n, 32)
    batches = _batch_plan(rng, n, 40, 2)
    results = [
        _as_parts(negclip_loss(img, txt, batches, tau=0.01, return_parts=True, block_rows=b)) for b in (1, 7, 10_000)
    ]
    for other in results[1:]:
        for key in PART_KEYS:
            np.testing.assert_allclose(other[key], results[0][key], atol=2e-6, rtol=0, err_msg=key)
    want = _brute_negclip(img, txt, batches, 0.01)["negclip_loss"]
    np.testing.assert_allclose(results[0]["negclip_loss"], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("block_rows", [1, 3, 10_000])
def test_negclip_loss_stable_for_identical_unit_vectors(block_rows: int) -> None:
    """s/τ = 100 everywhere (identical rows, τ = 0.01): finite and equal to −τ·log(batch size)."""
    rng = np.random.default_rng(10)
    v = _random_unit(rng, 1, 32)
    n, b = 23, 5
    img = np.repeat(v, n, axis=0)
    txt = img.copy()
    batches = _batch_plan(rng, n, b, 2)
    got = _as_parts(negclip_loss(img, txt, batches, tau=0.01, return_parts=True, block_rows=block_rows))
    want = _brute_negclip(img, txt, batches, 0.01)
    for key in PART_KEYS:
        assert np.all(np.isfinite(got[key])), key
        np.testing.assert_allclose(got[key], want[key], atol=ATOL, rtol=0, err_msg=key)
    sizes = np.zeros(n)
    for k in range(2):
        _, inverse, counts = np.unique(batches[k], return_inverse=True, return_counts=True)
        sizes += np.log(counts[inverse])
    np.testing.assert_allclose(got["negclip_loss"], -0.01 * sizes / 2, atol=ATOL, rtol=0)


def test_negclip_loss_stable_for_duplicated_pairs_among_random_rows() -> None:
    """Random unit rows, some exact duplicates of one pair, τ = 0.01: matches brute force."""
    rng = np.random.default_rng(11)
    n = 80
    img, txt = _pair(rng, n, 16, noise=0.1)
    txt[:10] = img[:10]
    img[10:20] = img[0]
    txt[10:20] = img[0]
    batches = _batch_plan(rng, n, 16, 2)
    got = np.asarray(negclip_loss(img, txt, batches, tau=0.01))
    assert np.all(np.isfinite(got))
    want = _brute_negclip(img, txt, batches, 0.01)["negclip_loss"]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("block_rows", [1, 4, 10_000])
def test_negclip_loss_stable_for_anti_aligned_vectors(block_rows: int) -> None:
    """img = −txt for all rows of one vector (s/τ = −100 everywhere): no underflow to −inf."""
    rng = np.random.default_rng(12)
    v = _random_unit(rng, 1, 16)
    n = 17
    txt = np.repeat(v, n, axis=0)
    img = -txt
    batches = _batch_plan(rng, n, 6, 1)
    got = np.asarray(negclip_loss(img, txt, batches, tau=0.01, block_rows=block_rows))
    assert np.all(np.isfinite(got))
    want = _brute_negclip(img, txt, batches, 0.01)["negclip_loss"]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_negclip_loss_sign_flipped_rows_match_brute_force() -> None:
    """Some rows with img = −txt among random rows (τ = 0.01): finite, matches brute force."""
    rng = np.random.default_rng(13)
    n = 120
    img, txt = _pair(rng, n, 16, noise=0.2)
    flipped = rng.choice(n, size=30, replace=False)
    img[flipped] = -txt[flipped]
    batches = _batch_plan(rng, n, 25, 3)
    parts = _as_parts(negclip_loss(img, txt, batches, tau=0.01, return_parts=True, block_rows=7))
    want = _brute_negclip(img, txt, batches, 0.01)
    assert np.min(want["clip_score"][flipped]) < -0.999
    for key in PART_KEYS:
        assert np.all(np.isfinite(parts[key])), key
        np.testing.assert_allclose(parts[key], want[key], atol=ATOL, rtol=0, err_msg=key)


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("tau", [0.01, 0.07])
def test_negclip_loss_duplicate_pairs_penalised(m: int, tau: float) -> None:
    """An exact (image, caption) pair duplicated m times in one batch scores ≤ −τ·log(m)."""
    rng = np.random.default_rng(100 + m)
    n, b = 64, 16
    img, txt = _pair(rng, n, 32, noise=0.3)
    batches = np.arange(n, dtype=np.int64)[None, :] // b
    dup = np.arange(3, 3 + m)
    img[dup] = img[3]
    txt[dup] = txt[3]
    got = np.asarray(negclip_loss(img, txt, batches, tau=tau))
    bound = -tau * math.log(m)
    assert np.all(got[dup] <= bound + 1e-6), (got[dup], bound)
    want = _brute_negclip(img, txt, batches, tau)["negclip_loss"]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_negclip_loss_rounds_average_of_single_rounds() -> None:
    """The K-round result (and each part) is the mean of K single-round calls."""
    rng = np.random.default_rng(14)
    n = 101
    img, txt = _pair(rng, n, 16)
    batches = _batch_plan(rng, n, 24, 3)
    full = _as_parts(negclip_loss(img, txt, batches, tau=0.07, return_parts=True))
    singles = [_as_parts(negclip_loss(img, txt, batches[k : k + 1], tau=0.07, return_parts=True)) for k in range(3)]
    for key in PART_KEYS:
        mean = np.mean([s[key] for s in singles], axis=0)
        np.testing.assert_allclose(full[key], mean, atol=2e-6, rtol=0, err_msg=key)
    spread = np.max(np.abs(singles[0]["negclip_loss"] - singles[1]["negclip_loss"]))
    assert spread > 1e-3


def _generic_caption_pool(seed: int) -> tuple[F32, F32, NDArray[np.bool_], I64]:
    """Synthetic pool (ALGORITHMS.md §1.3): 1,000 rows, 30 captions equal to a shared direction.

    Images share a component a·u; regular captions match their image moderately; generic
    captions ≈ u are moderately similar (≈ a) to every image, with higher CLIPScore on average.
    """
    rng = np.random.default_rng(seed)
    n, d, n_generic, a = 1000, 64, 30, 0.45
    u = _unit(rng.normal(size=d))
    z = rng.normal(size=(n, d))
    z = _unit(z - np.outer(z @ u, u))
    img = _unit(a * u + math.sqrt(1 - a * a) * z)
    c = rng.uniform(0.15, 0.4, size=(n, 1))
    noise = rng.normal(size=(n, d))
    noise -= np.outer(noise @ u, u)
    noise -= np.sum(noise * z, axis=1, keepdims=True) * z
    noise = _unit(noise)
    txt = _unit(0.3 * u + c * z + np.sqrt(1 - 0.09 - c * c) * noise)
    generic = rng.choice(n, size=n_generic, replace=False)
    txt[generic] = _unit(u + 0.01 * rng.normal(size=(n_generic, d)))
    is_generic = np.zeros(n, dtype=bool)
    is_generic[generic] = True
    batches = _batch_plan(rng, n, 128, 3)
    return img.astype(np.float32), txt.astype(np.float32), is_generic, batches


def test_negclip_loss_demotes_generic_captions() -> None:
    """Generic captions fill the CLIPScore top-30% but few reach the negCLIPLoss top-30%."""
    img, txt, is_generic, batches = _generic_caption_pool(seed=0)
    n = img.shape[0]
    top = int(0.3 * n)
    cs = np.asarray(clip_score(img, txt), dtype=np.float64)
    ncl = np.asarray(negclip_loss(img, txt, batches, tau=0.01), dtype=np.float64)
    assert cs[is_generic].mean() > cs[~is_generic].mean() + 0.03
    in_top_cs = int(np.sum(is_generic[np.argsort(-cs)[:top]]))
    in_top_ncl = int(np.sum(is_generic[np.argsort(-ncl)[:top]]))
    assert in_top_cs >= 25, in_top_cs
    assert in_top_ncl <= 8, (in_top_cs, in_top_ncl)


# --------------------------------------------------------------------------------------------
# normsim
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 37, 500])
@pytest.mark.parametrize("p", [2, float("inf")])
def test_normsim_matches_brute_force(m: int, p: float) -> None:
    """NormSim_2 and NormSim_∞ (max |sim|) match the brute force; targets have negative sims."""
    rng = np.random.default_rng(200 + m)
    img = _random_unit(rng, 100, 16)
    target = _random_unit(rng, m, 16)
    sims = img.astype(np.float64) @ target.astype(np.float64).T
    assert m == 1 or (sims.min() < -0.3 and sims.max() > 0.3)
    want = _brute_normsim(img, target, p)
    got = np.asarray(normsim(img, target, p))
    assert got.shape == (100,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [1, 3, 37])
def test_normsim_signed_inf_matches_brute_force(m: int) -> None:
    """signed=True with p=∞ is the plain maximum similarity."""
    rng = np.random.default_rng(300 + m)
    img = _random_unit(rng, 100, 16)
    target = _random_unit(rng, m, 16)
    want = _brute_normsim(img, target, float("inf"), signed=True)
    got = np.asarray(normsim(img, target, float("inf"), signed=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if m <= 3:
        absolute = _brute_normsim(img, target, float("inf"))
        assert want.min() < 0
        assert np.any(absolute > want + 0.1)


def test_normsim_signed_differs_when_best_match_negative() -> None:
    """Best |sim| negative: absolute p=∞ gives 0.9, signed gives the largest signed sim."""
    e = np.eye(4, dtype=np.float32)
    img = np.stack([e[0], e[1]])
    target = np.stack([-0.9 * e[0] + math.sqrt(1 - 0.81) * e[2], 0.3 * e[0] + 0.5 * e[3], -e[1]])
    target = target.astype(np.float32)
    absolute = np.asarray(normsim(img, target, float("inf")))
    signed = np.asarray(normsim(img, target, float("inf"), signed=True))
    np.testing.assert_allclose(absolute, [0.9, 1.0], atol=1e-6)
    np.testing.assert_allclose(signed, [0.3, 0.0], atol=1e-6)


@pytest.mark.parametrize(("p", "signed"), [(2, False), (float("inf"), False), (float("inf"), True)])
def test_normsim_independent_of_block_size(p: float, signed: bool) -> None:
    """block_size = 1, 3 and larger than the input give the same scores."""
    rng = np.random.default_rng(400)
    img = _random_unit(rng, 50, 8)
    target = _random_unit(rng, 70, 8)
    results = [np.asarray(normsim(img, target, p, signed=signed, block_size=b)) for b in (1, 3, 10_000)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-6, atol=1e-6)
    want = _brute_normsim(img, target, p, signed=signed)
    np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-6)


def test_normsim2_finite_and_non_negative_when_orthogonal() -> None:
    """Targets spanning the orthogonal complement of the rows: NormSim_2 finite, ≥ 0, ≈ 0.

    The exact value is 0; in float32 the quadratic form fᵀ(Σ t tᵀ)f rounds to ±1e-8, so a
    kernel that takes sqrt without clamping returns NaN here.
    """
    rng = np.random.default_rng(500)
    d, n = 32, 10
    img = _unit(rng.normal(size=(n, d)))
    q, _ = np.linalg.qr(np.concatenate([img.T, rng.normal(size=(d, d - n))], axis=1))
    target = q[:, n:].T
    assert np.max(np.abs(img @ target.T)) < 1e-12
    got = np.asarray(normsim(img.astype(np.float32), target.astype(np.float32), 2))
    assert np.all(np.isfinite(got)), got
    assert np.all(got >= 0), got
    assert np.all(got < 1e-3), got


@pytest.mark.parametrize("p", [1, 3, 1.0, 0.5])
def test_normsim_rejects_other_p(p: float) -> None:
    """Only p = 2 and p = ∞ are supported."""
    rng = np.random.default_rng(600)
    img = _random_unit(rng, 5, 4)
    with pytest.raises(ValueError):
        normsim(img, img, p)


# --------------------------------------------------------------------------------------------
# normsim2_dynamic
# --------------------------------------------------------------------------------------------


def _dynamic_pool(seed: int) -> tuple[F32, I64]:
    """Return a 200 × 8 anisotropic unit pool and its top 120 rows by a score, best first."""
    rng = np.random.default_rng(seed)
    scales = np.array([3.0, 2.0, 1.5, 1.0, 1.0, 0.7, 0.5, 0.3])
    img = _unit(rng.normal(size=(200, 8)) * scales).astype(np.float32)
    score = img.astype(np.float64) @ _unit(rng.normal(size=8)) + 0.3 * rng.normal(size=200)
    candidates = np.argsort(-score)[:120].astype(np.int64)
    return img, candidates


@pytest.mark.parametrize("iterations", [1, 3, 4, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_normsim2_dynamic_matches_brute_force(iterations: int, seed: int) -> None:
    """Kept rows equal the brute-force NormSim_2-D loop; exactly n_final sorted candidates."""
    img, candidates = _dynamic_pool(seed)
    want = _brute_normsim2_dynamic(img, candidates, 50, iterations)
    got = np.asarray(normsim2_dynamic(img, candidates, 50, iterations))
    assert np.issubdtype(got.dtype, np.integer)
    assert got.shape == (50,)
    assert np.all(np.diff(got) > 0)
    assert set(got.tolist()) <= set(candidates.tolist())
    np.testing.assert_array_equal(got, want)


def test_normsim2_dynamic_iterations_matter() -> None:
    """The brute force differs between T = 1 and T = 7 on the test pool (the loop is exercised)."""
    img, candidates = _dynamic_pool(0)
    one = _brute_normsim2_dynamic(img, candidates, 50, 1)
    seven = _brute_normsim2_dynamic(img, candidates, 50, 7)
    assert not np.array_equal(one, seven)


def test_normsim2_dynamic_one_iteration_is_top_by_pool_moment() -> None:
    """T = 1 keeps the top n_final candidates by fᵀ S₀ f, S₀ over the whole pool."""
    img, candidates = _dynamic_pool(2)
    f = img.astype(np.float64)
    s0 = f.T @ f / f.shape[0]
    scores = np.einsum("nd,de,ne->n", f[candidates], s0, f[candidates])
    order = np.argsort(-scores)
    assert scores[order[49]] - scores[order[50]] > 1e-6
    want = np.sort(candidates[order[:50]])
    got = np.asarray(normsim2_dynamic(img, candidates, 50, 1))
    np.testing.assert_array_equal(got, want)
    s_cand = f[candidates].T @ f[candidates] / len(candidates)
    scores_cand = np.einsum("nd,de,ne->n", f[candidates], s_cand, f[candidates])
    assert not np.array_equal(np.sort(candidates[np.argsort(-scores_cand)[:50]]), want)


def test_normsim2_dynamic_deterministic_with_ties() -> None:
    """Duplicated rows (exact ties): two calls give identical, valid output."""
    rng = np.random.default_rng(700)
    base = _random_unit(rng, 20, 4)
    img = np.concatenate([base] * 5)
    candidates = np.arange(0, 100, 1, dtype=np.int64)[::-1][:80].copy()
    first = np.asarray(normsim2_dynamic(img, candidates, 30, 3))
    second = np.asarray(normsim2_dynamic(img, candidates, 30, 3))
    np.testing.assert_array_equal(first, second)
    assert first.shape == (30,)
    assert np.all(np.diff(first) > 0)
    assert set(first.tolist()) <= set(candidates.tolist())


# --------------------------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------------------------


def test_kernels_do_not_import_pyspark() -> None:
    """Importing clipsift.udfs.kernels in a fresh interpreter does not import pyspark."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import clipsift.udfs.kernels, sys; assert 'pyspark' not in sys.modules",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
