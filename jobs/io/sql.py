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
    properties = ref.properties if isinstance(ref, OutputRef) else {}
    if ref.table is not None:
        return OutputRef(table=f"{ref.table}_{suffix}", properties=properties)
    return OutputRef(path=f"{str(ref.path).rstrip('/')}_{suffix}", properties=properties)
