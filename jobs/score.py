"""``clipsift score``: embeddings in, one Delta table of per-row scores out.

Reads:  the pool (DataComp shards ``<shard>.parquet`` + ``<shard>.npz``, or a Delta/Parquet table of
        uid + embedding arrays) and the NormSim target files.
Writes: the score table (``output``; Delta, partitioned by ``run_id``; this run's partition is
        replaced atomically), the runs table ``<output>_runs`` (one row per run: config, lineage,
        row counts by status, timings) and, with ``baselines.dedup_threshold``, the duplicates table
        ``<output>_duplicates`` (uid -> the uid kept of its near-duplicate group, similarity).

Every input row appears exactly once, with ``status`` ``ok`` and its scores, or another status and
the reason in ``error``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
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
    centroid_handle,
    dedup_groups,
    fit_kmeans,
    target_clusters,
    with_caption_filters,
    with_clusters,
    with_image_based,
)
from clipsift.jobs.config import ConfigError, NormSimConfig, ScoreConfig, from_argv, scores_basis, to_dict
from clipsift.jobs.normsim2d import normsim2_dynamic_survival
from clipsift.jobs.schemas import STATUS
from clipsift.jobs.session import get_spark, job_description
from clipsift.jobs.transforms import (
    BASE_SCORE_COLUMNS,
    CLIPSELECT_COLUMNS,
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
from clipsift.udfs.clipselect import AdapterWeights
from clipsift.udfs.ingest import METADATA_COLUMNS
from clipsift.udfs.kernels import second_moment
from clipsift.udfs.score import TargetHandle

NORMSIM2D_COLUMN = "normsim2d_survived"


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
    scored = _score(io.read_pool(spark, cfg.input), cfg)
    run_id, rows_in, lineage = scored.run_id, scored.rows_in, scored.lineage
    io.replace_partition(scored.frame, cfg.output, "run_id", run_id)
    scored.checked.unpersist()

    written = io.read_delta(spark, cfg.output).where(F.col("run_id") == run_id)
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
    targets = [io.load_target(t.name, t.path, t.key) for t in cfg.normsim.targets]
    lineage = _lineage(cfg, targets)
    run_id = cfg.run_id or derive_run_id(cfg, lineage)

    dim = cfg.input.expected_dim or io.detect_dim(raw, hint="set input.dim or check input.image_col")
    for t in targets:
        if t.matrix.shape[1] != dim:
            raise ConfigError(f"normsim.targets[{t.name}]", f"target has dimension {t.matrix.shape[1]}, the pool {dim}")
    handles = [_handle(t, cfg.normsim, rows_needed=t.name == cfg.baselines.image_based_target) for t in targets]

    checked = raw.transform(with_checked_embeddings, dim=dim).persist(StorageLevel.MEMORY_AND_DISK)
    rows_in = checked.count()
    flagged = checked.transform(with_duplicate_uids)
    ok = flagged.where(F.col("status") == STATUS.OK)
    n_ok = ok.count()

    scored = ok.transform(with_clip_score, dim=dim).transform(
        with_normsim,
        targets=handles,
        norms=cfg.normsim.norms,
        dim=dim,
        signed=cfg.normsim.signed_inf,
        block_size=cfg.normsim.block_size,
    )
    baselines = cfg.baselines
    if baselines.basic or baselines.text_based or baselines.image_based_target:
        scored = scored.transform(with_caption_filters, text_based=baselines.text_based)
    if baselines.dedup_threshold is not None and baselines.dedup_rank not in scored.columns:
        raise ConfigError("baselines.dedup_rank", f"use clip_score or a NormSim column; not '{baselines.dedup_rank}'")
    if cfg.needs_clusters and n_ok:
        k_bytes = min(baselines.kmeans.clusters, n_ok) * dim * 4
        if k_bytes > cfg.normsim.closure_max_mb * (1 << 20) and cfg.normsim.staging_dir is None:
            raise ConfigError(
                "normsim.staging_dir",
                f"the k-means centroids will take {k_bytes >> 20} MiB, over normsim.closure_max_mb; set "
                "normsim.staging_dir to a folder every executor can read (they are staged there like a target)",
            )
        with job_description(spark, f"clipsift score {run_id}: k-means"):
            fitted = fit_kmeans(ok, baselines.kmeans, n_ok)
            centroids = centroid_handle(fitted, cfg.normsim.closure_max_mb, cfg.normsim.staging_dir)
        lineage["kmeans_clusters"] = centroids.rows
        scored = scored.transform(with_clusters, centroids=centroids, dim=dim)
        if baselines.image_based_target is not None:
            target = next(h for h in handles if h.name == baselines.image_based_target)
            clusters = target_clusters(spark, target, centroids)
            scored = scored.transform(with_image_based, clusters=clusters)
    weights = _clipselect_adapters(cfg, dim, lineage) if cfg.clipselect.enabled and n_ok else None
    if weights is not None:
        scored = scored.transform(with_sas, weights=weights, prompts=None)
    dedup_threshold = baselines.dedup_threshold if baselines.needs_clusters and n_ok else None
    if cfg.negclip.enabled and n_ok:
        # Scored before the shuffles below, so that DataComp shards are scored in the tasks that read them.
        keep = dedup_threshold is not None or weights is not None
        scored = scored.transform(_with_negclip, spark=spark, cfg=cfg, ok=ok, dim=dim, n_ok=n_ok, keep_embeddings=keep)
    if weights is not None:
        scored = scored.transform(with_sds, weights=weights, k=cfg.clipselect.k, group="image_cluster", key="uid")
    if dedup_threshold is not None:
        duplicates = dedup_groups(scored, rank=baselines.dedup_rank, threshold=dedup_threshold, dim=dim)
        scored = scored.join(duplicates, on="uid", how="left")
    scored = scored.drop("image_emb", "text_emb")
    if cfg.normsim2_dynamic.enabled and n_ok:
        survived = normsim2_dynamic_survival(
            ok.select("uid", "image_emb", "text_emb"), cfg=cfg.normsim2_dynamic, dim=dim, n_pool=n_ok
        )
        scored = scored.join(survived, on="uid", how="left")

    lineage["baselines"] = json.dumps(_baselines_lineage(cfg, lineage.pop("kmeans_clusters", None)), sort_keys=True)
    rest = flagged.where(F.col("status") != STATUS.OK).drop("image_emb", "text_emb")
    columns = _output_columns(cfg)
    out = (
        scored.unionByName(rest, allowMissingColumns=True)
        .transform(_with_missing_columns, columns=columns)
        .transform(with_lineage, run_id=run_id, lineage=lineage)
        .withColumn("scored_at", F.lit(started_at).cast("timestamp"))
        .select(*_ordered(columns))
    )
    return _Scored(frame=out, run_id=run_id, rows_in=rows_in, lineage=lineage, checked=checked, started_at=started_at)


def _with_negclip(
    scored: DataFrame,
    *,
    spark: SparkSession,
    cfg: ScoreConfig,
    ok: DataFrame,
    dim: int,
    n_ok: int,
    keep_embeddings: bool,
) -> DataFrame:
    """negCLIPLoss columns on the scored rows: in place on DataComp shards grouped by shard (each shard is one
    task since the read), else through a shuffle that gives every group a task of its own."""
    n_groups = max(1, math.ceil(n_ok / cfg.negclip.group_rows))
    aligned = cfg.negclip.grouping == "shard" and cfg.input.kind == "datacomp"
    keys = None
    if not aligned:
        if cfg.negclip.grouping == "shard":
            groups = sorted(r["source"] for r in ok.select("source").distinct().collect())  # one per shard
        else:
            groups = [str(i) for i in range(n_groups)]
        keys = one_partition_keys(spark, groups)
    return scored.transform(
        with_negclip, cfg=cfg.negclip, dim=dim, n_groups=n_groups, aligned=aligned, partition_keys=keys,
        keep_embeddings=keep_embeddings,
    )  # fmt: skip


def _clipselect_adapters(cfg: ScoreConfig, dim: int, lineage: dict[str, object]) -> AdapterWeights:
    """The adapters of the label-free SAS/SDS: loaded from ``clipselect.adapters``, else identity."""
    if cfg.clipselect.adapters is None:
        lineage["clipselect"] = json.dumps({"k": cfg.clipselect.k, "adapters": "identity"})
        return AdapterWeights.identity(dim)
    try:
        from clipsift.udfs.adapters import load_adapters
    except ImportError as exc:
        raise ConfigError("clipselect.adapters", "loading adapters needs torch: pip install 'clipsift[gpu]'") from exc

    folder = cfg.clipselect.adapters
    try:
        pair, provenance = load_adapters(folder)
    except (OSError, ValueError) as exc:
        raise ConfigError("clipselect.adapters", f"cannot load adapters from '{folder}': {exc}") from exc
    if pair.dim != dim:
        raise ConfigError("clipselect.adapters", f"the adapters have dimension {pair.dim}, the pool {dim}")
    info = {"k": cfg.clipselect.k, "adapters": folder, "weights_sha256": provenance.get("weights_sha256")}
    lineage["clipselect"] = json.dumps(info, sort_keys=True)
    return AdapterWeights.from_pair(pair)


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


def _lineage(cfg: ScoreConfig, targets: Sequence[io.Target]) -> dict[str, object]:
    teacher: str
    if cfg.input.kind == "datacomp":
        teacher = cfg.input.arch
    else:
        teacher = f"table:{cfg.input.label}" + (f"#model_id={cfg.input.model}" if cfg.input.model else "")
    return {
        "teacher": teacher,
        "normalized": True,
        "tau": cfg.negclip.tau,
        "batch_size": cfg.negclip.batch_size,
        "rounds": cfg.negclip.rounds,
        "seed": cfg.negclip.seed,
        "grouping": cfg.negclip.grouping,
        "targets": [{"name": t.name, "sha256": t.sha256, "rows": int(t.matrix.shape[0])} for t in targets],
        "code_version": clipsift.__version__,
    }


def _baselines_lineage(cfg: ScoreConfig, kmeans_clusters: object) -> dict[str, object]:
    """The baselines' settings and the identity of the models they use (language id, WordNet)."""
    b = cfg.baselines
    out: dict[str, object] = {"config": to_dict(b), "kmeans_clusters": kmeans_clusters}
    if b.basic or b.text_based or b.image_based_target:
        from clipsift.udfs.langid import langid_identity

        out["langid"] = langid_identity()
    if b.text_based:
        from clipsift.udfs.wordnet import wordnet_identity

        out["wordnet"] = wordnet_identity()
    return out


def _handle(target: io.Target, cfg: NormSimConfig, rows_needed: bool = False) -> TargetHandle:
    """The target for the UDFs: its rows travel in the closure when small, else they are staged; NormSim₂
    alone needs only the second moment, so without NormSim∞ (or the image-based baseline) no rows travel."""
    moment = second_moment(target.matrix)
    small = target.matrix.nbytes <= cfg.closure_max_mb * (1 << 20)
    if not rows_needed and "inf" not in cfg.norms:
        return TargetHandle(target.name, target.sha256, int(target.matrix.shape[0]), moment)
    if small:
        return TargetHandle(target.name, target.sha256, int(target.matrix.shape[0]), moment, matrix=target.matrix)
    if cfg.staging_dir is None:
        raise ConfigError(
            "normsim.staging_dir",
            f"target '{target.name}' is {target.matrix.nbytes >> 20} MiB, over closure_max_mb="
            f"{cfg.closure_max_mb}; set staging_dir to a folder every executor can read, or raise closure_max_mb",
        )
    path = io.stage_target(target, cfg.staging_dir)
    return TargetHandle(target.name, target.sha256, int(target.matrix.shape[0]), moment, path=path)


def _output_columns(cfg: ScoreConfig) -> list[str]:
    cols = list(BASE_SCORE_COLUMNS)
    for t in cfg.normsim.targets:
        cols += [normsim_column(t.name, p) for p in cfg.normsim.norms]
    if cfg.normsim2_dynamic.enabled:
        cols.append(NORMSIM2D_COLUMN)
    b = cfg.baselines
    if b.basic or b.text_based or b.image_based_target:
        cols += CAPTION_COLUMNS
    if cfg.needs_clusters:
        cols += CLUSTER_COLUMNS
    if cfg.clipselect.enabled:
        cols += CLIPSELECT_COLUMNS
    if b.image_based_target:
        cols.append("image_based_filter")
    if b.dedup_threshold is not None:
        cols += DEDUP_COLUMNS
    return cols


#: Types of the score columns that are not double (for the null columns of unscored rows).
_COLUMN_TYPES = {
    NORMSIM2D_COLUMN: "int",
    "image_cluster": "int",
    "caption_lang": "string",
    "dedup_group": "string",
    **dict.fromkeys(
        ("basic_filter", "caption_in21k", "text_based_filter", "caption_prefilter", "image_based_filter", "dedup_kept"),
        "boolean",
    ),
}


def _ordered(score_columns: Sequence[str]) -> list[str]:
    return [
        "uid", "source", "source_row", "status", "error", *score_columns,
        "image_norm", "text_norm", *METADATA_COLUMNS, "lineage", "scored_at", "run_id",
    ]  # fmt: skip


def _with_missing_columns(df: DataFrame, *, columns: Sequence[str]) -> DataFrame:
    for c in columns:
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast(_COLUMN_TYPES.get(c, "double")))
    return df


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift score --config score.yaml [--set key=value ...]``; 2 on a bad config or path."""
    try:
        cfg = from_argv(ScoreConfig, "clipsift score", argv)
        result = run(get_spark(cfg.spark.app_name, cfg.spark.conf), cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"clipsift score: {exc}", file=sys.stderr)
        return 2
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(result.by_status.items()))
    print(f"clipsift score: run {result.run_id}: {result.rows_in} rows in, {result.rows_out} out ({statuses})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
