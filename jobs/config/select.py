"""``clipsift select``: :class:`SelectConfig` and its selections."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from clipsift.jobs.config.base import (
    IDENTIFIER,
    TABLE_NAME,
    ConfigError,
    JobConfig,
    OutputRef,
    Section,
    SparkSettings,
    TableRef,
    check_fraction,
    join_key,
)

RULES = (
    "threshold", "flag", "top_fraction", "sequential", "sum_of_ranks", "clipselect", "intersect", "union", "import",
)  # fmt: skip

#: A score column: ``name`` (the main run) or ``alias.name`` (a run listed under ``join``).
COLUMN_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ImportSource(Section):
    """Where rule ``import`` reads a uid set from: exactly one of ``npy`` (a DataComp subset file, dtype ``u8,u8``),
    ``table`` (a catalog table or view, another run's selection view included) or ``path`` (a Delta or Parquet
    table by path)."""

    npy: str | None = None
    table: str | None = None
    path: str | None = None
    format: Literal["delta", "parquet"] = "delta"
    """Format of ``path``."""
    uid_column: str = "uid"
    """The uid column of ``table`` / ``path``."""

    def validate(self, key: str) -> None:
        given = [k for k in ("npy", "table", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(key, f"give exactly one of 'npy', 'table' or 'path' (got {given or 'none'})")
        if self.npy is not None and not self.npy.endswith(".npy"):
            raise ConfigError(f"{key}.npy", "must be a DataComp subset file, a path ending in .npy")
        if self.table is not None and not TABLE_NAME.match(self.table):
            raise ConfigError(f"{key}.table", f"'{self.table}' is not a [catalog.]schema.table name")
        if not IDENTIFIER.match(self.uid_column):
            raise ConfigError(f"{key}.uid_column", f"'{self.uid_column}' is not a column name")

    def table_ref(self) -> TableRef | None:
        """The table to read, for ``table`` / ``path`` sources."""
        return None if self.npy is not None else TableRef(table=self.table, path=self.path, format=self.format)

    @property
    def label(self) -> str:
        return str(self.npy or self.table or self.path)


@dataclass(frozen=True)
class JoinedRun(Section):
    """Another score run whose columns a selection may name as ``<alias>.<column>`` (e.g. NormSim∞ of a B/32
    teacher next to negCLIPLoss of an L/14 one). Joined to the main run by uid; only uids ``ok`` in every run
    are in the pool."""

    alias: str
    scores: TableRef | None = None
    """Its score table; default: the main ``scores`` table (another run of it)."""
    run_id: str | None = None
    """Default: the latest run of that table."""

    def validate(self, key: str) -> None:
        if not IDENTIFIER.match(self.alias):
            raise ConfigError(f"{key}.alias", f"'{self.alias}' must be an identifier (letters, digits, _)")
        if self.scores is not None:
            self.scores.validate(f"{key}.scores")


@dataclass(frozen=True)
class SelectionConfig(Section):
    """One named selection, rendered to the SQL view ``<view_prefix><name>``.

    Rules and their keys:
      * threshold: ``column`` and ``min`` (keep ``column >= min``), optional ``max``.
      * flag: ``column``, a boolean column; keep the rows where it is true (the baselines' filters, ``dedup_kept``).
      * top_fraction: ``column``, ``fraction``; ``counting: exact`` keeps exactly int(N·f) rows
        (ties broken by uid, the negCLIPLoss repo), ``datacomp`` keeps score ≥ the (int(N·f)+1)-th value.
      * sequential: top ``fraction`` of the pool by ``column``, then among those the top
        ``then_fraction`` (of the whole pool) by ``then_column`` (the paper's negCLIPLoss ∩ NormSim).
      * sum_of_ranks: top ``fraction`` by the sum of rank ratios of ``columns``.
      * clipselect: top ``fraction`` (exactly int(N·f) rows) by the CLIP-powered selection criterion
        ``SAS'/mean(SAS') + lam · SDS'/mean(SDS')``, SAS' and SDS' min-max normalised over the run's ok rows;
        ``columns`` names SAS and SDS (default ``[sas, sds]``), ``lam`` defaults to 0.1 (the paper's code).
      * intersect / union: of the selections named in ``of`` (defined earlier in the list).
      * import: the pool's rows whose uid is in ``source`` (a DataComp subset ``.npy``, a table or a view); the
        uids land in ``<scores>_imports`` so the view stays plain SQL.

    Any rule takes ``within: <selection>``: its population is that earlier selection's rows instead of the pool;
    fractions are of the population, cut-offs and normalisations computed over it (scores stay those of the run).
    Columns are ``name`` (the main run) or ``alias.name`` (a run under the config's ``join``).
    """

    name: str
    rule: str
    column: str | None = None
    fraction: float | None = None
    counting: Literal["exact", "datacomp"] = "exact"
    min: float | None = None
    max: float | None = None
    then_column: str | None = None
    then_fraction: float | None = None
    columns: tuple[str, ...] = ()
    lam: float | None = None
    """Rule ``clipselect``: the weight of diversity (default 0.1)."""
    of: tuple[str, ...] = ()
    source: ImportSource | None = None
    """Rule ``import``: where the uids come from."""
    within: str | None = None
    """An earlier selection: the population of this rule (default: the whole pool)."""
    materialize: OutputRef | None = None
    """Also write the selected uids as a Delta table."""
    export_npy: str | None = None
    """Also write DataComp's subset file (.npy of dtype u8,u8, sorted) to this local path."""

    def columns_named(self) -> list[str]:
        """The score columns this selection names, as written (``name`` or ``alias.name``)."""
        return [c for c in (self.column, self.then_column, *self.columns) if c]

    def validate(self, key: str, earlier: Sequence[str] | None = None) -> None:
        """``earlier``: the names of the selections before this one, checked by the select config."""
        if not IDENTIFIER.match(self.name):
            raise ConfigError(f"{key}.name", f"'{self.name}' must be an identifier (letters, digits, _)")
        if self.rule not in RULES:
            raise ConfigError(f"{key}.rule", f"'{self.rule}' is not one of {', '.join(RULES)}")
        needs: dict[str, tuple[str, ...]] = {
            "threshold": ("column",),
            "flag": ("column",),
            "top_fraction": ("column", "fraction"),
            "sequential": ("column", "fraction", "then_column", "then_fraction"),
            "sum_of_ranks": ("columns", "fraction"),
            "clipselect": ("fraction",),
            "intersect": ("of",),
            "union": ("of",),
            "import": ("source",),
        }
        for k in needs[self.rule]:
            if getattr(self, k) in (None, ()):
                raise ConfigError(f"{key}.{k}", f"rule '{self.rule}' needs '{k}'")
        for k in ("column", "then_column"):
            v = getattr(self, k)
            if v is not None and not COLUMN_REF.match(v):
                raise ConfigError(f"{key}.{k}", f"'{v}' is not a column name (name, or alias.name for a joined run)")
        for c in self.columns:
            if not COLUMN_REF.match(c):
                raise ConfigError(
                    f"{key}.columns", f"'{c}' is not a column name (name, or alias.name for a joined run)"
                )
        if self.source is not None and self.rule != "import":
            raise ConfigError(
                f"{key}.source", f"only rule 'import' reads a 'source'; remove it from rule '{self.rule}'"
            )
        if self.within is not None and earlier is not None and self.within not in earlier:
            raise ConfigError(f"{key}.within", f"'{self.within}' must be a selection defined earlier in the list")
        if self.rule == "threshold" and self.min is None and self.max is None:
            raise ConfigError(f"{key}.min", "rule 'threshold' needs 'min' and/or 'max'")
        if self.fraction is not None:
            check_fraction(f"{key}.fraction", self.fraction)
        if self.then_fraction is not None:
            check_fraction(f"{key}.then_fraction", self.then_fraction)
            if self.fraction is not None and self.then_fraction > self.fraction:
                raise ConfigError(
                    f"{key}.then_fraction", "is a fraction of the whole pool; it cannot exceed 'fraction'"
                )
        if self.rule == "sum_of_ranks" and len(self.columns) < 2:
            raise ConfigError(f"{key}.columns", "sum_of_ranks needs at least two columns")
        if self.rule == "clipselect" and self.columns and len(self.columns) != 2:
            raise ConfigError(f"{key}.columns", "clipselect takes two columns, SAS then SDS (default [sas, sds])")
        if self.lam is not None:
            if self.rule != "clipselect":
                raise ConfigError(f"{key}.lam", f"only rule 'clipselect' uses 'lam'; remove it from rule '{self.rule}'")
            if not math.isfinite(self.lam) or self.lam < 0:
                raise ConfigError(f"{key}.lam", f"must be a finite number >= 0, got {self.lam}")
        if self.rule in ("intersect", "union"):
            if len(self.of) < 2:
                raise ConfigError(f"{key}.of", f"'{self.rule}' needs at least two selection names")
            missing = [n for n in self.of if earlier is not None and n not in earlier]
            if missing:
                raise ConfigError(f"{key}.of", f"{missing} must be selections defined earlier in the list")
        if self.materialize is not None:
            self.materialize.validate(f"{key}.materialize")
        if self.export_npy is not None and not self.export_npy.endswith(".npy"):
            raise ConfigError(f"{key}.export_npy", "must be a path ending in .npy")


@dataclass(frozen=True)
class SelectConfig(JobConfig):
    """``clipsift select``: named selections over a score table, as SQL views."""

    scores: TableRef
    selections: tuple[SelectionConfig, ...]
    run_id: str | None = None
    """Which scoring run to select from; default: the latest run in the score table."""
    view_prefix: str = ""
    view_schema: str | None = None
    """Schema (database) for the views; default: the session's current one."""
    join: tuple[JoinedRun, ...] = ()
    """Other score runs of the same pool whose columns selections name as ``<alias>.<column>``."""
    spark: SparkSettings = SparkSettings()

    def validate(self, key: str = "") -> None:
        self.scores.validate(join_key(key, "scores"))
        if not self.selections:
            raise ConfigError(join_key(key, "selections"), "list at least one selection")
        names: list[str] = []
        for i, s in enumerate(self.selections):
            s.validate(join_key(key, f"selections[{i}]"), names)
            if s.name in names:
                raise ConfigError(join_key(key, f"selections[{i}].name"), f"'{s.name}' is used twice")
            names.append(s.name)
        aliases: list[str] = []
        for i, j in enumerate(self.join):
            j.validate(join_key(key, f"join[{i}]"))
            if j.alias in aliases:
                raise ConfigError(join_key(key, f"join[{i}].alias"), f"'{j.alias}' is used twice")
            aliases.append(j.alias)
        for i, s in enumerate(self.selections):
            for c in s.columns_named():
                alias = c.split(".", 1)[0] if "." in c else None
                if alias is not None and alias not in aliases:
                    raise ConfigError(
                        join_key(key, f"selections[{i}]"),
                        f"column '{c}' names run '{alias}', which is not under 'join' (has {aliases or 'none'})",
                    )
        if self.view_prefix and not re.match(r"^[A-Za-z0-9_]*$", self.view_prefix):
            raise ConfigError(join_key(key, "view_prefix"), "use letters, digits and _ only")
        if self.view_schema is not None and not TABLE_NAME.match(self.view_schema):
            raise ConfigError(join_key(key, "view_schema"), f"'{self.view_schema}' is not a [catalog.]schema name")
