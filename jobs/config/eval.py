"""``clipsift eval``: :class:`EvalConfig` and its sections."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
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
from clipsift.udfs.proxy import STUDENT_NAME, TrainSettings


@dataclass(frozen=True)
class EvalSelection(Section):
    """One selection to evaluate: its ``name`` and the view (or table) of its uids."""

    name: str
    view: str | None = None
    """A view or table with a ``uid`` column; default ``<view_schema>.<view_prefix><name>`` as ``clipsift select``
    names it."""

    def validate(self, key: str) -> None:
        if not IDENTIFIER.match(self.name):
            raise ConfigError(f"{key}.name", f"'{self.name}' must be an identifier (letters, digits, _)")
        if self.name in ("pool",) or self.name.startswith("random_"):
            raise ConfigError(f"{key}.name", f"'{self.name}' is an arm the job adds itself; rename the selection")
        if self.view is not None and not TABLE_NAME.match(self.view.replace("`", "")):
            raise ConfigError(f"{key}.view", f"'{self.view}' is not a [catalog.]schema.view name")


@dataclass(frozen=True)
class StudentConfig(Section):
    """The student CLIP trained from scratch for every arm."""

    name: str = STUDENT_NAME
    """An open_clip architecture (``open_clip.list_models()``, e.g. ``ViT-B-32``) or a custom config's name; the
    default is clipsift's tiny student (a 2-layer ViT on 32 x 32 images, a 2-layer text transformer, 64 wide)."""
    config_json: str | None = None
    """Path of a custom open_clip model config JSON, registered under ``name``."""

    def validate(self, key: str) -> None:
        if not self.name or "/" in self.name or ":" in self.name:
            raise ConfigError(f"{key}.name", f"'{self.name}' is not an open_clip architecture or config name")
        if self.config_json is not None and not Path(self.config_json).is_file():
            raise ConfigError(f"{key}.config_json", f"file '{self.config_json}' does not exist")


@dataclass(frozen=True)
class EvalTrainConfig(TrainSettings, Section):
    """The equal budget of every arm: ``steps x batch_size`` samples seen, on each seed."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """One student per arm and seed (the seed draws the initial weights and the batch order)."""
    data_seed: int = 0
    """Seeds the random arms, the order rows are taken from an arm larger than the samples seen, and the
    retrieval holdout."""

    def validate(self, key: str) -> None:
        for name in ("steps", "batch_size"):
            check_positive(f"{key}.{name}", getattr(self, name))
        if self.batch_size < 2:
            raise ConfigError(f"{key}.batch_size", "a contrastive batch needs at least 2 pairs")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"{key}.warmup_steps", f"must be in 0..steps ({self.steps}), got {self.warmup_steps}")
        if not self.lr > 0:
            raise ConfigError(f"{key}.lr", f"must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{key}.weight_decay", f"must not be negative, got {self.weight_decay}")
        if self.threads is not None:
            check_positive(f"{key}.threads", self.threads)
        if not re.match(r"^(auto|cpu|cuda(:[0-9]+)?)$", self.device):
            raise ConfigError(f"{key}.device", f"'{self.device}' is not one of auto, cpu, cuda, cuda:N")
        if not self.seeds:
            raise ConfigError(f"{key}.seeds", "list at least one seed, e.g. [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{key}.seeds", f"a seed is listed twice: {list(self.seeds)}")


@dataclass(frozen=True)
class ZeroShotConfig(TableRef):
    """The labelled images of zero-shot classification: a table (``table`` or ``path``) with image bytes
    (``image_col``) or paths (``image_path_col``) and a label column, plus the class names and prompt templates."""

    image_col: str | None = None
    image_path_col: str | None = None
    label_col: str = "label"
    """The class of each image: its name (a string in ``classes``), or an integer index into ``classes``."""
    classes: tuple[str, ...] = ()
    """Class names in label order; default: the distinct string labels, sorted."""
    templates: tuple[str, ...] = ("a photo of a {}.",)
    """Prompts, ``{}`` standing for the class name; a class is the mean of its prompts' embeddings."""
    max_images: int = 2000
    """The most images evaluated (a seeded sample of the table)."""

    def validate(self, key: str) -> None:
        super().validate(key)
        if (self.image_col is None) == (self.image_path_col is None):
            raise ConfigError(key, "give exactly one of 'image_col' (bytes) or 'image_path_col' (paths)")
        for name in ("image_col", "image_path_col", "label_col"):
            value = getattr(self, name)
            if value is not None and not IDENTIFIER.match(value):
                raise ConfigError(f"{key}.{name}", f"'{value}' is not a column name")
        if not self.templates:
            raise ConfigError(f"{key}.templates", "list at least one prompt template, e.g. 'a photo of a {}.'")
        for i, template in enumerate(self.templates):
            if template.count("{}") != 1 or "{" in template.replace("{}", ""):
                raise ConfigError(f"{key}.templates[{i}]", f"'{template}' must hold '{{}}' once, for the class name")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{key}.classes", "a class name is listed twice")
        check_positive(f"{key}.max_images", self.max_images)


@dataclass(frozen=True)
class RetrievalConfig(Section):
    """The held-out pairs of image <-> text retrieval: ``holdout`` pairs of the pool, kept out of every arm's
    training, or the pairs of ``input`` (not in the pool)."""

    holdout: int = 500
    """Pairs of the pool held out (a seeded sample, ``train.data_seed``), when ``input`` is not given."""
    input: EmbedInputConfig | None = None
    """Other held-out pairs (tars or a table, as ``pool``); at most ``holdout`` of them are used."""

    def validate(self, key: str) -> None:
        if self.holdout < 2:
            raise ConfigError(f"{key}.holdout", f"needs at least 2 pairs, got {self.holdout}")
        if self.input is not None:
            self.input.validate(f"{key}.input")


@dataclass(frozen=True)
class EvalConfig(JobConfig):
    """``clipsift eval``: a student CLIP per selection (and a random subset of its size, and the whole pool) at
    equal samples seen, scored by zero-shot classification and retrieval into ``<scores>_eval``."""

    scores: TableRef
    """The score table the selections were made over; the results go to ``<scores>_eval`` (or ``output``)."""
    pool: EmbedInputConfig
    """The pool's images and captions: ``kind: webdataset`` (the tars ``clipsift embed`` read) or ``kind: table``."""
    selections: tuple[EvalSelection, ...]
    zero_shot: ZeroShotConfig
    student: StudentConfig = field(default_factory=StudentConfig)
    train: EvalTrainConfig = field(default_factory=EvalTrainConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    view_prefix: str = ""
    view_schema: str | None = None
    """Where the selections' views are, as ``clipsift select`` wrote them (default: the session's schema)."""
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: Literal["shortest", "squash", "longest"] = "shortest"
    """How images are resized to the student's size (open_clip's inference transform)."""
    output: OutputRef | None = None
    """Default: ``<scores>_eval`` beside the score table."""
    spark: SparkSettings = field(default_factory=SparkSettings)

    def validate(self, key: str = "") -> None:
        self.scores.validate(join_key(key, "scores"))
        self.pool.validate(join_key(key, "pool"))
        if not self.selections:
            raise ConfigError(join_key(key, "selections"), "list at least one selection (name, and view if needed)")
        names: list[str] = []
        for i, s in enumerate(self.selections):
            s.validate(join_key(key, f"selections[{i}]"))
            if s.name in names:
                raise ConfigError(join_key(key, f"selections[{i}].name"), f"'{s.name}' is used twice")
            names.append(s.name)
        self.zero_shot.validate(join_key(key, "zero_shot"))
        self.student.validate(join_key(key, "student"))
        self.train.validate(join_key(key, "train"))
        self.retrieval.validate(join_key(key, "retrieval"))
        if self.view_prefix and not re.match(r"^[A-Za-z0-9_]*$", self.view_prefix):
            raise ConfigError(join_key(key, "view_prefix"), "use letters, digits and _ only")
        if self.view_schema is not None and not TABLE_NAME.match(self.view_schema):
            raise ConfigError(join_key(key, "view_schema"), f"'{self.view_schema}' is not a [catalog.]schema name")
        if self.output is not None:
            self.output.validate(join_key(key, "output"))
            if self.output.format != "delta":
                raise ConfigError(join_key(key, "output.format"), "the eval table is always Delta; remove the key")

    def view_of(self, selection: EvalSelection) -> str:
        """The view (or table) of a selection's uids."""
        if selection.view is not None:
            return selection.view
        name = f"`{self.view_prefix}{selection.name}`"
        if self.view_schema:
            return ".".join(f"`{p}`" for p in self.view_schema.split(".")) + "." + name
        return name
