"""``clipsift score``: embeddings in, one Delta table of per-row scores out.

Reads:  the pool (DataComp shards ``<shard>.parquet`` + ``<shard>.npz``, or a Delta/Parquet table of
        uid + embedding arrays) and the NormSim target files.
Writes: the score table (``output``; Delta, partitioned by ``run_id``; this run's partition is
        replaced atomically), the runs table ``<output>_runs`` (one row per run: config, lineage,
        row counts by status, timings) and, with ``baselines.dedup_threshold``, the duplicates table
        ``<output>_duplicates`` (uid -> the uid kept of its near-duplicate group, similarity).

Every input row appears exactly once, with ``status`` ``ok`` and its scores, or another status and
the reason in ``error``. The scores are the steps of :data:`STAGES`, one row each: its config, columns,
lineage and transform.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import clipsift
from clipsift.jobs import io
from clipsift.jobs.baselines import (
    CAPTION_COLUMNS,
    CLUSTER_COLUMNS,
    DEDUP_COLUMNS,
    IMAGE_BASED_COLUMNS,
    centroid_handle,
    dedup_groups,
    fit_kmeans,
    target_clusters,
    with_caption_filters,
    with_clusters,
    with_image_based,
)
from clipsift.jobs.config import ConfigError, NormSimConfig, ScoreConfig, TargetConfig, scores_basis, to_dict
from clipsift.jobs.normsim2d import normsim2_dynamic_survival
from clipsift.jobs.session import Progress, failpoint, job_description, job_main
from clipsift.jobs.transforms import (
    normsim_column,
    with_checked_embeddings,
    with_clip_score,
    with_duplicate_uids,
    with_lineage,
    with_negclip,
    with_normsim,
    with_sas,
    with_sds,
)
from clipsift.udfs.baselines import CaptionResources
from clipsift.udfs.clipselect import AdapterWeights
from clipsift.udfs.kernels import second_moment
from clipsift.udfs.models import first_line
from clipsift.udfs.schemas import METADATA_COLUMNS, STATUS
from clipsift.udfs.score import NEGCLIP_COLUMNS, TargetHandle

NORMSIM2D_COLUMN = "normsim2d_survived"


@dataclass
class Pass:
    """One score run as its stages see it: the config, the pool's ok rows, and what earlier stages left."""

    spark: SparkSession
    cfg: ScoreConfig
    dim: int
    ok: DataFrame
    """The ok rows with their (normalised) embeddings, before any score."""
    n_ok: int
    targets: list[io.Target]
    handles: list[TargetHandle]
    keep_embeddings: bool = False
    """Set by the job before each stage: a later stage still reads ``image_emb`` / ``text_emb``."""
    centroids: TargetHandle | None = None
    weights: AdapterWeights | None = None
    adapters: dict[str, object] | None = None
    """Where the clipselect adapters came from (lineage)."""


@dataclass(frozen=True)
class Stage:
    """One step of the score job. Its columns, lineage and place in the run are declared here, nowhere else."""

    name: str
    enabled: Callable[[ScoreConfig], bool]
    """Whether the step runs (it never runs on a pool without ok rows)."""
    columns: Callable[[ScoreConfig], dict[str, str]]
    """Output column -> Spark SQL type: the table has them when the step is enabled (rows it does not score get
    nulls of that type)."""
    apply: Callable[[DataFrame, Pass], DataFrame]
    """The ok rows -> the same rows with the step's columns (transforms, plus the step's own Spark actions)."""
    lineage_ddl: str = ""
    """Fields the step adds to every row's ``lineage`` struct (``name: type, ...``, Spark DDL)."""
    lineage: Callable[[Pass], dict[str, object]] = lambda p: {}
    """Their values, taken after every step has run."""
    reads_embeddings: bool = True
    """Whether the step reads ``image_emb`` / ``text_emb`` (they are dropped after the last one that does)."""
    always_in_table: bool = False
    """The columns are in every run's table, null when the step is disabled (negCLIPLoss, which most selections
    read)."""


def _apply_clip_score(df: DataFrame, p: Pass) -> DataFrame:
    return df.transform(with_clip_score, dim=p.dim)


def _normsim_columns(cfg: ScoreConfig) -> dict[str, str]:
    return {normsim_column(t.name, n): "double" for t in cfg.normsim.targets for n in cfg.normsim.norms}


def _apply_normsim(df: DataFrame, p: Pass) -> DataFrame:
    n = p.cfg.normsim
    return df.transform(
        with_normsim, targets=p.handles, norms=n.norms, dim=p.dim, signed=n.signed_inf, block_size=n.block_size,
        device=n.device, precision=n.precision,
    )  # fmt: skip


def _targets_lineage(targets: Sequence[io.Target]) -> list[dict[str, object]]:
    return [{"name": t.name, "sha256": t.sha256, "rows": int(t.matrix.shape[0])} for t in targets]


def _caption_filters_enabled(cfg: ScoreConfig) -> bool:
    b = cfg.baselines
    return b.basic or b.text_based or b.image_based_target is not None


def _caption_resources(cfg: ScoreConfig) -> CaptionResources:
    b = cfg.baselines
    return CaptionResources(b.langid_model, b.wordnet_dir, b.imagenet21k_synsets)


def _apply_caption_filters(df: DataFrame, p: Pass) -> DataFrame:
    resources = _caption_resources(p.cfg)
    return df.transform(with_caption_filters, text_based=p.cfg.baselines.text_based, resources=resources)


def _baselines_lineage(p: Pass) -> dict[str, object]:
    """The baselines' settings and the identity of the models they use (language id, WordNet)."""
    b = p.cfg.baselines
    out: dict[str, object] = {"config": to_dict(b), "kmeans_clusters": p.centroids.rows if p.centroids else None}
    if _caption_filters_enabled(p.cfg):
        from clipsift.udfs.langid import langid_identity

        out["langid"] = langid_identity(b.langid_model)
    if b.text_based:
        from clipsift.udfs.wordnet import wordnet_identity

        out["wordnet"] = wordnet_identity(b.wordnet_dir, b.imagenet21k_synsets)
    return {"baselines": json.dumps(out, sort_keys=True)}


def _apply_clusters(df: DataFrame, p: Pass) -> DataFrame:
    """k-means of the ok rows' images (fitted here, on the driver's request), then each row's nearest centroid."""
    cfg = p.cfg
    k_bytes = min(cfg.baselines.kmeans.clusters, p.n_ok) * p.dim * 4
    if k_bytes > cfg.normsim.closure_max_mb * (1 << 20) and cfg.normsim.staging_dir is None:
        raise ConfigError(
            "normsim.staging_dir",
            f"the k-means centroids will take {k_bytes >> 20} MiB, over normsim.closure_max_mb; set "
            "normsim.staging_dir to a folder every executor can read (they are staged there like a target)",
        )
    fitted = fit_kmeans(p.ok, cfg.baselines.kmeans, p.n_ok)
    p.centroids = centroid_handle(fitted, cfg.normsim.closure_max_mb, cfg.normsim.staging_dir)
    return df.transform(with_clusters, centroids=p.centroids, dim=p.dim)


def _apply_image_based(df: DataFrame, p: Pass) -> DataFrame:
    assert p.centroids is not None  # the clusters stage ran: image_based_target needs clusters
    target = next(h for h in p.handles if h.name == p.cfg.baselines.image_based_target)
    return df.transform(with_image_based, clusters=target_clusters(p.spark, target, p.centroids))


def _apply_sas(df: DataFrame, p: Pass) -> DataFrame:
    assert p.weights is not None  # loaded with the targets, before the pool is checked and counted
    return df.transform(with_sas, weights=p.weights, prompts=None)


def _apply_negclip(df: DataFrame, p: Pass) -> DataFrame:
    """negCLIPLoss columns: in place on DataComp shards grouped by shard (each shard is one task since the
    read), else through a shuffle that gives every group a task of its own. It runs before the stages that
    shuffle (SDS, dedup), so DataComp shards are scored in the tasks that read them."""
    cfg = p.cfg
    n_groups = max(1, math.ceil(p.n_ok / cfg.negclip.group_rows))
    aligned = cfg.negclip.grouping == "shard" and cfg.input.kind == "datacomp"
    keys = None
    if not aligned:
        if cfg.negclip.grouping == "shard":
            groups = sorted(r["source"] for r in p.ok.select("source").distinct().collect())  # one per shard
        else:
            groups = [str(i) for i in range(n_groups)]
        keys = one_partition_keys(p.spark, groups)
    return df.transform(
        with_negclip, cfg=cfg.negclip, dim=p.dim, n_groups=n_groups, aligned=aligned, partition_keys=keys,
        keep_embeddings=p.keep_embeddings,
    )  # fmt: skip


def _negclip_lineage(p: Pass) -> dict[str, object]:
    n = p.cfg.negclip
    return {"tau": n.tau, "batch_size": n.batch_size, "rounds": n.rounds, "seed": n.seed, "grouping": n.grouping}


def _clipselect_lineage(p: Pass) -> dict[str, object]:
    return {"clipselect": json.dumps(p.adapters, sort_keys=True)} if p.adapters else {}


def _apply_sds(df: DataFrame, p: Pass) -> DataFrame:
    assert p.weights is not None  # the sas stage ran
    return df.transform(with_sds, weights=p.weights, k=p.cfg.clipselect.k, group="image_cluster", key="uid")


def _apply_dedup(df: DataFrame, p: Pass) -> DataFrame:
    b = p.cfg.baselines
    assert b.dedup_threshold is not None
    duplicates = dedup_groups(df, rank=b.dedup_rank, threshold=b.dedup_threshold, dim=p.dim)
    return df.join(duplicates, on="uid", how="left")


def _apply_normsim2d(df: DataFrame, p: Pass) -> DataFrame:
    ok = p.ok.select("uid", "image_emb", "text_emb")
    survived = normsim2_dynamic_survival(ok, cfg=p.cfg.normsim2_dynamic, dim=p.dim, n_pool=p.n_ok)
    return df.join(survived, on="uid", how="left")


#: The score job's steps, in the order they run; the output columns and the lineage struct follow this order.
#: To add a score: a kernel in ``udfs/kernels``, a transform, a config section, and one row here.
STAGES: tuple[Stage, ...] = (
    Stage("clip_score", lambda cfg: True, lambda cfg: {"clip_score": "double"}, _apply_clip_score),
    Stage(
        "normsim", lambda cfg: bool(cfg.normsim.targets), _normsim_columns, _apply_normsim,
        lineage_ddl="targets: array<struct<name: string, sha256: string, rows: bigint>>",
        lineage=lambda p: {"targets": _targets_lineage(p.targets)},
    ),
    Stage(
        "caption_filters", _caption_filters_enabled, lambda cfg: CAPTION_COLUMNS, _apply_caption_filters,
        lineage_ddl="baselines: string", lineage=_baselines_lineage, reads_embeddings=False,
    ),
    Stage("clusters", lambda cfg: cfg.needs_clusters, lambda cfg: CLUSTER_COLUMNS, _apply_clusters),
    Stage(
        "image_based", lambda cfg: cfg.baselines.image_based_target is not None, lambda cfg: IMAGE_BASED_COLUMNS,
        _apply_image_based, reads_embeddings=False,
    ),
    Stage(
        "sas", lambda cfg: cfg.clipselect.enabled, lambda cfg: {"sas": "double"}, _apply_sas,
        lineage_ddl="clipselect: string", lineage=_clipselect_lineage,
    ),
    Stage(
        "negclip", lambda cfg: cfg.negclip.enabled, lambda cfg: dict.fromkeys(NEGCLIP_COLUMNS, "double"),
        _apply_negclip, lineage=_negclip_lineage, always_in_table=True,
        lineage_ddl="tau: double, batch_size: int, rounds: int, seed: bigint, grouping: string",
    ),
    Stage("sds", lambda cfg: cfg.clipselect.enabled, lambda cfg: {"sds": "double"}, _apply_sds),
    Stage(
        "dedup", lambda cfg: cfg.baselines.dedup_threshold is not None, lambda cfg: DEDUP_COLUMNS, _apply_dedup
    ),
    Stage(
        "normsim2_dynamic", lambda cfg: cfg.normsim2_dynamic.enabled, lambda cfg: {NORMSIM2D_COLUMN: "int"},
        _apply_normsim2d, reads_embeddings=False,
    ),
)  # fmt: skip

#: The ``lineage`` struct of every scored row: the teacher, then each stage's fields, then the code version.
LINEAGE_DDL = "struct<teacher: string, normalized: boolean, {}, code_version: string>".format(
    ", ".join(stage.lineage_ddl for stage in STAGES if stage.lineage_ddl)
)


def output_columns(cfg: ScoreConfig) -> dict[str, str]:
    """The score columns of a run with ``cfg`` (name -> Spark SQL type), in table order."""
    in_table = [stage for stage in STAGES if stage.enabled(cfg) or stage.always_in_table]
    return {name: ddl for stage in in_table for name, ddl in stage.columns(cfg).items()}


@dataclass(frozen=True)
class ScoreResult:
    """What a score run did."""

    run_id: str
    rows_in: int
    rows_out: int
    by_status: dict[str, int]
    seconds: float


def run(spark: SparkSession, cfg: ScoreConfig) -> ScoreResult:
    """Score the pool of ``cfg.input`` and write this run's rows of ``cfg.output``."""
    started = time.time()
    progress = Progress(spark, "clipsift score")
    io.ensure_schema(spark, cfg.output)
    with progress.step("read and check the pool") as step:
        scored = _score(io.read_pool(spark, cfg.input), cfg)
        step["rows"] = scored.rows_in
    run_id, rows_in, lineage = scored.run_id, scored.rows_in, scored.lineage
    failpoint("score:before-write")
    with progress.step(f"score and write run {run_id}") as step:
        io.replace_partition(scored.frame, cfg.output, "run_id", run_id)
        step["rows"] = rows_in
    failpoint("score:committed")  # the scores are committed, the runs row is not written yet
    scored.checked.unpersist()

    written = io.read_table_ref(spark, cfg.output).where(F.col("run_id") == run_id)
    by_status = {r["status"]: int(r["count"]) for r in written.groupBy("status").count().collect()}
    rows_out = sum(by_status.values())
    if cfg.baselines.dedup_threshold is not None:
        # uid -> the representative kept of its near-duplicate group, one partition per run.
        duplicates = written.where(~F.col("dedup_kept")).select(
            "uid", F.col("dedup_group").alias("kept_uid"), F.col("dedup_similarity").alias("similarity"),
            "image_cluster", "run_id",
        )  # fmt: skip
        io.replace_partition(duplicates, io.sibling(cfg.output, "duplicates"), "run_id", run_id)
    seconds = time.time() - started
    io.record_run(
        spark, cfg.output, run_id=run_id, started_at=scored.started_at, seconds=seconds, input_label=cfg.input.label,
        rows_in=rows_in, by_status=by_status, config=to_dict(cfg), lineage=lineage,
    )  # fmt: skip
    if rows_out != rows_in:
        raise RuntimeError(f"run {run_id}: {rows_in} rows read but {rows_out} written; the table was left as written")
    return ScoreResult(run_id=run_id, rows_in=rows_in, rows_out=rows_out, by_status=by_status, seconds=seconds)


def score_frame(df: DataFrame, cfg: ScoreConfig) -> DataFrame:
    """The score columns of ``cfg`` added to a DataFrame of embeddings in hand: the rows ``clipsift score`` would
    write, lineage and ``run_id`` included, but nothing is written.

    ``df`` holds a uid and the image and caption embeddings (arrays of floats, or float16 bytes), named as
    ``cfg.input`` names them (``uid_col``, ``image_col``, ``text_col``; ``shard_col`` and ``metadata_cols`` when
    present); ``cfg.input``'s path or table and ``cfg.output`` are not used. NormSim targets and adapters named
    in ``cfg`` are read. The checked input is persisted for the scoring; every input row comes out once, with a
    ``status``. Actions run here (row counts, k-means when configured), as they do in the job.
    """
    return _score(io.as_pool(df, cfg.input), cfg).frame


@dataclass(frozen=True)
class _Scored:
    """The scored rows of a run, not yet written, and what the job records about them."""

    frame: DataFrame
    run_id: str
    rows_in: int
    lineage: dict[str, object]
    checked: DataFrame
    """The persisted, checked input the frame is computed from (unpersist after writing)."""
    started_at: datetime


def _score(raw: DataFrame, cfg: ScoreConfig) -> _Scored:
    """Every row of ``raw`` (pool schema) with its status and the scores of ``cfg``, in the output's columns."""
    spark = raw.sparkSession
    started_at = datetime.now(timezone.utc)
    targets = [_load_target(i, t) for i, t in enumerate(cfg.normsim.targets)]
    code_version = clipsift.__version__
    run_id = cfg.run_id or derive_run_id(cfg, {"targets": _targets_lineage(targets), "code_version": code_version})

    dim = cfg.input.expected_dim or io.detect_dim(raw, hint="check input.image_col (and input.model), or set input.dim")
    for i, t in enumerate(targets):
        if t.matrix.shape[1] != dim:
            message = f"target '{t.name}' has dimension {t.matrix.shape[1]}, the pool {dim}"
            raise ConfigError(f"normsim.targets[{i}].path", message)
    handles = [_handle(t, cfg.normsim, rows_needed=t.name == cfg.baselines.image_based_target) for t in targets]
    weights, adapters = _clipselect_adapters(cfg, dim) if cfg.clipselect.enabled else (None, None)

    checked = raw.transform(with_checked_embeddings, dim=dim).persist(StorageLevel.MEMORY_AND_DISK)
    rows_in = checked.count()
    flagged = checked.transform(with_duplicate_uids)
    ok = flagged.where(F.col("status") == STATUS.OK)
    n_ok = ok.count()
    _check_dedup_rank(cfg, ok.columns)

    p = Pass(
        spark=spark, cfg=cfg, dim=dim, ok=ok, n_ok=n_ok, targets=targets, handles=handles, weights=weights,
        adapters=adapters,
    )  # fmt: skip
    steps = [stage for stage in STAGES if stage.enabled(cfg)] if n_ok else []
    last_reader = max((i for i, stage in enumerate(steps) if stage.reads_embeddings), default=-1)
    scored = ok
    for i, stage in enumerate(steps):
        p.keep_embeddings = i < last_reader
        with job_description(spark, f"clipsift score {run_id}: {stage.name}"):
            scored = stage.apply(scored, p)
        if i == last_reader:
            scored = scored.drop("image_emb", "text_emb")
    scored = scored.drop("image_emb", "text_emb")

    lineage = {"teacher": _teacher(cfg), "normalized": True}
    for stage in STAGES:
        lineage.update(stage.lineage(p))
    lineage["code_version"] = code_version
    rest = flagged.where(F.col("status") != STATUS.OK).drop("image_emb", "text_emb")
    columns = output_columns(cfg)
    out = (
        scored.unionByName(rest, allowMissingColumns=True)
        .transform(_with_missing_columns, columns=columns)
        .transform(with_lineage, run_id=run_id, lineage=lineage, ddl=LINEAGE_DDL)
        .withColumn("scored_at", F.lit(started_at).cast("timestamp"))
        .select(*_ordered(list(columns)))
    )
    return _Scored(frame=out, run_id=run_id, rows_in=rows_in, lineage=lineage, checked=checked, started_at=started_at)


def _load_target(index: int, target: TargetConfig) -> io.Target:
    """A NormSim target's file, loaded; any failure names its key, ``normsim.targets[<index>].path``."""
    try:
        return io.load_target(target.name, target.path, target.key)
    except Exception as exc:  # missing, refused as a pickle, corrupt, not 2-D, torch missing, a store's error
        raise ConfigError(f"normsim.targets[{index}].path", first_line(exc, 500)) from exc


def _check_dedup_rank(cfg: ScoreConfig, pool_columns: Sequence[str]) -> None:
    """``baselines.dedup_rank`` must be a column that exists when the dedup stage runs."""
    rank = cfg.baselines.dedup_rank
    if cfg.baselines.dedup_threshold is None:
        return
    before = [name for stage in STAGES[: [s.name for s in STAGES].index("dedup")] for name in stage.columns(cfg)]
    if rank not in (*pool_columns, *before):
        raise ConfigError("baselines.dedup_rank", f"use clip_score, negclip_loss or a NormSim column; not '{rank}'")


def _clipselect_adapters(cfg: ScoreConfig, dim: int) -> tuple[AdapterWeights, dict[str, object]]:
    """The adapters of the label-free SAS/SDS, loaded from ``clipselect.adapters`` (else identity), and where they
    came from."""
    if cfg.clipselect.adapters is None:
        return AdapterWeights.identity(dim), {"k": cfg.clipselect.k, "adapters": "identity"}
    try:
        from clipsift.udfs.adapters import load_adapters
    except ImportError as exc:
        raise ConfigError("clipselect.adapters", "loading adapters needs torch: pip install 'clipsift[gpu]'") from exc

    folder = cfg.clipselect.adapters
    try:
        pair, provenance = load_adapters(folder)
    except (OSError, ValueError) as exc:
        why = first_line(exc, 500)
        raise ConfigError("clipselect.adapters", f"cannot load adapters from '{folder}': {why}") from exc
    if pair.dim != dim:
        raise ConfigError("clipselect.adapters", f"the adapters have dimension {pair.dim}, the pool {dim}")
    info = {"k": cfg.clipselect.k, "adapters": folder, "weights_sha256": provenance.get("weights_sha256")}
    return AdapterWeights.from_pair(pair), info


def one_partition_keys(spark: SparkSession, groups: Sequence[str]) -> dict[str, int] | None:
    """For each group, a long key that ``repartition(len(groups), key)`` sends to a partition of its own.

    Spark places a row in partition ``pmod(hash(key), n)``; the same expression, evaluated by Spark on
    candidate keys, finds one key per partition. None when some partition gets no candidate.
    """
    n = len(groups)
    if n == 0:
        return None
    probe = spark.range(0, 64 * n).select("id", F.pmod(F.hash("id"), F.lit(n)).alias("p"))
    first = {int(r["p"]): int(r["k"]) for r in probe.groupBy("p").agg(F.min("id").alias("k")).collect()}
    if len(first) < n:
        return None
    return {g: first[i] for i, g in enumerate(groups)}


def derive_run_id(cfg: ScoreConfig, lineage: dict[str, object]) -> str:
    """A run id from everything that determines the scores: same config and targets, same id.

    The basis is the whole config except the fields marked as not changing scores (output, parallelism, block
    sizes, paths of targets whose contents are hashed instead), so a new config field changes the id by default.
    """
    basis = {"config": scores_basis(cfg), "targets": lineage["targets"], "code_version": lineage["code_version"]}
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()
    return f"run-{digest[:16]}"


def _teacher(cfg: ScoreConfig) -> str:
    """The embeddings' teacher, as lineage records it."""
    if cfg.input.kind == "datacomp":
        return cfg.input.arch
    return f"table:{cfg.input.label}" + (f"#model_id={cfg.input.model}" if cfg.input.model else "")


def _handle(target: io.Target, cfg: NormSimConfig, rows_needed: bool = False) -> TargetHandle:
    """The target for the UDFs. NormSim₂ alone needs only the second moment, so without NormSim∞ (or the
    image-based baseline) no rows travel; else they are shipped (:func:`clipsift.jobs.io.ship_matrix`)."""
    moment = second_moment(target.matrix)
    if not rows_needed and "inf" not in cfg.norms:
        return TargetHandle(target.name, target.sha256, int(target.matrix.shape[0]), moment)
    return io.ship_matrix(
        target.name, target.matrix, target.sha256, moment=moment, closure_max_mb=cfg.closure_max_mb,
        staging_dir=cfg.staging_dir,
    )  # fmt: skip


def _ordered(score_columns: Sequence[str]) -> list[str]:
    return [
        "uid", "source", "source_row", "status", "error", *score_columns,
        "image_norm", "text_norm", *METADATA_COLUMNS, "lineage", "scored_at", "run_id",
    ]  # fmt: skip


def _with_missing_columns(df: DataFrame, *, columns: dict[str, str]) -> DataFrame:
    for name, ddl in columns.items():
        if name not in df.columns:
            df = df.withColumn(name, F.lit(None).cast(ddl))
    return df


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift score --config score.yaml [--set key=value ...]``; 2 on a bad config or path."""
    return job_main("clipsift score", ScoreConfig, run, _summary, argv)


def _summary(result: ScoreResult) -> str:
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(result.by_status.items()))
    return f"clipsift score: run {result.run_id}: {result.rows_in} rows in, {result.rows_out} out ({statuses})"


if __name__ == "__main__":
    sys.exit(main())
