"""Seeded, reproducible negCLIPLoss batch plans (ALGORITHMS.md §1.5).

Round k orders a group's rows by a 64-bit key mixed from (uid, k, seed) and cuts that order into
consecutive batches of B rows, the last one the remainder: the authors' "random permutation cut
into chunks", but a pure function of the uids, so the same rows and seed give the same plan on any
machine and in any row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def uid_hash64(uids: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash (blake2b) of each uid."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest(), "little") for u in uids),
        dtype=np.uint64,
        count=len(uids),
    )


def batch_plan(uids: Sequence[str], rounds: int, batch_size: int, seed: int) -> np.ndarray:
    """``(rounds, n)`` batch ids for :func:`clipsift.udfs.kernels.negclip_loss`.

    Args:
        uids: the group's unique row ids (order does not matter for the plan's content).
        rounds: K.
        batch_size: B; each round has ceil(n / B) batches, the last one the remainder.
        seed: any integer; a different seed gives independent permutations.
    """
    if rounds < 1 or batch_size < 1:
        raise ValueError(f"rounds and batch_size must be >= 1, got {rounds} and {batch_size}")
    base = uid_hash64(uids)
    n = base.shape[0]
    plan = np.empty((rounds, n), dtype=np.int64)
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    positions = np.arange(n, dtype=np.int64) // batch_size
    for k in range(rounds):
        round_salt = splitmix64(salt ^ np.uint64(k))
        key = splitmix64(base ^ round_salt)
        order = np.lexsort((base, key))
        plan[k, order] = positions
    return plan
