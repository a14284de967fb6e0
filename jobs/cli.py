"""The ``clipsift`` command: ``clipsift score|select|synth|demo [options]``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

USAGE = """usage: clipsift COMMAND [options]

commands:
  embed    open_clip embeddings into a Delta table (clipsift embed --config embed.yaml [--set k=v ...])
  score    score a pool into a Delta table      (clipsift score --config score.yaml [--set k=v ...])
  clipselect  CLIP-powered selection scores    (clipsift clipselect --config clipselect.yaml [--set k=v ...])
  select   selections over scores as SQL views  (clipsift select --config select.yaml [--set k=v ...])
  synth    write a synthetic DataComp-style pool (clipsift synth --out DIR)
  demo     synth + score + select + a summary    (clipsift demo --out DIR)
"""


def _commands() -> dict[str, Callable[[Sequence[str]], int]]:
    from jobs import clipselect, demo, embed, score, select, synth

    return {
        "embed": embed.main,
        "score": score.main,
        "clipselect": clipselect.main,
        "select": select.main,
        "synth": synth.main,
        "demo": demo.main,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a job's ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    # A local run's Python workers must use this interpreter (and its packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    commands = _commands()
    if args[0] not in commands:
        print(f"clipsift: unknown command '{args[0]}'\n{USAGE}", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
