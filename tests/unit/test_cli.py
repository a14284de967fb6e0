"""The ``clipsift`` command imports only the job it runs: score and select work where torch is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter in which torch and open_clip cannot be imported (the CPU image has neither).
BLOCKED = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "open_clip", "torchvision"):
                raise ImportError(f"No module named '{name}'", name=name)
            return None
    sys.meta_path.insert(0, Block())
    from clipsift.jobs.cli import main
    code = main(sys.argv[1:])
    print("torch imported:", "torch" in sys.modules)
    sys.exit(code)
    """
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_score_and_select_run_without_torch(tmp_path: Path) -> None:
    for command in ("score", "select"):
        done = _run(command, "--config", str(tmp_path / "missing.yaml"))
        assert done.returncode == 2, done.stderr
        assert "missing.yaml" in done.stderr and "Traceback" not in done.stderr
        assert "torch imported: False" in done.stdout


def test_clipselect_without_torch_names_the_extra(tmp_path: Path) -> None:
    done = _run("clipselect", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'torch'" in done.stderr and "clipsift[gpu]" in done.stderr


def test_unknown_command() -> None:
    done = _run("scroe")
    assert done.returncode == 2 and "unknown command 'scroe'" in done.stderr


def _clipsift(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipsift", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_version() -> None:
    import clipsift

    done = _clipsift("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"clipsift {clipsift.__version__}"


def test_each_commands_help_lists_its_config_sections() -> None:
    expected = {
        "score": "input, output, run_id, negclip, normsim, normsim2_dynamic, baselines, clipselect, spark",
        "select": "scores, selections, run_id, view_prefix, view_schema, join, spark",
        "embed": "input, model, output",
    }
    for command, sections in expected.items():
        done = _clipsift(command, "--help")
        assert done.returncode == 0, done.stderr
        assert sections in " ".join(done.stdout.split()), done.stdout


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_yaml_syntax_errors_are_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("input:\n  kind: datacomp\n  path: [unclosed\noutput: {path: /tmp/x}\n")
    line = _one_line_error(_clipsift("score", "--config", str(broken)))
    assert "'--config'" in line and "broken.yaml" in line and "is not valid YAML" in line and "line " in line

    good = tmp_path / "good.yaml"
    good.write_text("input: {kind: datacomp, path: /data}\noutput: {path: /tmp/x}\n")
    line = _one_line_error(_clipsift("score", "--config", str(good), "--set", "negclip.rounds=[1,"))
    assert "'negclip.rounds'" in line and "not valid YAML" in line

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("input: {kind: datacomp, path: /caf\xe9}\n".encode("latin-1"))
    line = _one_line_error(_clipsift("score", "--config", str(latin)))
    assert "latin.yaml" in line and "not UTF-8" in line


def test_verbose_is_taken_off_the_arguments_and_keeps_sparks_log() -> None:
    import os

    from clipsift.jobs import cli

    os.environ.pop("CLIPSIFT_VERBOSE", None)
    try:
        assert cli.main(["--verbose", "--version"]) == 0
        assert os.environ.get("CLIPSIFT_VERBOSE") == "1"
    finally:
        os.environ.pop("CLIPSIFT_VERBOSE", None)
