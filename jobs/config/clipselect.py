"""``clipsift clipselect``: :class:`ClipSelectConfig` and its sections (ALGORITHMS.md §4)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipsift.jobs.config.base import (
    ConfigError,
    JobConfig,
    OutputRef,
    Section,
    SparkSettings,
    TableRef,
    check_fraction,
    check_positive,
    join_key,
)
from clipsift.jobs.config.embed import ModelConfig


@dataclass(frozen=True)
class ClipSelectInputConfig(TableRef):
    """The embedding table scored by ``clipsift clipselect`` (``clipsift embed`` output or any uid + vector table)."""

    uid_col: str = "uid"
    image_col: str = "image_emb"
    label_col: str | None = "label"
    """Integer class index (label ``i`` is ``classes[i]``); null for the label-free variant (captions + k-means)."""
    text_col: str | None = None
    """Caption embedding column, used (and required) by the label-free variant only."""
    model: str | None = None
    """The ``model_id`` whose rows to score, when the table holds several (``clipsift embed`` output)."""

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.label_col is None and self.text_col is None:
            raise ConfigError(f"{key}.text_col", "the label-free variant (label_col: null) needs the caption column")
        if self.label_col is not None and self.text_col is not None:
            raise ConfigError(f"{key}.text_col", "only used when label_col is null (label-free variant); remove it")


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
        check_positive(f"{key}.epochs", self.epochs)
        check_positive(f"{key}.batch_size", self.batch_size)
        if not (self.lr > 0 and self.temperature > 0):
            raise ConfigError(f"{key}.lr", "lr and temperature must be positive")


@dataclass(frozen=True)
class ClipSelectConfig(JobConfig):
    """``clipsift clipselect``: CLIP-powered selection scores (SAS, SDS, criterion) into a Delta table."""

    input: ClipSelectInputConfig
    output: OutputRef
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
        self.input.validate(join_key(key, "input"))
        self.output.validate(join_key(key, "output"))
        if self.output.format != "delta":
            raise ConfigError(join_key(key, "output.format"), "scores are always written as Delta; remove the key")
        self.model.validate(join_key(key, "model"))
        self.adapters.validate(join_key(key, "adapters"))
        if self.labelled:
            if not self.classes:
                raise ConfigError(join_key(key, "classes"), "give the class names (label i is classes[i])")
            if self.adapters.save_path is None:
                raise ConfigError(join_key(key, "adapters.save_path"), "give a folder for the trained adapters")
        if not self.prompt_templates:
            raise ConfigError(join_key(key, "prompt_templates"), "give at least one template, e.g. ['A photo of a {}']")
        for i, template in enumerate(self.prompt_templates):
            if "{}" not in template:
                raise ConfigError(join_key(key, f"prompt_templates[{i}]"), "must contain '{}' for the class name")
        if self.k < 2:
            raise ConfigError(join_key(key, "k"), f"must be an integer >= 2, got {self.k}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(join_key(key, "lam"), f"must be a finite number >= 0, got {self.lam}")
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ConfigError(join_key(key, "beta"), f"must be a finite number > 0, got {self.beta}")
        check_positive(join_key(key, "pseudo_classes"), self.pseudo_classes)
        check_positive(join_key(key, "kmeans_iterations"), self.kmeans_iterations)
        if self.optimiser_max_rows < 0:
            raise ConfigError(join_key(key, "optimiser_max_rows"), "must be >= 0 (0 turns the optimiser off)")
        for i, r in enumerate(self.ratios):
            check_fraction(join_key(key, f"ratios[{i}]"), r)
        percents = [round(r * 100) for r in self.ratios]
        if len(set(percents)) != len(percents):
            raise ConfigError(join_key(key, "ratios"), "two ratios give the same integer percent column")
        if self.run_id is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.run_id):
            raise ConfigError(join_key(key, "run_id"), "use 1-64 letters, digits, '_', '.' or '-'")
