"""SQL names: identifiers quoted once, string literals escaped once, table references as SQL."""

from __future__ import annotations

from clipsift.jobs.config import OutputRef, TableRef


def quote_ident(name: str) -> str:
    """Backtick-quote one SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def sql_table(ref: TableRef) -> str:
    """How SQL names the table: quoted catalog name, or ``delta.`path```."""
    if ref.table is not None:
        return ".".join(quote_ident(p) for p in ref.table.split("."))
    return f"{ref.format}.{quote_ident(str(ref.path))}"


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sibling(ref: TableRef, suffix: str) -> TableRef:
    """The companion table of ``ref`` (``<name>_<suffix>`` beside it), e.g. the runs table; it gets the table
    properties of an :class:`OutputRef`."""
    table = f"{ref.table}_{suffix}" if ref.table is not None else None
    path = f"{str(ref.path).rstrip('/')}_{suffix}" if ref.table is None else None
    if isinstance(ref, OutputRef):
        return OutputRef(table=table, path=path, properties=ref.properties)
    return TableRef(table=table, path=path)
