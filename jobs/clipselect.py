"""``clipsift clipselect``: CLIP-powered selection scores (Yang et al., ICLR 2025; ALGORITHMS.md §4) on Spark.

Reads:  an embedding table (``input``: uid, image embedding and an integer label, or a caption embedding for
        the label-free variant) and the open_clip model (``model``) to embed the class prompts on the driver.
Writes: the adapters (``adapters.save_path``: ``adapters.pt`` + ``provenance.json``), the score table
        (``output``; Delta, partitioned by ``run_id``; this run's partition is replaced atomically) and the runs
        table ``<output>_runs``.

Columns: ``sas`` (cosine of the adapted image and the adapted prompt of its label), ``sds`` (mean Euclidean
distance to the ``k − 1`` nearest adapted images of the same label), ``sas_norm`` / ``sds_norm`` (min-max over
the ok rows, from Spark aggregates), ``clipselect_score`` = ``sas_norm / mean(sas_norm) + lam · sds_norm /
mean(sds_norm)`` (the paper's criterion; its top-k is what the optimiser selects), and, when the ok rows are at
most ``optimiser_max_rows``, ``optimiser_selected_<percent>`` from the paper's STE optimiser run on the driver
(for parity). The scalable selection is ``clipsift select`` ``top_fraction`` on ``clipselect_score``.

Label-free variant (``input.label_col: null``): SAS is the cosine of image and caption embeddings through
identity adapters (nothing is trained: without labels there are no class prompts to align to, and training on
the pairs themselves would fit the captions being judged); SDS is computed within k-means pseudo-classes
(``pseudo_classes``) of the image embeddings, the cluster id is the ``sds_group`` column.

Every input row appears exactly once: ``ok`` with scores, or another status (``null_uid``, ``duplicate_uid``,
``null_embedding``, ``bad_dimension``, ``non_finite_embedding``, ``zero_norm``, ``missing_label``,
``bad_label``) and the reason in ``error``. A singleton class has no neighbour: its ``sds`` is null and its
``sds_norm`` counts as 0 in the criterion.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

import clipsift
from clipsift.jobs import io
from clipsift.jobs.baselines import centroid_handle, fit_kmeans, with_clusters
from clipsift.jobs.config import ClipSelectConfig, KMeansConfig, to_dict
from clipsift.jobs.cutoffs import clipselect_criterion
from clipsift.jobs.embed import model_spec
from clipsift.jobs.session import Progress, job_description, job_main
from clipsift.jobs.transforms import with_duplicate_uids, with_sas, with_sds
from clipsift.udfs.adapters import AdapterPair, apply_text, save_adapters, train_adapters
from clipsift.udfs.clipselect import PACKED_DDL, AdapterWeights, pack_rows_fn, unpack_rows
from clipsift.udfs.ingest import status_fn
from clipsift.udfs.kernels.clipselect import optimise_selection
from clipsift.udfs.models import ClipEncoder, get_model
from clipsift.udfs.schemas import STATUS

SCORE_COLUMNS = ("sas", "sds", "sas_norm", "sds_norm", "clipselect_score")


@dataclass(frozen=True)
class ClipSelectResult:
    """What a clipselect run did."""

    run_id: str
    rows_in: int
    rows_out: int
    by_status: dict[str, int]
    seconds: float
    final_loss: float | None


def run(spark: SparkSession, cfg: ClipSelectConfig) -> ClipSelectResult:
    """Score the rows of ``cfg.input`` and write this run's partition of ``cfg.output``."""
    started = time.time()
    started_at = datetime.now(timezone.utc)
    run_id = cfg.run_id or derive_run_id(cfg)
    progress = Progress(spark, "clipsift clipselect")
    io.ensure_schema(spark, cfg.output)
    with progress.step("read and check the input") as step:
        raw = io.read_labelled_table(spark, cfg.input)
        dim = io.detect_dim(raw, hint="check input.image_col")
        n_classes = len(cfg.classes) if cfg.labelled else None
        checked = (
            raw.withColumn("_rid", F.monotonically_increasing_id())
            .transform(with_status, dim=dim, n_classes=n_classes)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        rows_in = step["rows"] = checked.count()
        ok = checked.where(F.col("status") == STATUS.OK)
        n_ok = ok.count()

    lineage: dict[str, Any] = {"input": cfg.input.label, "model": cfg.model.name, "code_version": clipsift.__version__}
    final_loss: float | None = None
    scored: DataFrame | None = None
    if n_ok:
        if cfg.labelled:
            encoder = get_model(model_spec(cfg.model))
            prompts = class_prompts(encoder, cfg.classes, cfg.prompt_templates)
            losses: list[float] = []
            with job_description(spark, f"clipsift clipselect {run_id}: adapters"):
                pair = train_adapters(
                    epoch_batches(ok, cfg.adapters.batch_size, cfg.adapters.seed, dim),
                    prompts,
                    epochs=cfg.adapters.epochs,
                    lr=cfg.adapters.lr,
                    temperature=cfg.adapters.temperature,
                    seed=cfg.adapters.seed,
                    on_step=lambda _step, loss: losses.append(loss),
                )
            final_loss = losses[-1] if losses else None
            grouped = ok.withColumn("sds_group", F.col("label"))
            prompt_adapted = apply_text(pair, prompts)
        else:
            pair = AdapterPair(dim)  # identity: see the module docstring
            with job_description(spark, f"clipsift clipselect {run_id}: k-means"):
                kmeans = KMeansConfig(
                    clusters=cfg.pseudo_classes, iterations=cfg.kmeans_iterations, seed=cfg.adapters.seed
                )
                centroids = centroid_handle(fit_kmeans(ok, kmeans, n_ok), closure_max_mb=256, staging_dir=None)
            grouped = ok.transform(with_clusters, centroids=centroids, dim=dim).withColumn(
                "sds_group", F.col("image_cluster")
            )
            prompt_adapted = None
        if cfg.adapters.save_path is not None:
            provenance = {
                "model": cfg.model.name, "pretrained": cfg.model.pretrained, "classes": list(cfg.classes),
                "prompt_templates": list(cfg.prompt_templates), "training": to_dict(cfg.adapters),
                "final_loss": final_loss, "input": cfg.input.label, "label_col": cfg.input.label_col, "rows": n_ok,
                "run_id": run_id, "trained": cfg.labelled,
            }  # fmt: skip
            save_adapters(pair, cfg.adapters.save_path, provenance)
        weights = AdapterWeights.from_pair(pair)
        scored = (
            grouped.transform(with_sas, weights=weights, prompts=prompt_adapted)
            .transform(with_sds, weights=weights, k=cfg.k, group="sds_group", key="_rid")
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        criterion = clipselect_criterion(scored, "sas", "sds", cfg.lam, "input")
        scored = (
            scored.withColumn("sas_norm", F.expr(criterion.sas_norm))
            .withColumn("sds_norm", F.expr(criterion.sds_norm))
            .withColumn("clipselect_score", F.expr(criterion.score))
        )
        if cfg.optimiser_max_rows and n_ok <= cfg.optimiser_max_rows:
            with job_description(spark, f"clipsift clipselect {run_id}: optimiser"):
                scored = scored.join(
                    optimiser_columns(spark, scored, cfg.ratios, cfg.lam, cfg.beta), on="_rid", how="left"
                )
        lineage["adapters"] = cfg.adapters.save_path
        lineage["final_loss"] = final_loss

    columns = output_columns(cfg, n_ok)
    rest = checked.where(F.col("status") != STATUS.OK)
    out = rest if scored is None else scored.unionByName(rest, allowMissingColumns=True)
    for c in columns:
        if c not in out.columns:
            out = out.withColumn(c, F.lit(None).cast("boolean" if c.startswith("optimiser_") else "double"))
    if "sds_group" not in out.columns:
        out = out.withColumn("sds_group", F.lit(None).cast("int"))
    out = out.select(
        "uid", "status", "error", "label", F.col("sds_group").cast("int").alias("sds_group"), *columns,
        F.lit(json.dumps(lineage, sort_keys=True)).alias("lineage"),
        F.lit(started_at).cast("timestamp").alias("scored_at"),
        F.lit(run_id).alias("run_id"),
    )  # fmt: skip
    with progress.step(f"score and write run {run_id}") as step:
        io.replace_partition(out, cfg.output, "run_id", run_id)
        step["rows"] = rows_in
    checked.unpersist()
    if scored is not None:
        scored.unpersist()

    written = io.read_table_ref(spark, cfg.output).where(F.col("run_id") == run_id)
    by_status = {r["status"]: int(r["count"]) for r in written.groupBy("status").count().collect()}
    rows_out = sum(by_status.values())
    seconds = time.time() - started
    io.record_run(
        spark, cfg.output, run_id=run_id, started_at=started_at, seconds=seconds, input_label=cfg.input.label,
        rows_in=rows_in, by_status=by_status, config=to_dict(cfg), lineage=lineage,
    )  # fmt: skip
    if rows_out != rows_in:
        raise RuntimeError(f"run {run_id}: {rows_in} rows read but {rows_out} written; the table was left as written")
    return ClipSelectResult(run_id, rows_in, rows_out, by_status, seconds, final_loss)


def class_prompts(encoder: ClipEncoder, classes: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """``(C, d)`` unit prompt features: each template's class prompts embedded, averaged over templates, normalised."""
    feats = np.stack([encoder.encode_texts([t.format(c) for c in classes]) for t in templates]).astype(np.float64)
    if len(templates) == 1:
        single: np.ndarray = feats[0].astype(np.float32)
        return single
    mean = feats.mean(axis=0)
    out: np.ndarray = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
    return out


def derive_run_id(cfg: ClipSelectConfig) -> str:
    """A run id from the settings that determine the scores."""
    basis = {k: v for k, v in to_dict(cfg).items() if k not in ("spark", "run_id", "output")}
    basis["code_version"] = clipsift.__version__
    return "clipselect-" + hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def with_status(df: DataFrame, *, dim: int, n_classes: int | None) -> DataFrame:
    """Add ``status`` and ``error``; later ``ok`` rows of a repeated uid (by ``_rid``) become ``duplicate_uid``.

    With ``n_classes`` the label must be non-null and in ``[0, n_classes)``; without, the caption embedding is
    checked like the image embedding.
    """
    embeddings = [("image_emb", "image")] if n_classes is not None else [("image_emb", "image"), ("text_emb", "text")]
    schema = StructType([*df.schema.fields, StructField("status", StringType()), StructField("error", StringType())])
    marked = df.mapInArrow(status_fn(dim, embeddings), schema)
    if n_classes is not None:
        label, ok = F.col("label"), F.col("status") == STATUS.OK
        outside = (label < 0) | (label >= n_classes)
        marked = marked.withColumn(
            "error",
            F.when(ok & label.isNull(), F.lit("label is null"))
            .when(ok & outside, F.concat(F.lit("label "), label.cast("string"), F.lit(f" outside [0, {n_classes})")))
            .otherwise(F.col("error")),
        ).withColumn(
            "status",
            F.when(ok & label.isNull(), F.lit(STATUS.MISSING_LABEL))
            .when(ok & outside, F.lit(STATUS.BAD_LABEL))
            .otherwise(F.col("status")),
        )
    return marked.transform(with_duplicate_uids, order=["_rid"])


def epoch_batches(
    ok: DataFrame, batch_size: int, seed: int, dim: int, rows_per_chunk: int = 1024
) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """A callable giving one epoch of ``(embeddings, labels)`` mini-batches streamed to the driver.

    Each epoch orders the rows by a seeded hash of (uid, epoch) and streams them with ``toLocalIterator`` (one
    partition at a time), packed by the executors into chunks of ``rows_per_chunk`` rows of raw float32 bytes
    (:func:`clipsift.udfs.clipselect.pack_rows_fn`), so the driver holds one partition's chunks and one batch, never the
    table, and pays a copy per value rather than a Python object.
    """
    epoch = iter(range(1 << 30))

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        e = next(epoch)
        order = F.xxhash64("uid", F.lit(e), F.lit(seed))
        packed = (
            ok.select("image_emb", "label").orderBy(order).mapInArrow(pack_rows_fn(dim, rows_per_chunk), PACKED_DDL)
        )
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        held = 0
        for r in packed.toLocalIterator(prefetchPartitions=False):
            img, lab = unpack_rows(r["image"], r["label"], dim)
            images.append(img)
            labels.append(lab)
            held += len(lab)
            if held >= batch_size:
                all_img, all_lab = np.concatenate(images), np.concatenate(labels)
                cut = held - held % batch_size
                for lo in range(0, cut, batch_size):
                    yield all_img[lo : lo + batch_size], all_lab[lo : lo + batch_size]
                images, labels, held = [all_img[cut:]], [all_lab[cut:]], held - cut
        if held:
            yield np.concatenate(images), np.concatenate(labels)

    return batches


def optimiser_column(ratio: float) -> str:
    """``optimiser_selected_<ratio as integer percent>``."""
    return f"optimiser_selected_{round(ratio * 100)}"


def optimiser_columns(
    spark: SparkSession, scored: DataFrame, ratios: Sequence[float], lam: float, beta: float
) -> DataFrame:
    """``_rid`` and one boolean column per ratio from the paper's STE optimiser, run on the driver.

    Only for pools of at most ``optimiser_max_rows`` rows: the three columns it needs are collected.
    """
    local = scored.select("_rid", "sas_norm", F.coalesce(F.col("sds_norm"), F.lit(0.0)).alias("sds_norm")).toPandas()
    sas_n = local["sas_norm"].to_numpy(dtype=np.float64)
    sds_n = local["sds_norm"].to_numpy(dtype=np.float64)
    data = {"_rid": local["_rid"].to_numpy(dtype=np.int64)}
    for r in ratios:
        data[optimiser_column(r)] = optimise_selection(sas_n, sds_n, r, lam=lam, beta=beta)
    ddl = ", ".join(["_rid long", *(f"{optimiser_column(r)} boolean" for r in ratios)])
    return spark.createDataFrame(pd.DataFrame(data), ddl)


def output_columns(cfg: ClipSelectConfig, n_ok: int) -> list[str]:
    """The score columns of a run (the optimiser's only when it runs)."""
    cols = list(SCORE_COLUMNS)
    if cfg.optimiser_max_rows and 0 < n_ok <= cfg.optimiser_max_rows:
        cols += [optimiser_column(r) for r in cfg.ratios]
    return cols


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift clipselect --config clipselect.yaml [--set key=value ...]``; 2 on a bad config."""
    return job_main("clipsift clipselect", ClipSelectConfig, run, _summary, argv)


def _summary(result: ClipSelectResult) -> str:
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(result.by_status.items()))
    return f"clipsift clipselect: run {result.run_id}: {result.rows_in} rows in, {result.rows_out} out ({statuses})"


if __name__ == "__main__":
    sys.exit(main())
