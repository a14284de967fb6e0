"""NormSim₂-D (VAS-D) on Spark: the iterative, target-free selection of ALGORITHMS.md §2.3.

Each iteration is a few Spark passes over the candidate rows: score fᵀ S f with S in the UDF
closure (once: the scores are checkpointed), find the exact cut-off keeping ``n − chunk`` rows (ties
by uid) over the checkpointed scores, and recompute S from the kept rows (per-partition partial
moments summed on the driver: partitions × d² numbers, never the pool). The state is checkpointed
every iteration so the plan does not grow.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from clipsift.jobs.config import NormSim2DConfig
from clipsift.jobs.cutoffs import keep_condition, top_n_cutoff
from clipsift.jobs.transforms import with_clip_score
from clipsift.udfs.score import TargetHandle, moment_partial_fn, normsim_udf


def pool_moment(df: DataFrame, dim: int) -> tuple[np.ndarray, int]:
    """Σ f fᵀ over ``image_emb`` of ``df`` and the row count, summed partition by partition."""
    partials = df.select("image_emb").mapInArrow(moment_partial_fn(dim), "rows long, moment binary")
    total = np.zeros((dim, dim))
    rows = 0
    for r in partials.toLocalIterator():
        total += np.frombuffer(r["moment"], dtype=np.float64).reshape(dim, dim)
        rows += int(r["rows"])
    return total, rows


def normsim2_dynamic_survival(ok: DataFrame, *, cfg: NormSim2DConfig, dim: int, n_pool: int) -> DataFrame:
    """``uid, normsim2d_survived``: iterations each candidate survived (``iterations`` = selected).

    Rows outside the CLIPScore pre-filter are absent (null after the job's join).

    Args:
        ok: scorable rows with ``uid``, ``image_emb``, ``text_emb`` (normalised).
        cfg: fractions of the pool and the number of iterations T.
        dim: embedding dimension.
        n_pool: rows in ``ok``.
    """
    n_cand = int(n_pool * cfg.candidate_fraction)
    n_final = int(n_pool * cfg.final_fraction)
    total, rows = pool_moment(ok, dim)
    moment = total / max(rows, 1)
    if cfg.candidate_fraction < 1.0:
        with_cs = ok.transform(with_clip_score, dim=dim)
        cut = top_n_cutoff(with_cs, "clip_score", n_cand)
        cand = with_cs.where(keep_condition("clip_score", cut))
    else:
        cand = ok
    state = cand.select("uid", "image_emb", F.lit(True).alias("alive"), F.lit(0).alias("survived")).localCheckpoint()
    chunk = math.ceil((n_cand - n_final) / cfg.iterations) if cfg.iterations else 0
    n_cur = n_cand
    for t in range(cfg.iterations):
        if n_cur == n_final:
            state = state.withColumn(
                "survived", F.col("survived") + F.when(F.col("alive"), cfg.iterations - t).otherwise(0)
            )
            break
        keep = n_final if t == cfg.iterations - 1 else max(n_final, n_cur - chunk)
        handle = TargetHandle("pool", "", 0, moment)
        quad = normsim_udf(handle, ("2",), dim, False, 1)("image_emb").getField("normsim_2")
        # Scored once (the UDF's one pass over the embeddings), then cut on the kept column: n_cur rows are alive.
        scored = state.withColumn("_q", F.when(F.col("alive"), quad)).localCheckpoint()
        cut = top_n_cutoff(scored.where(F.col("alive")), "_q", keep, total=n_cur)
        alive = F.col("alive") & F.coalesce(keep_condition("_q", cut), F.lit(False))
        state = (
            scored.withColumn("alive", alive)
            .withColumn("survived", F.col("survived") + F.col("alive").cast("int"))
            .drop("_q")
            .localCheckpoint()
        )
        n_cur = keep
        total, rows = pool_moment(state.where(F.col("alive")), dim)
        moment = total / max(rows, 1)
    return state.select("uid", F.col("survived").alias("normsim2d_survived"))
