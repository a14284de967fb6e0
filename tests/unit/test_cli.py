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
