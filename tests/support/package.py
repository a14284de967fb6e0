"""Build clipsift's wheel as a user would (``pip wheel``, setuptools from PyPI), from a copy of the checkout so
that setuptools' build/ and egg-info land in the copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".jars", ".cache", "build", "dist", "*.egg-info", "__pycache__", "*-output"
)


def build_wheel(workdir: Path) -> Path:
    """The wheel of this checkout, built under ``workdir``."""
    source = workdir / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_SKIP)
    out = workdir / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed: {proc.stderr}")
    (built,) = out.glob("clipsift-*.whl")
    return built
