"""Job configuration: frozen dataclasses loaded from YAML, strict about keys, types and ranges.

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

from clipsift.udfs.embed import EmbedSettings
from clipsift.udfs.ingest import METADATA_COLUMNS

T = TypeVar("T")
J = TypeVar("J", bound="JobConfig")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")


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
        path = f"{key}{rest}" if rest.startswith("[") or not rest else _join(key, rest.lstrip("."))
        return ConfigError(path or section, self.message)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value}")


def _fraction(key: str, value: float) -> None:
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
# Shared pieces


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
        if self.table is not None and not _TABLE_NAME.match(self.table):
            raise ConfigError(f"{key}.table", f"'{self.table}' is not a [catalog.]schema.table name")

    @property
    def label(self) -> str:
        """The name or path, for messages and lineage."""
        return self.table if self.table is not None else str(self.path)


@dataclass(frozen=True)
class SparkSettings(Section):
    """Spark session settings; ignored where a session is already active (Databricks, tests)."""

    app_name: str = "clipsift"
    conf: Mapping[str, str] = field(default_factory=dict)
    """Extra ``spark.*`` settings, e.g. ``spark.sql.shuffle.partitions``."""


# --------------------------------------------------------------------------------------------------
# Score job


@dataclass(frozen=True)
class InputConfig(Section):
    """Where the pool's embeddings come from."""

    kind: Literal["datacomp", "table"] = "datacomp"
    path: str | None = None
    """datacomp: folder of ``<shard>.parquet`` + ``<shard>.npz``; table: storage path of the table."""
    table: str | None = None
    """table: catalog name (instead of ``path``)."""
    format: Literal["delta", "parquet"] = "delta"
    """table: storage format when read by path."""
    arch: Literal["l14", "b32"] = "l14"
    """datacomp: the teacher's arrays, ``<arch>_img`` / ``<arch>_txt`` in the npz."""
    uid_col: str = "uid"
    image_col: str = "image_emb"
    text_col: str = "text_emb"
    shard_col: str | None = None
    """table: column naming the shard of each row (for ``negclip.grouping: shard``)."""
    dim: int | None = None
    """Expected embedding dimension; default: 768 for l14, 512 for b32, else taken from the first row."""
    model: str | None = None
    """table: the ``model_id`` whose rows to score, when the table holds several (``clipsift embed`` output)."""
    metadata_cols: Mapping[str, str] = field(
        default_factory=lambda: {"text": "caption", "original_width": "image_width", "original_height": "image_height"}
    )
    """table: the table's columns for the pair metadata kept with the scores (``text``, ``original_width``,
    ``original_height``, ``clip_b32_similarity_score``, ``clip_l14_similarity_score``); a metadata column the
    table lacks is null. The default maps ``clipsift embed``'s columns; unmapped names are looked up as they are."""

    def validate(self, key: str) -> None:
        if self.kind == "datacomp":
            if not self.path:
                raise ConfigError(f"{key}.path", "datacomp input needs the folder holding the shard parquet + npz")
            if self.table:
                raise ConfigError(f"{key}.table", "not used for datacomp input; remove it")
            if self.model:
                raise ConfigError(f"{key}.model", "not used for datacomp input (the teacher is input.arch); remove it")
        else:
            if (self.table is None) == (self.path is None):
                raise ConfigError(key, "table input needs exactly one of 'table' (catalog name) or 'path'")
            if self.table is not None and not _TABLE_NAME.match(self.table):
                raise ConfigError(f"{key}.table", f"'{self.table}' is not a [catalog.]schema.table name")
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"{key}.dim", "must be a positive integer")
        for name in self.metadata_cols:
            if name not in METADATA_COLUMNS:
                valid = ", ".join(METADATA_COLUMNS)
                raise ConfigError(f"{key}.metadata_cols.{name}", f"not a metadata column; use {valid}")

    @property
    def expected_dim(self) -> int | None:
        if self.dim is not None:
            return self.dim
        if self.kind == "datacomp":
            return 768 if self.arch == "l14" else 512
        return None

    @property
    def label(self) -> str:
        return self.table if self.table is not None else str(self.path)


@dataclass(frozen=True)
class NegClipConfig(Section):
    """negCLIPLoss (ALGORITHMS.md §1, §6)."""

    enabled: bool = True
    rounds: int = 10
    """K: random batchings averaged."""
    batch_size: int = 32768
    """B: rows per contrastive batch (the last batch of a group is the remainder)."""
    tau: float = 0.01
    """τ: 0.01 for OpenAI CLIP teachers (0.07 is sometimes used for DFN-P)."""
    seed: int = 0
    grouping: Literal["shard", "pool"] = "shard"
    """shard: batches within each input shard (the authors' way); pool: within random groups of the whole pool."""
    pool_group_rows: int | None = None
    """pool grouping: rows per random group (default 8 × batch_size; ≥ pool size = one group)."""
    block_rows: int | None = field(default=None, metadata=NOT_SCORED)
    """Rows per similarity block in the kernel (default: blocks under 256 MiB)."""

    def validate(self, key: str) -> None:
        _positive(f"{key}.rounds", self.rounds)
        _positive(f"{key}.batch_size", self.batch_size)
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ConfigError(f"{key}.tau", f"must be a positive number (0.01 for OpenAI CLIP), got {self.tau}")
        if self.pool_group_rows is not None and self.pool_group_rows < self.batch_size:
            raise ConfigError(f"{key}.pool_group_rows", "must be at least batch_size")
        if self.block_rows is not None:
            _positive(f"{key}.block_rows", self.block_rows)

    @property
    def group_rows(self) -> int:
        return self.pool_group_rows if self.pool_group_rows is not None else 8 * self.batch_size


@dataclass(frozen=True)
class TargetConfig(Section):
    """A NormSim target set: image embeddings of the distribution to be close to."""

    name: str
    """Identifier used in column names: ``normsim_2_<name>``, ``normsim_inf_<name>``."""
    path: str = field(metadata=NOT_SCORED)  # the run id hashes the target's contents instead
    """``.npy``, ``.npz`` (with ``key``) or ``.pt`` (tensor, or dict with ``key``) file on a path the driver reads."""
    key: str | None = None

    def validate(self, key: str) -> None:
        if not _IDENTIFIER.match(self.name):
            raise ConfigError(f"{key}.name", f"'{self.name}' must be an identifier (letters, digits, _)")
        suffix = Path(self.path).suffix.lower()
        if suffix not in (".npy", ".npz", ".pt", ".pth"):
            raise ConfigError(f"{key}.path", f"'{self.path}' must end in .npy, .npz, .pt or .pth")


@dataclass(frozen=True)
class NormSimConfig(Section):
    """NormSim against named targets (ALGORITHMS.md §2)."""

    targets: tuple[TargetConfig, ...] = ()
    norms: tuple[str, ...] = ("2", "inf")
    """Which p to compute: "2" and/or "inf"."""
    signed_inf: bool = False
    """p = ∞ as the signed maximum cosine instead of the maximum |cosine| (the authors' code)."""
    closure_max_mb: int = field(default=64, metadata=NOT_SCORED)
    """Targets up to this size travel in the UDF closure; larger ones are staged and memory-mapped per worker."""
    staging_dir: str | None = field(default=None, metadata=NOT_SCORED)
    """Folder every executor can read (e.g. ``/dbfs/...``, ``/Volumes/...``) for large staged targets."""
    block_size: int = field(default=8192, metadata=NOT_SCORED)

    def validate(self, key: str) -> None:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.targets", f"target names must be unique, got {names}")
        for i, t in enumerate(self.targets):
            t.validate(f"{key}.targets[{i}]")
        bad = [p for p in self.norms if p not in ("2", "inf")]
        if bad or not self.norms:
            raise ConfigError(f"{key}.norms", f"must list 2 and/or inf, got {list(self.norms)}")
        _positive(f"{key}.closure_max_mb", self.closure_max_mb)
        _positive(f"{key}.block_size", self.block_size)


@dataclass(frozen=True)
class NormSim2DConfig(Section):
    """Target-free NormSim₂-D (VAS-D), ALGORITHMS.md §2.3."""

    enabled: bool = False
    candidate_fraction: float = 0.3
    """f_pre: start from the top fraction of the pool by CLIPScore (1.0 = the whole pool)."""
    final_fraction: float = 0.2
    """f_final: rows kept at the end, as a fraction of the pool."""
    iterations: int = 500

    def validate(self, key: str) -> None:
        _fraction(f"{key}.candidate_fraction", self.candidate_fraction)
        _fraction(f"{key}.final_fraction", self.final_fraction)
        if self.final_fraction > self.candidate_fraction:
            raise ConfigError(f"{key}.final_fraction", "must not exceed candidate_fraction")
        _positive(f"{key}.iterations", self.iterations)


#: Above this many clusters ``kmeans.init: auto`` starts from random rows instead of k-means||.
KMEANS_PARALLEL_MAX_K = 2_000


@dataclass(frozen=True)
class KMeansConfig(Section):
    """Spark MLlib k-means of the pool's image embeddings (image-based filtering, semantic dedup)."""

    clusters: int = 100_000
    """k (DataComp used 100,000 per scale)."""
    iterations: int = 20
    seed: int = 0
    fit_rows: int | None = None
    """Fit on a seeded sample of about this many rows (null: every ok row); every row is then assigned."""
    init: Literal["auto", "k-means||", "random"] = "auto"
    """MLlib's initialisation. ``auto``: k-means|| up to ``KMEANS_PARALLEL_MAX_K`` clusters, else random rows (as
    faiss): k-means|| ends in a k-means++ over about 4·k candidates on the driver, hours at DataComp's k = 100k."""

    def validate(self, key: str) -> None:
        if self.clusters < 2:
            raise ConfigError(f"{key}.clusters", f"must be at least 2 (MLlib k-means), got {self.clusters}")
        _positive(f"{key}.iterations", self.iterations)
        if self.fit_rows is not None:
            _positive(f"{key}.fit_rows", self.fit_rows)


@dataclass(frozen=True)
class BaselinesConfig(Section):
    """DataComp baselines and semantic dedup as columns of the score table (README "Baselines")."""

    basic: bool = False
    """``caption_lang``, ``caption_lang_prob``, ``basic_filter``: English, > 2 words, > 5 chars, side >= 200,
    aspect <= 3 (needs ``text``, ``original_width``, ``original_height``)."""
    text_based: bool = False
    """``caption_in21k``, ``text_based_filter``: English and a word whose first WordNet synset is an
    ImageNet-21k class."""
    image_based_target: str | None = None
    """Name of a ``normsim.targets`` entry: ``image_cluster``, ``image_based_filter`` (the row's cluster is the
    nearest cluster of some target row, and its caption passes the pre-filter)."""
    dedup_threshold: float | None = None
    """Cosine at or above which images of one k-means cluster are near-duplicates: ``dedup_*`` columns."""
    dedup_rank: str = "clip_score"
    """Score whose highest value picks the row kept of a duplicate group: ``clip_score`` or a NormSim column."""
    kmeans: KMeansConfig = KMeansConfig()

    @property
    def needs_clusters(self) -> bool:
        return self.image_based_target is not None or self.dedup_threshold is not None

    def validate(self, key: str, targets: Sequence[str] | None = None) -> None:
        """``targets``: the ``normsim.targets`` names, checked by the score config that holds both."""
        if targets is not None and self.image_based_target is not None and self.image_based_target not in targets:
            raise ConfigError(
                f"{key}.image_based_target",
                f"'{self.image_based_target}' is not a normsim.targets name ({', '.join(targets) or 'none given'})",
            )
        if self.dedup_threshold is not None and not 0 < self.dedup_threshold <= 1:
            raise ConfigError(f"{key}.dedup_threshold", f"must be a cosine in (0, 1], got {self.dedup_threshold}")
        if not _IDENTIFIER.match(self.dedup_rank):
            raise ConfigError(f"{key}.dedup_rank", f"'{self.dedup_rank}' is not a column name")
        self.kmeans.validate(f"{key}.kmeans")


@dataclass(frozen=True)
class ScoreClipSelectConfig(Section):
    """The label-free CLIP-powered selection scores as score-table columns ``sas`` and ``sds`` (README
    "CLIP-powered selection"); select on them with a ``clipselect`` selection."""

    enabled: bool = False
    k: int = 50
    """SDS neighbours within the row's k-means cluster (``baselines.kmeans``), the row itself included."""
    adapters: str | None = None
    """Folder of adapters saved by ``clipsift clipselect`` (read on the driver); default identity adapters, with
    which ``sas`` equals ``clip_score``."""

    def validate(self, key: str) -> None:
        if self.k < 2:
            raise ConfigError(f"{key}.k", f"must be an integer >= 2, got {self.k}")
        if self.adapters is not None and not self.enabled:
            raise ConfigError(f"{key}.adapters", "is only used with clipselect.enabled: true; set it or remove this")


@dataclass(frozen=True)
class ScoreConfig(JobConfig):
    """``clipsift score``: embeddings in, one Delta table of scores out."""

    input: InputConfig
    output: TableRef = field(metadata=NOT_SCORED)
    run_id: str | None = field(default=None, metadata=NOT_SCORED)
    """Default: a hash of everything that determines the scores, so a rerun replaces its own rows."""
    negclip: NegClipConfig = NegClipConfig()
    normsim: NormSimConfig = NormSimConfig()
    normsim2_dynamic: NormSim2DConfig = NormSim2DConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    clipselect: ScoreClipSelectConfig = ScoreClipSelectConfig()
    spark: SparkSettings = field(default=SparkSettings(), metadata=NOT_SCORED)

    @property
    def needs_clusters(self) -> bool:
        """Whether the run fits k-means (``baselines.kmeans``): image-based filtering, dedup, clipselect's SDS."""
        return self.baselines.needs_clusters or self.clipselect.enabled

    def validate(self, key: str = "") -> None:
        self.input.validate(_join(key, "input"))
        self.output.validate(_join(key, "output"))
        if self.output.format != "delta":
            raise ConfigError(_join(key, "output.format"), "scores are always written as Delta; remove the key")
        if self.run_id is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.run_id):
            raise ConfigError(_join(key, "run_id"), "use 1-64 letters, digits, '_', '.' or '-'")
        self.negclip.validate(_join(key, "negclip"))
        self.normsim.validate(_join(key, "normsim"))
        self.normsim2_dynamic.validate(_join(key, "normsim2_dynamic"))
        self.baselines.validate(_join(key, "baselines"), [t.name for t in self.normsim.targets])
        self.clipselect.validate(_join(key, "clipselect"))
        if self.negclip.grouping == "shard" and self.input.kind == "table" and not self.input.shard_col:
            raise ConfigError(
                _join(key, "negclip.grouping"),
                "'shard' grouping of a table needs input.shard_col; set it, or use grouping: pool",
            )


# --------------------------------------------------------------------------------------------------
# Select job

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
    materialize: TableRef | None = None
    """Also write the selected uids as a Delta table."""
    export_npy: str | None = None
    """Also write DataComp's subset file (.npy of dtype u8,u8, sorted) to this local path."""

    def validate(self, key: str, earlier: Sequence[str] | None = None) -> None:
        """``earlier``: the names of the selections before this one, checked by the select config."""
        if not _IDENTIFIER.match(self.name):
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
            if v is not None and not _IDENTIFIER.match(v):
                raise ConfigError(f"{key}.{k}", f"'{v}' is not a column name")
        for c in self.columns:
            if not _IDENTIFIER.match(c):
                raise ConfigError(f"{key}.columns", f"'{c}' is not a column name")
        if self.rule == "threshold" and self.min is None and self.max is None:
            raise ConfigError(f"{key}.min", "rule 'threshold' needs 'min' and/or 'max'")
        if self.fraction is not None:
            _fraction(f"{key}.fraction", self.fraction)
        if self.then_fraction is not None:
            _fraction(f"{key}.then_fraction", self.then_fraction)
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
        self.scores.validate(_join(key, "scores"))
        if not self.selections:
            raise ConfigError(_join(key, "selections"), "list at least one selection")
        names: list[str] = []
        for i, s in enumerate(self.selections):
            s.validate(_join(key, f"selections[{i}]"), names)
            if s.name in names:
                raise ConfigError(_join(key, f"selections[{i}].name"), f"'{s.name}' is used twice")
            names.append(s.name)
        if self.view_prefix and not re.match(r"^[A-Za-z0-9_]*$", self.view_prefix):
            raise ConfigError(_join(key, "view_prefix"), "use letters, digits and _ only")
        if self.view_schema is not None and not _TABLE_NAME.match(self.view_schema):
            raise ConfigError(_join(key, "view_schema"), f"'{self.view_schema}' is not a [catalog.]schema name")


# --------------------------------------------------------------------------------------------------
# Embed job


@dataclass(frozen=True)
class EmbedInputConfig(Section):
    """Where the image-caption pairs come from."""

    kind: Literal["webdataset", "table"] = "webdataset"
    path: str | None = None
    """webdataset: a folder of ``.tar`` shards (or one ``.tar``); table: the table's storage path."""
    table: str | None = None
    """table: catalog name (instead of ``path``)."""
    format: Literal["delta", "parquet"] = "delta"
    """table: storage format when read by path."""
    uid_col: str = "uid"
    caption_col: str = "caption"
    image_col: str | None = None
    """table: column of image bytes (give this or ``image_path_col``)."""
    image_path_col: str | None = None
    """table: column of image paths/URIs (local, ``dbfs:/``, ``/Volumes/``, ``s3a://``, ``gs://``, ``hdfs://``)."""
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
    """webdataset: member extensions taken as the sample's image (first match in this order)."""

    def validate(self, key: str) -> None:
        if self.kind == "webdataset":
            if not self.path:
                raise ConfigError(f"{key}.path", "webdataset input needs the folder of .tar shards")
            for name in ("table", "image_col", "image_path_col"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{key}.{name}", "not used for webdataset input; remove it")
            return
        if (self.table is None) == (self.path is None):
            raise ConfigError(key, "table input needs exactly one of 'table' (catalog name) or 'path'")
        if self.table is not None and not _TABLE_NAME.match(self.table):
            raise ConfigError(f"{key}.table", f"'{self.table}' is not a [catalog.]schema.table name")
        if (self.image_col is None) == (self.image_path_col is None):
            raise ConfigError(key, "table input needs exactly one of 'image_col' (bytes) or 'image_path_col' (paths)")

    @property
    def label(self) -> str:
        return self.table if self.table is not None else str(self.path)


@dataclass(frozen=True)
class ModelConfig(Section):
    """The open_clip teacher (see README "Models")."""

    name: str
    """open_clip model name (``ViT-L-14``), ``hf-hub:org/repo``, ``local-dir:/path``, or a custom config's name."""
    pretrained: str | None = None
    """Pretrained tag (``openai``), a local checkpoint file (weights only), or null for seeded random weights."""
    config_json: str | None = None
    """Path of a custom model config JSON; it is registered under ``name``."""
    cache_dir: str | None = None
    """Where hub weights are kept (a path every executor reads, e.g. ``/Volumes/...``)."""
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """GPU autocast dtype (``auto`` = bf16); CPU always runs fp32."""
    seed: int = 0
    threads: int | None = None
    """torch threads per Python worker on CPU (default: torch's own)."""

    def validate(self, key: str) -> None:
        if not self.name:
            raise ConfigError(f"{key}.name", "give an open_clip model name, e.g. ViT-B-32")
        if not re.match(r"^(auto|cpu|cuda(:[0-9]+)?)$", self.device):
            raise ConfigError(f"{key}.device", f"'{self.device}' is not one of auto, cpu, cuda, cuda:N")
        if self.config_json is not None and not Path(self.config_json).is_file():
            raise ConfigError(f"{key}.config_json", f"file '{self.config_json}' does not exist")
        if self.threads is not None:
            _positive(f"{key}.threads", self.threads)


@dataclass(frozen=True)
class EmbedOptions(EmbedSettings, Section):
    """The embedding UDF's settings (batching, decoding limits, output dtype) plus commit size and retries."""

    shards_per_commit: int | None = None
    """webdataset: tar shards per Delta commit (work committed survives a crash); one task per shard. Default: the
    session's default parallelism (its task slots: every core or GPU busy), at least 8."""
    rows_per_commit: int = 200_000
    """table input: rows per Delta commit."""
    retry_failed: bool = True
    """Re-embed rows that failed for reasons that may pass (unreadable file, encoder error)."""

    def validate(self, key: str) -> None:
        for name in (
            "image_batch_size", "text_batch_size", "decode_threads", "prefetch_batches", "max_pixels",
            "max_caption_chars", "rows_per_commit", "log_every_rows",
        ):  # fmt: skip
            _positive(f"{key}.{name}", getattr(self, name))
        if self.shards_per_commit is not None:
            _positive(f"{key}.shards_per_commit", self.shards_per_commit)
        if self.max_aspect_ratio < 1:
            raise ConfigError(f"{key}.max_aspect_ratio", "must be at least 1")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"{key}.dtype", f"'{self.dtype}' is not one of float32, float16")


@dataclass(frozen=True)
class EmbedConfig(JobConfig):
    """``clipsift embed``: image-caption pairs in, a Delta table of unit embeddings per (uid, model) out."""

    input: EmbedInputConfig
    model: ModelConfig
    output: TableRef
    embed: EmbedOptions = EmbedOptions()
    spark: SparkSettings = SparkSettings()

    def validate(self, key: str = "") -> None:
        self.input.validate(_join(key, "input"))
        self.model.validate(_join(key, "model"))
        self.output.validate(_join(key, "output"))
        if self.output.format != "delta":
            raise ConfigError(_join(key, "output.format"), "embeddings are always written as Delta; remove the key")
        self.embed.validate(_join(key, "embed"))


# --------------------------------------------------------------------------------------------------
# CLIP-powered selection job (ALGORITHMS.md §4)


@dataclass(frozen=True)
class ClipSelectInputConfig(Section):
    """The embedding table scored by ``clipsift clipselect`` (``clipsift embed`` output or any uid + vector table)."""

    table: str | None = None
    """Catalog name (instead of ``path``)."""
    path: str | None = None
    """Storage path of the table."""
    format: Literal["delta", "parquet"] = "delta"
    uid_col: str = "uid"
    image_col: str = "image_emb"
    label_col: str | None = "label"
    """Integer class index (label ``i`` is ``classes[i]``); null for the label-free variant (captions + k-means)."""
    text_col: str | None = None
    """Caption embedding column, used (and required) by the label-free variant only."""
    model: str | None = None
    """The ``model_id`` whose rows to score, when the table holds several (``clipsift embed`` output)."""

    def validate(self, key: str) -> None:
        if (self.table is None) == (self.path is None):
            raise ConfigError(key, "give exactly one of 'table' (catalog name) or 'path' (storage path)")
        if self.table is not None and not _TABLE_NAME.match(self.table):
            raise ConfigError(f"{key}.table", f"'{self.table}' is not a [catalog.]schema.table name")
        if self.label_col is None and self.text_col is None:
            raise ConfigError(f"{key}.text_col", "the label-free variant (label_col: null) needs the caption column")
        if self.label_col is not None and self.text_col is not None:
            raise ConfigError(f"{key}.text_col", "only used when label_col is null (label-free variant); remove it")

    @property
    def label(self) -> str:
        return self.table if self.table is not None else str(self.path)


@dataclass(frozen=True)
class AdapterTrainingConfig(Section):
    """Training of the linear image/text adapters (:func:`clipsift.udfs.adapters.train_adapters`)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-4
    temperature: float = 0.07
    seed: int = 0
    """Seeds the per-epoch row order (a hash of uid, epoch and seed) and torch."""
    save_path: str | None = None
    """Folder for ``adapters.pt`` + ``provenance.json`` (required with labels; the label-free variant saves its
    identity adapters there when given)."""

    def validate(self, key: str) -> None:
        _positive(f"{key}.epochs", self.epochs)
        _positive(f"{key}.batch_size", self.batch_size)
        if not (self.lr > 0 and self.temperature > 0):
            raise ConfigError(f"{key}.lr", "lr and temperature must be positive")


@dataclass(frozen=True)
class ClipSelectConfig(JobConfig):
    """``clipsift clipselect``: CLIP-powered selection scores (SAS, SDS, criterion) into a Delta table."""

    input: ClipSelectInputConfig
    output: TableRef
    model: ModelConfig
    """The open_clip model that embedded the table; it embeds the class prompts on the driver."""
    classes: tuple[str, ...] = ()
    """Class names, label ``i`` is ``classes[i]`` (required with labels)."""
    prompt_templates: tuple[str, ...] = ("A photo of a {}",)
    """Each with ``{}`` for the class name; with several, a class's prompt feature is the normalised mean of its
    templates' unit embeddings (CLIP's prompt ensembling)."""
    adapters: AdapterTrainingConfig = AdapterTrainingConfig()
    k: int = 50
    """SDS neighbours (scikit-learn's n_neighbors, the row itself included)."""
    lam: float = 0.1
    beta: float = 2.0
    """The optimiser's weight of the count penalty β·|Σ STE(m) − k|/N (the authors' 2)."""
    pseudo_classes: int = 100
    """Label-free variant: k-means clusters the SDS is computed within."""
    kmeans_iterations: int = 20
    optimiser_max_rows: int = 200_000
    """Run the paper's STE optimiser on the driver (parity columns) when the ok rows are at most this many."""
    ratios: tuple[float, ...] = (0.5, 0.9)
    """Selection ratios of the optimiser columns ``optimiser_selected_<percent>``."""
    run_id: str | None = None
    spark: SparkSettings = SparkSettings()

    @property
    def labelled(self) -> bool:
        return self.input.label_col is not None

    def validate(self, key: str = "") -> None:
        self.input.validate(_join(key, "input"))
        self.output.validate(_join(key, "output"))
        if self.output.format != "delta":
            raise ConfigError(_join(key, "output.format"), "scores are always written as Delta; remove the key")
        self.model.validate(_join(key, "model"))
        self.adapters.validate(_join(key, "adapters"))
        if self.labelled:
            if not self.classes:
                raise ConfigError(_join(key, "classes"), "give the class names (label i is classes[i])")
            if self.adapters.save_path is None:
                raise ConfigError(_join(key, "adapters.save_path"), "give a folder for the trained adapters")
        if not self.prompt_templates:
            raise ConfigError(_join(key, "prompt_templates"), "give at least one template, e.g. ['A photo of a {}']")
        for i, template in enumerate(self.prompt_templates):
            if "{}" not in template:
                raise ConfigError(_join(key, f"prompt_templates[{i}]"), "must contain '{}' for the class name")
        if self.k < 2:
            raise ConfigError(_join(key, "k"), f"must be an integer >= 2, got {self.k}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(_join(key, "lam"), f"must be a finite number >= 0, got {self.lam}")
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ConfigError(_join(key, "beta"), f"must be a finite number > 0, got {self.beta}")
        _positive(_join(key, "pseudo_classes"), self.pseudo_classes)
        _positive(_join(key, "kmeans_iterations"), self.kmeans_iterations)
        if self.optimiser_max_rows < 0:
            raise ConfigError(_join(key, "optimiser_max_rows"), "must be >= 0 (0 turns the optimiser off)")
        for i, r in enumerate(self.ratios):
            _fraction(_join(key, f"ratios[{i}]"), r)
        percents = [round(r * 100) for r in self.ratios]
        if len(set(percents)) != len(percents):
            raise ConfigError(_join(key, "ratios"), "two ratios give the same integer percent column")
        if self.run_id is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.run_id):
            raise ConfigError(_join(key, "run_id"), "use 1-64 letters, digits, '_', '.' or '-'")


# --------------------------------------------------------------------------------------------------
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
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"'{p}' must hold a mapping at the top level")
        data = loaded
    for item in overrides:
        _apply_override(data, item)
    return from_dict(cls, data)


def from_argv(cls: type[T], prog: str, argv: Sequence[str] | None) -> T:
    """Parse a job's ``--config FILE [--set key=value ...]`` arguments and load ``cls`` from them."""
    parser = argparse.ArgumentParser(prog=prog, description=f"{prog}: see README.md for the config keys")
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
    node[parts[-1]] = yaml.safe_load(raw)


def _build(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(key or "<top>", f"expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(_join(key, str(unknown[0])), f"unknown key; valid keys here: {', '.join(sorted(fields))}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], _join(key, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(_join(key, name), "is required")
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
