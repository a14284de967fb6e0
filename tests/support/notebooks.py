"""Run a Databricks source-format notebook top to bottom on a local Spark session: ``# COMMAND ----------``
separates cells; ``%md`` cells are skipped, ``%sql`` cells run through ``spark.sql``, Python cells run in one
namespace with ``spark``, ``dbutils.widgets`` (defaults, or the values given) and ``display``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

SEPARATOR = "\n# COMMAND ----------\n"


class _Widgets:
    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.defaults: dict[str, str] = {}

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self.defaults[name] = default

    def get(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        return self.defaults[name]


class _DbUtils:
    def __init__(self, values: Mapping[str, str]) -> None:
        self.widgets = _Widgets(values)


def run_notebook(path: Path, spark: SparkSession, widgets: Mapping[str, str]) -> list[Any]:
    """Run every cell of the notebook at ``path``; returns what its cells displayed (rows of DataFrames)."""
    shown: list[Any] = []

    def display(obj: Any) -> None:
        shown.append(obj.limit(20).collect() if isinstance(obj, DataFrame) else obj)

    namespace: dict[str, Any] = {"spark": spark, "dbutils": _DbUtils(widgets), "display": display}
    text = path.read_text()
    for number, cell in enumerate(text.split(SEPARATOR)):
        lines = [line for line in cell.strip().splitlines() if line != "# Databricks notebook source"]
        if not lines:
            continue
        if all(line.startswith("# MAGIC") for line in lines):
            body = [line[len("# MAGIC") :].removeprefix(" ") for line in lines]
            magic, rest = body[0].strip(), "\n".join(body[1:])
            if magic == "%sql":
                display(spark.sql(rest))
            elif magic not in ("%md", "%pip"):
                raise ValueError(f"{path.name} cell {number}: unknown magic {magic}")
            continue
        exec(compile("\n".join(lines), f"{path.name}[{number}]", "exec"), namespace)
    return shown
