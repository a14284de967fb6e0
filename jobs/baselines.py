"""DataComp baselines and semantic deduplication on Spark: k-means with MLlib, then column transforms.

The per-row computations live in :mod:`clipsift.udfs.baselines` (over :mod:`clipsift.udfs.kernels`); this module fits
the k-means model, finds the clusters of a target set, and chains the columns onto the scored rows.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import KMEANS_PARALLEL_MAX_K, KMeansConfig
from clipsift.udfs.baselines import (
    DEDUP_DDL,
    PACKAGED,
    CaptionResources,
    caption_filters_udf,
    dedup_group_fn,
    nearest_centroid_udf,
)
from clipsift.udfs.kernels import nearest_centroid
from clipsift.udfs.score import TargetHandle, target_rows

#: The columns each baseline transform adds (name -> Spark SQL type).
CAPTION_COLUMNS = {
    "caption_lang": "string", "caption_lang_prob": "double", "basic_filter": "boolean", "caption_in21k": "boolean",
    "text_based_filter": "boolean", "caption_prefilter": "boolean",
}  # fmt: skip
CLUSTER_COLUMNS = {"image_cluster": "int", "centroid_similarity": "double"}
IMAGE_BASED_COLUMNS = {"image_based_filter": "boolean"}
DEDUP_COLUMNS = {"dedup_group": "string", "dedup_similarity": "double", "dedup_kept": "boolean"}


def fit_kmeans(ok: DataFrame, cfg: KMeansConfig, n_ok: int) -> np.ndarray:
    """``(k, d)`` float32 centroids of MLlib k-means (Euclidean; initialised by :func:`kmeans_init_mode`).

    k is ``min(cfg.clusters, rows fitted on)``; with ``fit_rows`` the model is fitted on a seeded sample.
    """
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    data = ok.select(array_to_vector(F.col("image_emb")).alias("features"))
    n_fit = n_ok
    if cfg.fit_rows is not None and cfg.fit_rows < n_ok:
        data = data.sample(fraction=cfg.fit_rows / n_ok, seed=cfg.seed)
        n_fit = cfg.fit_rows
    k = max(2, min(cfg.clusters, n_fit))  # MLlib needs k > 1
    model = KMeans(
        k=k, maxIter=cfg.iterations, seed=cfg.seed, featuresCol="features", initMode=kmeans_init_mode(cfg, k)
    ).fit(data)
    return np.ascontiguousarray(np.stack(model.clusterCenters()), dtype=np.float32)


def kmeans_init_mode(cfg: KMeansConfig, k: int) -> str:
    """MLlib's ``initMode`` for ``k`` clusters: ``cfg.init``; ``auto`` is k-means|| up to ``KMEANS_PARALLEL_MAX_K``."""
    if cfg.init != "auto":
        return cfg.init
    return "k-means||" if k <= KMEANS_PARALLEL_MAX_K else "random"


def centroid_handle(centroids: np.ndarray, closure_max_mb: int, staging_dir: str | None) -> TargetHandle:
    """The centroids for the assignment UDF, shipped like a NormSim target (:func:`clipsift.jobs.io.ship_matrix`)."""
    digest = hashlib.sha256(centroids.tobytes()).hexdigest()
    return io.ship_matrix(
        "kmeans", centroids, digest, moment=np.zeros((1, 1)), closure_max_mb=closure_max_mb, staging_dir=staging_dir
    )


def target_clusters(
    spark: SparkSession, target: TargetHandle, centroids: TargetHandle, block_rows: int = 65_536
) -> list[int]:
    """Clusters that are the nearest (max dot product) of at least one target row, computed on the executors.

    The target's rows travel as they do for NormSim (closure or staged file); each task takes one
    block of rows, so an ImageNet-sized target is spread over the cluster rather than the driver.
    """
    blocks = max(1, math.ceil(target.rows / block_rows))

    def assign(batches: object) -> object:
        for batch in batches:  # type: ignore[attr-defined]
            for b in batch.column(0).to_pylist():
                rows = np.asarray(target_rows(target)[b * block_rows : (b + 1) * block_rows], dtype=np.float32)
                index, _ = nearest_centroid(rows, np.asarray(target_rows(centroids)))
                yield pa.RecordBatch.from_arrays([pa.array(np.unique(index), pa.int32())], names=["cluster"])

    found = spark.range(0, blocks, 1, numPartitions=blocks).mapInArrow(assign, "cluster int").distinct()  # type: ignore[arg-type]
    return sorted(int(r["cluster"]) for r in found.collect())


def with_caption_filters(df: DataFrame, *, text_based: bool, resources: CaptionResources = PACKAGED) -> DataFrame:
    """Add the caption-side baseline columns (:data:`CAPTION_COLUMNS`) from ``text`` and the image size."""
    udf = caption_filters_udf(text_based, resources)
    return df.withColumn("_captions", udf("text", "original_width", "original_height")).select(
        *df.columns, *(F.col(f"_captions.{c}").alias(c) for c in CAPTION_COLUMNS)
    )


def with_clusters(df: DataFrame, *, centroids: TargetHandle, dim: int) -> DataFrame:
    """Add ``image_cluster`` (the max-dot-product centroid) and ``centroid_similarity``."""
    udf = nearest_centroid_udf(centroids, dim)
    return df.withColumn("_cluster", udf("image_emb")).select(
        *df.columns, *(F.col(f"_cluster.{c}").alias(c) for c in CLUSTER_COLUMNS)
    )


def with_image_based(df: DataFrame, *, clusters: list[int]) -> DataFrame:
    """Add ``image_based_filter``: the caption pre-filter passes and the row's cluster is a target's nearest."""
    in_target = F.col("image_cluster").isin(clusters) if clusters else F.lit(False)
    return df.withColumn("image_based_filter", F.col("caption_prefilter") & in_target)


def dedup_groups(df: DataFrame, *, rank: str, threshold: float, dim: int) -> DataFrame:
    """``uid, dedup_group, dedup_similarity, dedup_kept`` of rows with ``image_emb``, ``image_cluster`` and ``rank``.

    One task per k-means cluster (``applyInArrow``); near-duplicates are searched only within a cluster.
    """
    fn = dedup_group_fn(threshold, dim)
    return (
        df.select("uid", "image_emb", F.col(rank).cast("double").alias("rank"), "image_cluster")
        .groupBy("image_cluster")
        .applyInArrow(fn, DEDUP_DDL)
    )
