"""The config machinery every job shares: :class:`ConfigError`, the :class:`Section` base that validates on
construction, :class:`JobConfig` (``from_yaml``), the strict YAML + ``--set`` loader, and the pieces several jobs
use (:class:`TableRef`, :class:`SparkSettings`).

Every job takes ``--config file.yaml`` plus any number of ``--set a.b=value`` overrides (the value
is parsed as YAML, so ``--set negclip.rounds=5`` is an int and ``--set normsim.norms=[2,inf]`` a
list). A bad key or value raises one :class:`ConfigError` that names the key and says how to fix it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")
J = TypeVar("J", bound="JobConfig")

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")


class ConfigError(ValueError):
    """A configuration key is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key
        self.message = message

    def under(self, section: str, key: str) -> ConfigError:
        """The same error with the leading ``section`` (a class name) of its key replaced by the key path."""
        head, rest = self.key[: len(section)], self.key[len(section) :]
        if head != section or rest[:1] not in ("", ".", "["):
            return self
        path = f"{key}{rest}" if rest.startswith("[") or not rest else join_key(key, rest.lstrip("."))
        return ConfigError(path or section, self.message)


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value}")


def check_fraction(key: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(key, f"must be a fraction in (0, 1], got {value}")


#: Field metadata of a setting that does not change a score run's results (where they go, how they are computed
#: in parallel or in blocks, a path whose contents are hashed instead): left out of the run id's basis.
NOT_SCORED = {"scores": False}


class Section:
    """Base of every config dataclass: it validates when built, however it is built (YAML, ``--set``, code).

    A section built in code names itself in the error (``NegClipConfig.tau``); built by the loader, the key
    path (``negclip.tau``). Checks that need a sibling section (target names, earlier selections) run in the
    job's config, which holds both.
    """

    def validate(self, key: str) -> None:
        """Raise :class:`ConfigError` naming the first bad key under ``key``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            items = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and math.isnan(v) for v in items):
                # NaN compares false with everything, so any range check would let it through (and turn it off).
                raise ConfigError(join_key(type(self).__name__, f.name), "must be a number, not NaN")
        self.validate(type(self).__name__)


class JobConfig(Section):
    """Base of a job's whole config (:class:`ScoreConfig`, :class:`SelectConfig`, ...)."""

    spark: SparkSettings

    @classmethod
    def from_yaml(cls: type[J], path: str | Path | None = None, overrides: Sequence[str] = ()) -> J:
        """Load from a YAML file plus ``a.b=value`` overrides, as ``--config`` / ``--set`` do.

        Raises:
            ConfigError: naming the offending key.
        """
        return load(cls, path, overrides)


# --------------------------------------------------------------------------------------------------
# Pieces several jobs use


@dataclass(frozen=True)
class TableRef(Section):
    """A table given by catalog name or by storage path (exactly one)."""

    table: str | None = None
    """Catalog name ``[catalog.]schema.table`` (Unity Catalog / Hive metastore)."""
    path: str | None = None
    """Storage path (local, ``dbfs:/``, ``s3a://``, … anything Hadoop FS reads)."""
    format: Literal["delta", "parquet"] = "delta"

    def validate(self, key: str) -> None:
        if (self.table is None) == (self.path is None):
            raise ConfigError(key, "give exactly one of 'table' (catalog name) or 'path' (storage path)")
        if self.table is not None and not TABLE_NAME.match(self.table):
            raise ConfigError(f"{key}.table", f"'{self.table}' is not a [catalog.]schema.table name")

    @property
    def label(self) -> str:
        """The name or path, for messages and lineage."""
        return self.table if self.table is not None else str(self.path)


#: A Delta table property name (``delta.enableDeletionVectors``, ``comment``, ...).
PROPERTY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class OutputRef(TableRef):
    """A table a job writes: a :class:`TableRef` plus the Delta table properties to set on it."""

    properties: Mapping[str, str] = field(default_factory=dict)
    """Delta table properties set on the table and its sibling tables (``<table>_runs``, ...) at every write, e.g.
    ``delta.enableDeletionVectors: false`` for readers without deletion vectors, ``delta.dataSkippingNumIndexedCols``,
    ``comment``."""

    def validate(self, key: str) -> None:
        super().validate(key)
        for name in self.properties:
            if not PROPERTY_NAME.match(name):
                raise ConfigError(f"{key}.properties.{name}", "is not a table property name (letters, digits, _ . -)")
        if self.properties and self.format != "delta":
            raise ConfigError(f"{key}.properties", "table properties need format: delta")


@dataclass(frozen=True)
class SparkSettings(Section):
    """Spark session settings; ignored where a session is already active (Databricks, tests)."""

    app_name: str = "clipsift"
    conf: Mapping[str, str] = field(default_factory=dict)
    """Extra ``spark.*`` settings, e.g. ``spark.sql.shuffle.partitions``."""
    local_catalog: str | None = "clipsift-catalog"
    """When clipsift starts a local Spark itself: the folder of its catalog (a Hive metastore and warehouse), so
    schemas, tables by name and views outlive the run and ``clipsift sql`` sees them. Null: Spark's in-memory
    catalog. Not used on a cluster, under spark-submit or where a session is already active (Databricks)."""


# Loading


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file plus ``a.b=value`` overrides, then validate it.

    Args:
        cls: the job's config dataclass (e.g. :class:`ScoreConfig`).
        path: YAML file; ``None`` starts from an empty mapping.
        overrides: ``key.path=value`` strings; values are parsed as YAML.

    Raises:
        ConfigError: naming the offending key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"file '{p}' does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"'{p}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"'{p}' is not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"'{p}' must hold a mapping at the top level")
        data = loaded
    for item in overrides:
        _apply_override(data, item)
    return from_dict(cls, data)


def from_argv(cls: type[T], prog: str, argv: Sequence[str] | None) -> T:
    """Parse a job's ``--config FILE [--set key=value ...]`` arguments and load ``cls`` from them."""
    sections = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{prog}. Config sections: {sections}. Every key is shown in the project's examples/ and "
        "described in README.md.",
    )
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    return load(cls, args.config, args.set)


def from_dict(cls: type[T], data: Mapping[str, Any], key: str = "") -> T:
    """Build and validate a config dataclass from plain data (strict about unknown keys)."""
    obj: T = _build(cls, data, key)
    return obj


def to_dict(cfg: Any) -> Any:
    """Plain (JSON-ready) data of a config dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    return cfg


def scores_basis(cfg: Any) -> Any:
    """Plain data of a config without the fields marked :data:`NOT_SCORED`: what a score run id hashes."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        fields = [f for f in dataclasses.fields(cfg) if f.metadata.get("scores", True)]
        return {f.name: scores_basis(getattr(cfg, f.name)) for f in fields}
    if isinstance(cfg, (tuple, list)):
        return [scores_basis(v) for v in cfg]
    return to_dict(cfg)


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(item, "an override must look like key.path=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(dotted, "an override key must look like a.b.c")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"'{part}' is not a mapping, so it has no sub-keys")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(dotted, f"--set value {raw!r} is not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what is wrong and where (1-based line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _build(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(key or "<top>", f"expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields))
            raise ConfigError(join_key(key, str(unknown[0])), f"unknown key; valid keys here: {valid}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], join_key(key, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(join_key(key, name), "is required")
        try:
            return tp(**kwargs)
        except ConfigError as exc:
            raise exc.under(tp.__name__, key) from None
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) < len(get_args(tp)):
                return None
            raise ConfigError(key, "must not be null")
        return _build(args[0], value, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"'{value}' is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value]
        return tuple(_build(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return _flatten(value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-2 (no dot) as a string; accept any numeric spelling.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(key, f"expected a string, got {value!r}")
        return str(value)
    raise ConfigError(key, f"unsupported config type {tp!r}")  # pragma: no cover - a bug in a dataclass


def _flatten(value: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, str]:
    """A string mapping; nested mappings become dotted keys (so ``--set spark.conf.spark.x.y=1`` works)."""
    out: dict[str, str] = {}
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key, f"{name}."))
        elif isinstance(v, (list, tuple)) or v is None:
            raise ConfigError(f"{key}.{name}", f"expected a single value, got {v!r}")
        else:
            out[name] = str(v).lower() if isinstance(v, bool) else str(v)
    return out
