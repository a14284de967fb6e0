"""clipsift as an installed package: the wheel's layout, imports that a stray ``jobs/`` folder cannot hijack,
and the public API's names (no Spark: each check runs in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.package import build_wheel

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter started in ``cwd`` (so ``cwd`` is first on ``sys.path``)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("build"))


def test_the_wheel_installs_clipsift_jobs_and_udfs_and_no_top_level_jobs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"clipsift"}
    for module in ("clipsift/__init__.py", "clipsift/__main__.py", "clipsift/py.typed", "clipsift/log4j2.properties",
                   "clipsift/jobs/score.py",
                   "clipsift/udfs/kernels/negclip.py", "clipsift/udfs/embed.py"):  # fmt: skip
        assert module in names
    for top in ("jobs", "udfs"):  # every module of the checkout is in the wheel (a new subpackage needs listing)
        for source in (ROOT / top).rglob("*.py"):
            assert f"clipsift/{source.relative_to(ROOT).as_posix()}" in names, source
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "clipsift = clipsift.jobs.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_wheel_imports_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    """Installed into a folder of its own (its dependencies from this venv), from a working directory that has
    a ``jobs/`` package of its own: clipsift's jobs are clipsift's, and ``import jobs`` is the stray one."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    work = tmp_path / "project"
    (work / "jobs").mkdir(parents=True)
    (work / "jobs" / "__init__.py").write_text("STRAY = True\n")
    (work / "jobs" / "score.py").write_text("raise ImportError('the stray jobs/score.py was imported')\n")
    (work / "udfs").mkdir()
    (work / "udfs" / "__init__.py").write_text("raise ImportError('the stray udfs was imported')\n")
    code = (
        "import sys, clipsift, clipsift.jobs.score, clipsift.udfs.kernels, jobs\n"
        f"assert clipsift.__file__.startswith({str(target)!r}), clipsift.__file__\n"
        f"assert clipsift.jobs.score.__file__.startswith({str(target)!r})\n"
        "assert jobs.STRAY\n"
        "print(clipsift.__version__)\n"
    )
    proc = _python(code, work, {"PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __import__("clipsift").__version__


def test_without_a_jobs_folder_import_jobs_fails(tmp_path: Path) -> None:
    proc = _python("import clipsift.jobs, clipsift.udfs.kernels\nimport jobs", tmp_path)
    assert proc.returncode == 1 and "No module named 'jobs'" in proc.stderr, proc.stderr


def test_kernels_readers_schemas_and_the_package_import_no_spark_nor_torch(tmp_path: Path) -> None:
    code = (
        "import sys, clipsift\n"
        "from clipsift.udfs.kernels import clip_score, negclip_loss, normsim, normsim2_dynamic\n"
        "import clipsift.udfs.schemas, clipsift.udfs.readers, clipsift.udfs.ingest\n"
        "print(sorted(m for m in ('pyspark', 'torch', 'open_clip') if m in sys.modules))"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_public_api_names() -> None:
    import clipsift
    from clipsift.jobs import clipselect, config, embed, score, select

    assert clipsift.score is score.run and clipsift.score_frame is score.score_frame
    assert clipsift.embed is embed.run and clipsift.select is select.run and clipsift.clipselect is clipselect.run
    assert clipsift.ScoreConfig is config.ScoreConfig and clipsift.ConfigError is config.ConfigError
    assert set(clipsift.__all__) <= set(dir(clipsift))
    with pytest.raises(AttributeError):
        _ = clipsift.no_such_name  # type: ignore[attr-defined]


def test_python_dash_m_clipsift_runs_the_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clipsift", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "clipsift COMMAND" in proc.stdout, proc.stderr
