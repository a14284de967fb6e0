"""``clipsift report``: :class:`ReportConfig` and its sections."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from clipsift.jobs.config.base import (
    IDENTIFIER,
    TABLE_NAME,
    ConfigError,
    JobConfig,
    Section,
    SparkSettings,
    TableRef,
    check_positive,
    join_key,
)
from clipsift.jobs.config.embed import EmbedInputConfig

#: Most selections one report compares (the overlap matrix is k × k; the masks of membership fit a long).
MAX_VIEWS = 40


@dataclass(frozen=True)
class ImagesConfig(Section):
    """Where the report's thumbnails come from.

    ``kind``: ``auto`` follows the score run's input: a table written by ``clipsift embed`` leads to that embed
    run's input (its tars or image table); a DataComp pool of embeddings has no images. ``none``: captions only.
    ``webdataset`` / ``table``: as ``clipsift embed``'s ``input`` section (the same keys, the same readers).
    """

    kind: Literal["auto", "none", "webdataset", "table"] = "auto"
    path: str | None = None
    table: str | None = None
    format: Literal["delta", "parquet"] = "delta"
    uid_col: str = "uid"
    caption_col: str = "caption"
    image_col: str | None = None
    image_path_col: str | None = None
    image_extensions: tuple[str, ...] = EmbedInputConfig.image_extensions
    max_image_bytes: int = 64 << 20
    """An image file or inline image larger than this is not thumbnailed (as ``embed.max_image_bytes``)."""
    max_pixels: int = 50_000_000
    """An image of more pixels (from its header) is not decoded (as ``embed.max_pixels``)."""

    def validate(self, key: str) -> None:
        check_positive(f"{key}.max_image_bytes", self.max_image_bytes)
        check_positive(f"{key}.max_pixels", self.max_pixels)
        if self.kind in ("auto", "none"):
            for name in ("path", "table", "image_col", "image_path_col"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{key}.{name}", f"images.kind '{self.kind}' reads no {name}; set kind: webdataset or table"
                    )
            return
        try:
            self.embed_input()  # validates as clipsift embed's input section would
        except ConfigError as exc:
            raise exc.under("EmbedInputConfig", key) from None

    def embed_input(self) -> EmbedInputConfig:
        """The same source as ``clipsift embed``'s input section (``kind`` webdataset or table)."""
        assert self.kind in ("webdataset", "table")
        return EmbedInputConfig(
            kind=self.kind, table=self.table, path=self.path, format=self.format, uid_col=self.uid_col,
            caption_col=self.caption_col, image_col=self.image_col, image_path_col=self.image_path_col,
            image_extensions=self.image_extensions,
        )  # fmt: skip


@dataclass(frozen=True)
class SamplesConfig(Section):
    """Thumbnails: how many, from where, how big; seeded, so the same config gives the same report."""

    per_group: int = 8
    """Rows shown per group (a score's top, bottom and cut-off; a view's rows kept here and dropped by the baseline,
    and the reverse)."""
    tail_fraction: float = 0.01
    """A score's "top" and "bottom" groups are drawn from this fraction of the run's ok rows at either end."""
    seed: int = 0
    thumbnail_px: int = 128
    """Longest side of a thumbnail, in pixels (JPEG, inline in the page)."""
    caption_chars: int = 200
    """Captions are cut to this many characters on the page."""

    def validate(self, key: str) -> None:
        check_positive(f"{key}.per_group", self.per_group)
        check_positive(f"{key}.thumbnail_px", self.thumbnail_px)
        check_positive(f"{key}.caption_chars", self.caption_chars)
        if not 0 < self.tail_fraction <= 0.5:
            raise ConfigError(f"{key}.tail_fraction", f"must be a fraction in (0, 0.5], got {self.tail_fraction}")
        if self.per_group > 100:
            raise ConfigError(f"{key}.per_group", "at most 100 rows per group (the page holds them all inline)")
        if self.thumbnail_px > 512:
            raise ConfigError(f"{key}.thumbnail_px", "at most 512 pixels (the page holds every thumbnail inline)")


@dataclass(frozen=True)
class ReportConfig(JobConfig):
    """``clipsift report``: one self-contained HTML page about a score run and its selections."""

    scores: TableRef
    output: str = "report.html"
    """The HTML file written (a local path; its folder is created)."""
    run_id: str | None = None
    """Which score run; default: the latest in the score table's runs table."""
    columns: tuple[str, ...] = ()
    """Score columns shown (histograms, samples, correlations); default: every numeric score column of the run."""
    selections: tuple[str, ...] = ()
    """Selections of the run (names in ``<scores>_selections``) shown; default: all of them."""
    baseline: str | None = None
    """A selection every other is compared with; default: for each view, the top rows by ``baseline_column`` of the
    same size (ties by uid)."""
    baseline_column: str = "clip_score"
    bins: int = 40
    """Histogram bins per score column."""
    density_bins: int = 40
    """Bins per axis of the 2-D density of ``density_x`` against ``density_y``."""
    density_x: str = "clip_score"
    density_y: str = "negclip_loss"
    rank_sample_rows: int = 200_000
    """Rank correlations are computed in Spark on a seeded sample of about this many ok rows (exact when the run
    has no more)."""
    error_examples: int = 3
    """Example errors shown per status."""
    images: ImagesConfig = ImagesConfig()
    samples: SamplesConfig = SamplesConfig()
    spark: SparkSettings = SparkSettings()

    def validate(self, key: str = "") -> None:
        self.scores.validate(join_key(key, "scores"))
        if not self.output.endswith((".html", ".htm")):
            raise ConfigError(join_key(key, "output"), f"'{self.output}' must be a path ending in .html")
        for i, c in enumerate(self.columns):
            if not IDENTIFIER.match(c):
                raise ConfigError(join_key(key, f"columns[{i}]"), f"'{c}' is not a column name")
        for i, s in enumerate(self.selections):
            if not IDENTIFIER.match(s):
                raise ConfigError(join_key(key, f"selections[{i}]"), f"'{s}' is not a selection name")
        if len(self.selections) > MAX_VIEWS:
            raise ConfigError(join_key(key, "selections"), f"at most {MAX_VIEWS} selections in one report")
        if self.baseline is not None and not IDENTIFIER.match(self.baseline):
            raise ConfigError(join_key(key, "baseline"), f"'{self.baseline}' is not a selection name")
        for name in ("baseline_column", "density_x", "density_y"):
            if not IDENTIFIER.match(getattr(self, name)):
                raise ConfigError(join_key(key, name), f"'{getattr(self, name)}' is not a column name")
        for name, most in (("bins", 1000), ("density_bins", 200)):
            value = getattr(self, name)
            if not 2 <= value <= most:
                raise ConfigError(join_key(key, name), f"must be an integer in [2, {most}], got {value}")
        check_positive(join_key(key, "rank_sample_rows"), self.rank_sample_rows)
        if not 0 <= self.error_examples <= 20:
            raise ConfigError(join_key(key, "error_examples"), f"must be in [0, 20], got {self.error_examples}")
        if self.run_id is not None and not re.match(r"^[A-Za-z0-9_.:-]+$", self.run_id):
            raise ConfigError(join_key(key, "run_id"), f"'{self.run_id}' is not a run id")
        if self.scores.table is not None and not TABLE_NAME.match(self.scores.table):  # pragma: no cover - TableRef
            raise ConfigError(join_key(key, "scores.table"), "not a [catalog.]schema.table name")
        self.images.validate(join_key(key, "images"))
        self.samples.validate(join_key(key, "samples"))
