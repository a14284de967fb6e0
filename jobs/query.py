"""``clipsift sql``: run SQL over the catalog the jobs keep (score tables, views of selections) and print tables.

    clipsift sql "SELECT COUNT(*) FROM sel_ncl30"
    clipsift sql --file report.sql --catalog demo-output/catalog --limit 20

Reads: the local catalog folder of the jobs (``spark.local_catalog``, default ``clipsift-catalog``), or the
session's own catalog where one is active (Databricks). Writes nothing but what the SQL itself does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from clipsift.jobs.config import SparkSettings
from clipsift.jobs.session import get_spark


def statements(text: str) -> list[str]:
    """The statements of a SQL text, split at ``;`` outside quotes and comments."""
    out, current, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif ch == ";":
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current))
    return [s.strip() for s in out if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift sql [QUERY] [--file FILE] [--catalog DIR] [--limit N]``; 2 on bad arguments."""
    parser = argparse.ArgumentParser(prog="clipsift sql", description=__doc__.split("\n")[0])
    parser.add_argument("query", nargs="?", help="SQL text (several statements separated by ;)")
    parser.add_argument("--file", "-f", help="a file of SQL statements")
    parser.add_argument("--catalog", default=SparkSettings.local_catalog, help="the jobs' local catalog folder")
    parser.add_argument("--limit", type=int, default=100, help="rows printed per query result")
    args = parser.parse_args(argv)
    if (args.query is None) == (args.file is None):
        print("clipsift sql: give a query or --file FILE (one of them)", file=sys.stderr)
        return 2
    try:
        text = args.query if args.file is None else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"clipsift sql: cannot read --file {args.file}: {exc}", file=sys.stderr)
        return 2
    spark = get_spark("clipsift-sql", {"spark.ui.showConsoleProgress": "false"}, args.catalog)
    from pyspark.errors import PySparkException

    for statement in statements(text):
        try:
            result = spark.sql(statement)
            if result.columns:
                result.show(args.limit, truncate=False)
        except PySparkException as exc:
            first = str(exc).strip().splitlines()[0]
            print(f"clipsift sql: {first}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
