"""Hostile pickles: files that would run code when unpickled, for the tests that check they are refused unrun."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


class _CreatesFile:
    """Unpickled, it creates ``path`` (``open(path, "w")``): the marker shows whether a loader ran its code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def write_torch_payload(path: Path, marker: Path, around: Any = None) -> Path:
    """A ``torch.save`` file whose unpickling creates ``marker``; ``around(payload)`` wraps it (a dict, ...)."""
    import torch

    payload = _CreatesFile(marker)
    buffer = io.BytesIO()
    torch.save(around(payload) if around is not None else payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path
