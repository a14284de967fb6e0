"""The ``clipsift`` command: ``clipsift embed|score|clipselect|select|synth|demo [options]``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

USAGE = """usage: clipsift COMMAND [options]    (clipsift COMMAND --help: its options and config sections)
       clipsift --version
       clipsift --verbose COMMAND ...       (also Spark's own INFO log; quiet by default)

commands:
  embed    open_clip embeddings into a Delta table (clipsift embed --config embed.yaml [--set k=v ...])
  score    score a pool into a Delta table      (clipsift score --config score.yaml [--set k=v ...])
  clipselect  CLIP-powered selection scores    (clipsift clipselect --config clipselect.yaml [--set k=v ...])
  select   selections over scores as SQL views  (clipsift select --config select.yaml [--set k=v ...] [--recreate])
  report   an HTML report of a run and its views (clipsift report --config report.yaml [--set k=v ...])
  reshard  a selection's samples into new shards (clipsift reshard --config reshard.yaml [--set k=v ...])
  eval     train a student CLIP per selection     (clipsift eval --config eval.yaml [--set k=v ...])
  sql      run SQL over the jobs' catalog        (clipsift sql "SELECT ..." | --file FILE [--catalog DIR])
  synth    write a synthetic DataComp-style pool (clipsift synth --out DIR)
  demo     synth + score + select + a summary    (clipsift demo --out DIR)
"""


#: Command -> the job module whose ``main`` runs it. Only the chosen module is imported: ``score`` and ``select``
#: run without torch (the CPU image), ``embed`` and ``clipselect`` need it.
COMMANDS = {
    "embed": "clipsift.jobs.embed",
    "score": "clipsift.jobs.score",
    "clipselect": "clipsift.jobs.clipselect",
    "select": "clipsift.jobs.select",
    "report": "clipsift.jobs.report",
    "reshard": "clipsift.jobs.reshard",
    "eval": "clipsift.jobs.eval",
    "sql": "clipsift.jobs.query",
    "synth": "clipsift.jobs.demo.synth",
    "demo": "clipsift.jobs.demo.job",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a job's ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in args:  # Spark's own INFO log too (read by jobs.session.get_spark)
        args.remove("--verbose")
        os.environ["CLIPSIFT_VERBOSE"] = "1"
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from clipsift import __version__

        print(f"clipsift {__version__}")
        return 0
    # A local run's Python workers must use this interpreter (and its packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if args[0] not in COMMANDS:
        print(f"clipsift: unknown command '{args[0]}'\n{USAGE}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[args[0]])
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        extra = "gpu" if missing in ("torch", "torchvision", "open_clip", "timm") else "spark"
        print(
            f"clipsift {args[0]}: needs '{missing or exc}', which is not installed; "
            f"install it with clipsift's {extra} extra (pip install 'clipsift[{extra}]')",
            file=sys.stderr,
        )
        return 2
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
