"""DataComp's "basic filtering" baseline as a pure function of per-row columns (numpy and Python only).

DataComp (``baselines/apply_filter.py: load_uids_with_basic_filter_helper``) keeps a row when

- fastText lid.176's top-1 label of the caption is ``en``,
- ``len(text.split()) > 2``: Python's ``str.split()``, any run of Unicode whitespace,
- ``len(text) > 5``: Unicode code points (Spark's ``length`` counts the same; not bytes),
- ``min(original_width, original_height) >= 200``,
- ``max(...) / min(...) <= 3.0``: a float64 division, as pandas does it, so 600x200 passes and 602x200 fails.

The language comes in as a column (computed once, by :func:`clipsift.udfs.langid.detect_languages`), so
this module loads no model. Missing values, which DataComp's pandas code does not expect, fail
the condition they enter: a null caption fails the language, word and character conditions; a
null or NaN side fails both image conditions; a side of 0 fails both (the ratio is inf or NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: DataComp's thresholds.
LANGUAGE = "en"
MIN_WORDS_EXCLUSIVE = 2
MIN_CHARS_EXCLUSIVE = 5
MIN_SIDE = 200
MAX_ASPECT = 3.0


class BasicFilterParts(NamedTuple):
    """Each condition of the basic filter as a bool array; the filter is their conjunction."""

    english: NDArray[np.bool_]
    """The language label equals ``"en"``."""
    words: NDArray[np.bool_]
    """More than 2 whitespace-separated words."""
    chars: NDArray[np.bool_]
    """More than 5 characters."""
    min_side: NDArray[np.bool_]
    """The shorter side is at least 200 pixels."""
    aspect: NDArray[np.bool_]
    """The longer side is at most 3.0 times the shorter one."""

    def all(self) -> NDArray[np.bool_]:
        """The conjunction of all conditions: DataComp's keep mask."""
        return self.english & self.words & self.chars & self.min_side & self.aspect


def _counts(text: Sequence[str | None]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Word and character counts of each caption; -1 for a missing one (None, NaN, any non-str)."""
    n = len(text)
    words = np.fromiter((len(t.split()) if isinstance(t, str) else -1 for t in text), dtype=np.int64, count=n)
    chars = np.fromiter((len(t) if isinstance(t, str) else -1 for t in text), dtype=np.int64, count=n)
    return words, chars


def basic_filter_parts(
    lang: ArrayLike, text: Sequence[str | None], width: ArrayLike, height: ArrayLike
) -> BasicFilterParts:
    """Each condition of DataComp's basic filter, row by row.

    Args:
        lang: The caption's top-1 language label (``"en"``, ``"de"``, ...), ``None`` when unknown.
        text: The caption, ``None`` (or NaN) when missing.
        width: ``original_width``; NaN or ``None`` when missing.
        height: ``original_height``; NaN or ``None`` when missing.

    Returns:
        The five conditions as bool arrays of the input length; :meth:`BasicFilterParts.all` is the filter.

    Raises:
        ValueError: when the inputs are not 1-D or differ in length.
    """
    lang_arr = np.asarray(lang, dtype=object)
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    n = len(text)
    if lang_arr.ndim != 1 or w.ndim != 1 or h.ndim != 1 or not (len(lang_arr) == n == len(w) == len(h)):
        raise ValueError(
            "lang, text, width and height must be 1-D of one length, "
            f"got {lang_arr.shape}, ({n},), {w.shape}, {h.shape}"
        )
    words, chars = _counts(text)
    short = np.minimum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(w, h) / short
    return BasicFilterParts(
        english=np.fromiter((isinstance(x, str) and x == LANGUAGE for x in lang_arr), dtype=bool, count=n),
        words=words > MIN_WORDS_EXCLUSIVE,
        chars=chars > MIN_CHARS_EXCLUSIVE,
        min_side=short >= MIN_SIDE,  # NaN compares False
        aspect=ratio <= MAX_ASPECT,  # inf (side 0) and NaN compare False
    )


def basic_filter(lang: ArrayLike, text: Sequence[str | None], width: ArrayLike, height: ArrayLike) -> NDArray[np.bool_]:
    """DataComp's basic filter: English caption of 3+ words and 6+ characters, image ≥ 200 px, aspect ≤ 3.

    Args:
        lang: The caption's top-1 language label from fastText lid.176 (see :mod:`clipsift.udfs.langid`).
        text: The caption, ``None`` (or NaN) when missing.
        width: ``original_width``; NaN or ``None`` when missing.
        height: ``original_height``; NaN or ``None`` when missing.

    Returns:
        The keep mask (bool array of the input length); missing values are never kept.

    Raises:
        ValueError: when the inputs are not 1-D or differ in length.
    """
    return basic_filter_parts(lang, text, width, height).all()
