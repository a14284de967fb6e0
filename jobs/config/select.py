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

RULES = ("threshold", "flag", "top_fraction", "sequential", "sum_of_ranks", "clipselect", "intersect", "union")


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
    materialize: OutputRef | None = None
    """Also write the selected uids as a Delta table."""
    export_npy: str | None = None
    """Also write DataComp's subset file (.npy of dtype u8,u8, sorted) to this local path."""

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
        }
        for k in needs[self.rule]:
            if getattr(self, k) in (None, ()):
                raise ConfigError(f"{key}.{k}", f"rule '{self.rule}' needs '{k}'")
        for k in ("column", "then_column"):
            v = getattr(self, k)
            if v is not None and not IDENTIFIER.match(v):
                raise ConfigError(f"{key}.{k}", f"'{v}' is not a column name")
        for c in self.columns:
            if not IDENTIFIER.match(c):
                raise ConfigError(f"{key}.columns", f"'{c}' is not a column name")
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
        if self.view_prefix and not re.match(r"^[A-Za-z0-9_]*$", self.view_prefix):
            raise ConfigError(join_key(key, "view_prefix"), "use letters, digits and _ only")
        if self.view_schema is not None and not TABLE_NAME.match(self.view_schema):
            raise ConfigError(join_key(key, "view_schema"), f"'{self.view_schema}' is not a [catalog.]schema name")
