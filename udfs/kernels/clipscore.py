"""CLIPScore: the raw cosine of row-aligned image and caption embeddings (ALGORITHMS.md §1.1)."""

from __future__ import annotations

import numpy as np

from clipsift.udfs.kernels._checks import as_matrix


def clip_score(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    """Row-wise dot product ``img[i] · txt[i]``, the CLIPScore of unit-norm embeddings.

    Inputs are used as given (not renormalised), so the result is a cosine only for unit-norm rows.
    Not ×100 and not clipped at 0.

    Args:
        img: ``(N, d)`` image embeddings.
        txt: ``(N, d)`` caption embeddings, row-aligned with ``img``.

    Returns:
        ``(N,)`` float64 scores.
    """
    a = as_matrix(img, "img")
    b = as_matrix(txt, "txt")
    if a.shape != b.shape:
        raise ValueError(f"img and txt must have the same shape, got {a.shape} and {b.shape}")
    scores: np.ndarray = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return scores
