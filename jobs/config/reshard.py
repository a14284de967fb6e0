"""``clipsift reshard``: :class:`ReshardConfig` and its sections."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    check_positive,
    join_key,
)
from clipsift.jobs.config.embed import EmbedInputConfig
from clipsift.udfs.reshard import EncodeSettings


@dataclass(frozen=True)
class SelectionRef(Section):
    """The selection to reshard: a view or table by name (``view``), or a selection by ``name`` as recorded in the
    ``<scores>_selections`` table of ``scores`` (its latest run, or ``run_id``)."""

    view: str | None = None
    """A view or table with a ``uid`` column (``clipsift select``'s ``<view_schema>.<view_prefix><name>``)."""
    name: str | None = None
    """A selection name of ``clipsift select`` (needs ``scores``)."""
    scores: TableRef | None = None
    """The score table whose ``_selections`` table records ``name``."""
    run_id: str | None = None
    """With ``name``: the score run of the selection (default: the one recorded last)."""

    def validate(self, key: str) -> None:
        if (self.view is None) == (self.name is None):
            raise ConfigError(key, "give exactly one of 'view' (a view or table name) or 'name' (with 'scores')")
        if self.view is not None:
            if not TABLE_NAME.match(self.view.replace("`", "")):  # as select names it, quoted or not
                raise ConfigError(f"{key}.view", f"'{self.view}' is not a [catalog.]schema.view name")
            for other in ("scores", "run_id"):
                if getattr(self, other) is not None:
                    raise ConfigError(f"{key}.{other}", "only used with 'name'; remove it")
            return
        if not IDENTIFIER.match(str(self.name)):
            raise ConfigError(f"{key}.name", f"'{self.name}' must be an identifier (letters, digits, _)")
        if self.scores is None:
            raise ConfigError(f"{key}.scores", "a selection by name needs the score table it was made over")
        self.scores.validate(f"{key}.scores")


@dataclass(frozen=True)
class EncodeConfig(EncodeSettings, Section):
    """Optional re-encode / resize of the images (default: bytes as they were)."""

    def validate(self, key: str) -> None:
        if self.max_side is not None:
            check_positive(f"{key}.max_side", self.max_side)
        if self.format not in ("keep", "jpeg", "png", "webp"):
            raise ConfigError(f"{key}.format", f"'{self.format}' is not one of keep, jpeg, png, webp")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"{key}.quality", f"must be 1..100, got {self.quality}")
        check_positive(f"{key}.max_pixels", self.max_pixels)


@dataclass(frozen=True)
class ReshardOutputConfig(Section):
    """Where and how the shards are written."""

    path: str
    """Folder of the output shards (local, ``dbfs:/``, ``/Volumes/``, ``s3a://``, ... what pyarrow writes)."""
    format: Literal["webdataset", "parquet"] = "webdataset"
    samples_per_shard: int = 10_000
    shards_per_commit: int = 64
    """Output shards per manifest commit: a killed run loses at most the commit in flight. Each commit reads the
    input tars it needs once."""
    shuffle: bool = False
    """False: the samples keep the pool's order (tar, then sample). True: a seeded shuffle (by a hash of uid)."""
    seed: int = 0
    columns: tuple[str, ...] | None = None
    """Selection columns copied into each sample's ``.json``; default: its float, double and boolean columns."""
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    manifest: OutputRef | None = None
    """The manifest Delta table (one row per shard); the missing table is beside it (``<manifest>_missing``).
    Default: the paths ``<path>_manifest`` and ``<path>_missing``."""
    overwrite: bool = False
    """Replace the shards of another config found at ``path`` (default: refuse to mix two configs' shards)."""

    def validate(self, key: str) -> None:
        if not self.path:
            raise ConfigError(f"{key}.path", "give the folder to write the shards to")
        check_positive(f"{key}.samples_per_shard", self.samples_per_shard)
        check_positive(f"{key}.shards_per_commit", self.shards_per_commit)
        for i, column in enumerate(self.columns or ()):
            if not IDENTIFIER.match(column):
                raise ConfigError(f"{key}.columns[{i}]", f"'{column}' is not a column name")
        if self.manifest is not None:
            self.manifest.validate(f"{key}.manifest")
            if self.manifest.format != "delta":
                raise ConfigError(f"{key}.manifest.format", "the manifest is always a Delta table; remove the key")

    def tables(self) -> tuple[OutputRef, OutputRef]:
        """``(manifest, missing)`` table references."""
        if self.manifest is None:
            root = self.path.rstrip("/")
            return OutputRef(path=f"{root}_manifest"), OutputRef(path=f"{root}_missing")
        m = self.manifest
        if m.table is not None:
            return m, OutputRef(table=f"{m.table}_missing", properties=m.properties)
        return m, OutputRef(path=f"{str(m.path).rstrip('/')}_missing", properties=m.properties)


@dataclass(frozen=True)
class ReshardConfig(JobConfig):
    """``clipsift reshard``: a selection's samples out of the pool's tars (or image table) into new shards."""

    selection: SelectionRef
    pool: EmbedInputConfig
    """The pool's images: ``kind: webdataset`` (the tars ``clipsift embed`` read) or ``kind: table``."""
    output: ReshardOutputConfig
    spark: SparkSettings = SparkSettings()

    def validate(self, key: str = "") -> None:
        self.selection.validate(join_key(key, "selection"))
        self.pool.validate(join_key(key, "pool"))
        self.output.validate(join_key(key, "output"))
