"""``clipsift eval``: prove a selection helps, by training a student CLIP on it at equal compute.

Reads:  the selections' views (a ``uid`` column each), the pool's images and captions (its WebDataset tars or an
        image table), a labelled image table (zero-shot) and, optionally, a table or tars of held-out pairs.
Writes: ``<scores>_eval`` (or ``output``): one row per arm and seed (selection, size, samples seen, seed, the
        student's config, the metrics, wall time, device), replaced per run id.

Arms: every named selection, a seeded random subset of the pool of the same size for each, and the whole pool.
Every arm trains a student from scratch for the same ``steps x batch_size`` samples seen, cycling epochs over an
arm smaller than that, and taking a seeded sample of one larger than that (only those rows' images are read).
Arms that train on the same rows (random arms of equal size; the pool and random arms larger than the budget)
share their students: each set of rows is trained once per seed and its rows are repeated under each arm's name.

Data path: Spark finds each arm's uids (views, the pool's keys, seeded ``xxhash64`` orders), joins the union of
the rows the arms need to the pool once, and decodes and resizes their images to the student's size on the
executors (:func:`clipsift.udfs.proxy.pixels_fn`); the small pixel arrays stream to the driver as Arrow, where
the students train one after another with torch (GPU when present). The driver therefore holds at most
``arms x samples seen`` images of ``size x size x 3`` bytes (30 KB at 32 x 32 per 10 images).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from clipsift.jobs import io
from clipsift.jobs.config import ConfigError, EmbedInputConfig, TableRef, to_dict
from clipsift.jobs.config.eval import EvalConfig
from clipsift.jobs.io import sql_string
from clipsift.jobs.session import Progress, job_main
from clipsift.udfs.proxy import (
    METRICS,
    PIXELS_DDL,
    ArmSummary,
    TrainSettings,
    Vocab,
    differs,
    model_config,
    pixels_array,
    pixels_fn,
    register_config,
    retrieval_recall,
    student_image_size,
    summarize,
    train_student,
    zero_shot_accuracy,
)

#: The eval table: one row per run, arm and seed.
EVAL_DDL = (
    "run_id string, arm string, kind string, selection string, view string, size bigint, rows_used bigint, "
    "samples_seen bigint, steps int, batch_size int, seed int, data_seed int, student string, "
    "student_config string, vocab_size int, zero_shot_top1 double, zero_shot_top5 double, i2t_r1 double, "
    "i2t_r5 double, t2i_r1 double, t2i_r5 double, final_loss double, n_zero_shot int, n_retrieval int, "
    "train_seconds double, wall_seconds double, device string, threads int, config string, created_at timestamp"
)


@dataclass(frozen=True)
class Arm:
    """One training set: a selection, a random subset of a selection's size, or the whole pool."""

    name: str
    kind: str
    """``selection``, ``random`` or ``pool``."""
    selection: str | None
    view: str | None
    size: int
    """Rows of the pool (less the retrieval holdout) in the arm."""
    uids: tuple[str, ...]
    """The rows it trains on: all of them, or a seeded sample of ``samples seen`` rows."""


@dataclass(frozen=True)
class EvalResult:
    """What a run wrote: its id, the table, one row per arm and seed, and the per-arm summary."""

    run_id: str
    table: str
    rows: list[dict[str, Any]]
    summary: list[ArmSummary]


def run(spark: SparkSession, cfg: EvalConfig) -> EvalResult:
    """Train and evaluate a student per arm and seed; write the rows to the eval table; return them."""
    started_at = datetime.now(timezone.utc)
    run_id = f"eval-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    progress = Progress(spark, "clipsift eval")
    model_name = _register_student(cfg)
    size = student_image_size(model_name)
    budget = cfg.train.samples_seen
    decode = pixels_fn(size, interpolation=cfg.interpolation, resize_mode=cfg.resize_mode)

    with progress.step("find the arms' rows") as counts:
        # The pool's uids, read once (a keys-only pass over tars) and kept: every arm is a query over them.
        all_keys = _pool_keys(spark, cfg.pool).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            holdout: list[str] = []
            keys = all_keys
            if cfg.retrieval.input is None:
                holdout = _first(keys, cfg.retrieval.holdout, cfg.train.data_seed + 1)
                keys = keys.join(_uid_frame(spark, holdout), "uid", "left_anti")
            arms = _arms(spark, cfg, keys, budget)
        finally:
            all_keys.unpersist()
        needed = sorted({u for arm in arms for u in arm.uids} | set(holdout))
        counts["rows"] = len(needed)
    with progress.step("decode the arms' images") as counts:
        pairs = _pool_pairs(spark, cfg.pool).join(_uid_frame(spark, needed), "uid", "left_semi")
        decoded = _collect(pairs.mapInArrow(decode, PIXELS_DDL))
        usable = {u: i for i, u in enumerate(decoded["uid"]) if decoded["pixels"][i] and decoded["error"][i] is None}
        counts["rows"] = len(usable)
    with progress.step("read the evaluation sets") as counts:
        if cfg.retrieval.input is None:
            ret = [usable[u] for u in holdout if u in usable]
            ret_pixels = pixels_array([decoded["pixels"][i] for i in ret], size)
            ret_texts = [str(decoded["caption"][i] or "") for i in ret]
        else:
            ret_pixels, ret_texts = _retrieval_input(spark, cfg.retrieval.input, cfg, decode, size)
        if len(ret_texts) < 2:
            raise ConfigError("retrieval", f"only {len(ret_texts)} held-out pairs could be decoded; need at least 2")
        zs_pixels, zs_labels, classes = _zero_shot_set(spark, cfg, decode, size)
        counts["rows"] = len(ret_texts) + len(zs_labels)

    import open_clip

    tokenizer = open_clip.get_tokenizer(model_name)
    prompts = [t.format(c) for c in classes for t in cfg.zero_shot.templates]
    texts = [str(c or "") for c in decoded["caption"]]
    vocab = Vocab.from_tokens(tokenizer(texts + ret_texts + prompts)) if cfg.train.shrink_vocab else None
    settings = TrainSettings(**{k: getattr(cfg.train, k) for k in TrainSettings.__dataclass_fields__})
    student_json = json.dumps(model_config(model_name), sort_keys=True)
    config_json = json.dumps(to_dict(cfg), sort_keys=True)

    rows: list[dict[str, Any]] = []
    trained: dict[tuple[tuple[str, ...], int], dict[str, Any]] = {}
    for arm in arms:
        index = [usable[u] for u in arm.uids if u in usable]
        if len(index) < 2:
            raise ConfigError("selections", f"arm '{arm.name}' has {len(index)} decodable pairs; need at least 2")
        if all((arm.uids, seed) in trained for seed in cfg.train.seeds):
            # The same rows as an earlier arm (random arms of equal size; the pool and random arms larger than
            # the budget): the same student per seed, so its rows are reused rather than trained again.
            for seed in cfg.train.seeds:
                same = trained[(arm.uids, seed)]
                rows.append({**same, "arm": arm.name, "kind": arm.kind, "selection": arm.selection,
                             "view": arm.view, "size": arm.size})  # fmt: skip
            continue
        arm_pixels = pixels_array([decoded["pixels"][i] for i in index], size)
        arm_texts = [texts[i] for i in index]
        for seed in cfg.train.seeds:
            begun = time.perf_counter()
            with progress.step(f"train and evaluate arm {arm.name}, seed {seed}") as counts:
                counts["rows"] = settings.samples_seen
                student = train_student(arm_pixels, arm_texts, settings, seed=seed, model_name=model_name, vocab=vocab)
                top = zero_shot_accuracy(student, zs_pixels, zs_labels, classes, cfg.zero_shot.templates, ks=(1, 5))
                recall = retrieval_recall(student, ret_pixels, ret_texts, ks=(1, 5))
            rows.append(
                {
                    "run_id": run_id, "arm": arm.name, "kind": arm.kind, "selection": arm.selection,
                    "view": arm.view, "size": arm.size, "rows_used": len(index),
                    "samples_seen": len(student.losses) * settings.batch_size, "steps": len(student.losses),
                    "batch_size": settings.batch_size, "seed": seed, "data_seed": cfg.train.data_seed,
                    "student": model_name, "student_config": student_json, "vocab_size": student.vocab_size,
                    "zero_shot_top1": top[1], "zero_shot_top5": top[5], **recall,
                    "final_loss": student.losses[-1], "n_zero_shot": len(zs_labels), "n_retrieval": len(ret_texts),
                    "train_seconds": student.seconds, "wall_seconds": time.perf_counter() - begun,
                    "device": student.device, "threads": _threads(student.device),
                    "config": config_json, "created_at": started_at,
                }
            )  # fmt: skip
            trained[(arm.uids, seed)] = rows[-1]

    out = cfg.output if cfg.output is not None else io.sibling(cfg.scores, "eval")
    with progress.step(f"write {out.label}") as counts:
        io.ensure_schema(spark, out)
        names = [column.split()[0] for column in EVAL_DDL.split(", ")]
        df = spark.createDataFrame([tuple(r[name] for name in names) for r in rows], EVAL_DDL)
        io.replace_where(df, out, f"`run_id` = {sql_string(run_id)}")
        counts["rows"] = len(rows)
    return EvalResult(run_id, out.label, rows, summarize(rows))


def _register_student(cfg: EvalConfig) -> str:
    if cfg.student.config_json is not None:
        try:
            with open(cfg.student.config_json, encoding="utf-8") as f:
                register_config(cfg.student.name, json.load(f))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError("student.config_json", f"cannot be read as JSON ({exc}); fix the file") from None
    try:
        student_image_size(cfg.student.name)
    except ValueError as exc:
        raise ConfigError("student.name", f"{exc}; or give student.config_json") from None
    return cfg.student.name


def _threads(device: str) -> int:
    import torch

    return int(torch.get_num_threads()) if device == "cpu" else 0


def _order(seed: int) -> Column:
    """A seeded pseudo-random order of uids: their ``xxhash64`` with the seed (the uid breaks ties)."""
    return F.xxhash64(F.col("uid"), F.lit(seed))


def _first(df: DataFrame, n: int, seed: int) -> list[str]:
    """The first ``n`` uids of ``df`` in the seeded order (at most ``n`` strings reach the driver)."""
    ordered = df.select("uid").orderBy(_order(seed), "uid").limit(n)
    return [r["uid"] for r in ordered.collect()]


def _uid_frame(spark: SparkSession, uids: Sequence[str]) -> DataFrame:
    """A small frame of uids (at most the arms' budgets), broadcast to the joins that filter the pool with it."""
    return F.broadcast(spark.createDataFrame([(u,) for u in uids], "uid string"))


def _pool_keys(spark: SparkSession, pool: EmbedInputConfig) -> DataFrame:
    """The pool's distinct usable uids (a keys-only pass over tars: headers and ``.json`` members)."""
    if pool.kind == "webdataset":
        pairs = io.read_webdataset(spark, io.list_webdataset_shards(str(pool.path)), pool.image_extensions, True)
    else:
        pairs = io.read_pairs_table(spark, pool)
    return pairs.where(F.col("uid").isNotNull() & F.col("load_status").isNull()).select("uid").distinct()


def _pool_pairs(spark: SparkSession, pool: EmbedInputConfig) -> DataFrame:
    """The pool as rows of :data:`~clipsift.udfs.schemas.PAIRS_DDL`, one per uid."""
    if pool.kind == "webdataset":
        pairs = io.read_webdataset(spark, io.list_webdataset_shards(str(pool.path)), pool.image_extensions)
    else:
        pairs = io.read_pairs_table(spark, pool)
    return pairs.where(F.col("uid").isNotNull() & F.col("load_status").isNull()).dropDuplicates(["uid"])


def _arms(spark: SparkSession, cfg: EvalConfig, keys: DataFrame, budget: int) -> list[Arm]:
    """Each selection, a random subset of its size, and the pool; each holds at most ``budget`` uids."""
    seed = cfg.train.data_seed
    # The pool's first `budget` uids in the seeded order: the pool arm, and (its first `size`) every random arm: a
    # uniform random subset of `size` rows is the first `size` in that order, and its first `budget` are the ones
    # trained on, as for the selection.
    pool_uids, pool_size = _first_and_size(keys, budget, seed)
    arms: list[Arm] = []
    for i, selection in enumerate(cfg.selections):
        view = cfg.view_of(selection)
        uids = _selection_uids(spark, view, f"selections[{i}]").join(keys, "uid", "left_semi")
        first, size = _first_and_size(uids, budget, seed)
        if size < 2:
            raise ConfigError(
                f"selections[{i}]", f"view {view} selects {size} rows of the pool; an arm needs at least 2"
            )
        arms.append(Arm(selection.name, "selection", selection.name, view, size, first))
        arms.append(Arm(f"random_{selection.name}", "random", selection.name, None, size, pool_uids[:size]))
    arms.append(Arm("pool", "pool", None, None, pool_size, pool_uids))
    return arms


def _first_and_size(df: DataFrame, n: int, seed: int) -> tuple[tuple[str, ...], int]:
    """The first ``n`` uids of ``df`` in the seeded order, and its row count (counted only when it has ``n`` or
    more)."""
    first = tuple(_first(df, n, seed))
    return first, (len(first) if len(first) < n else df.count())


def _selection_uids(spark: SparkSession, view: str, key: str) -> DataFrame:
    try:
        df = spark.table(view)
    except Exception as exc:  # AnalysisException: no such view or table
        raise ConfigError(key, f"cannot read view {view} ({type(exc).__name__}); run clipsift select first") from None
    if "uid" not in df.columns:
        raise ConfigError(key, f"view {view} has no uid column (columns: {', '.join(df.columns)})")
    return df.select(F.col("uid").cast("string").alias("uid")).where(F.col("uid").isNotNull()).distinct()


def _collect(df: DataFrame) -> dict[str, list[Any]]:
    """A small decoded frame on the driver, as Arrow (``toArrow``), then Python lists."""
    table = df.toArrow()
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _retrieval_input(
    spark: SparkSession, source: EmbedInputConfig, cfg: EvalConfig, decode: Any, size: int
) -> tuple[np.ndarray, list[str]]:
    """At most ``retrieval.holdout`` decodable pairs of ``retrieval.input``, in a seeded order."""
    pairs = _pool_pairs(spark, source)
    taken = pairs.orderBy(_order(cfg.train.data_seed + 1), "uid").limit(cfg.retrieval.holdout)
    got = _collect(taken.mapInArrow(decode, PIXELS_DDL))
    keep = [i for i, px in enumerate(got["pixels"]) if px is not None and got["error"][i] is None]
    return pixels_array([got["pixels"][i] for i in keep], size), [str(got["caption"][i] or "") for i in keep]


def _zero_shot_set(
    spark: SparkSession, cfg: EvalConfig, decode: Any, size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """At most ``zero_shot.max_images`` decodable labelled images (a seeded sample), their label indices, and the
    class names."""
    zs = cfg.zero_shot
    try:
        df = io.read_table_ref(spark, TableRef(table=zs.table, path=zs.path, format=zs.format))
        columns = df.columns
    except Exception as exc:  # AnalysisException: missing table or path
        raise ConfigError("zero_shot", f"cannot read '{zs.label}' ({type(exc).__name__}); fix table/path") from None
    for name in ("image_col", "image_path_col", "label_col"):
        column = getattr(zs, name)
        if column is not None and column not in columns:
            raise ConfigError(f"zero_shot.{name}", f"'{zs.label}' has no column {column!r} (columns: {columns})")
    image_column = zs.image_col or zs.image_path_col
    rows = df.select(
        F.lit(None).cast("string").alias("uid"),
        F.col(zs.label_col).cast("string").cast("binary").alias("caption"),
        (F.col(zs.image_col).cast("binary") if zs.image_col else F.lit(None).cast("binary")).alias("image"),
        (F.col(zs.image_path_col).cast("string") if zs.image_path_col else F.lit(None).cast("string")).alias(
            "image_path"
        ),
    )
    rows = rows.orderBy(F.xxhash64(F.col(str(image_column)), F.lit(cfg.train.data_seed))).limit(zs.max_images)
    got = _collect(rows.mapInArrow(decode, PIXELS_DDL))
    keep = [i for i, px in enumerate(got["pixels"]) if px is not None and got["caption"][i] is not None]
    labels = [str(got["caption"][i]) for i in keep]
    classes = zs.classes or tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise ConfigError("zero_shot.classes", f"zero-shot needs at least 2 classes, got {list(classes)}")
    index = _label_indices(labels, classes)
    return pixels_array([got["pixels"][i] for i in keep], size), index, classes


def _label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Labels (class names, or integer indices into ``classes``) -> indices."""
    names = {name: i for i, name in enumerate(classes)}
    out = []
    for label in labels:
        if label in names:
            out.append(names[label])
        elif label.lstrip("-").isdigit() and 0 <= int(label) < len(classes):
            out.append(int(label))
        else:
            raise ConfigError(
                "zero_shot.classes", f"label {label!r} is neither a class name nor an index into {list(classes)}"
            )
    return np.asarray(out, dtype=np.int64)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``clipsift eval --config eval.yaml [--set key=value ...]``; 2 on a bad config or path."""
    return job_main("clipsift eval", EvalConfig, run, _summary, argv)


def _summary(result: EvalResult) -> str:
    """Per arm: mean ± spread of each metric over the seeds; whether each selection beats its random arm."""
    lines = [f"clipsift eval: run {result.run_id} -> {result.table}"]
    first = {r["arm"]: r for r in result.rows}
    for s in result.summary:
        row = first[s.arm]
        metrics = " ".join(f"{m}={s.mean[m]:.3f}±{s.std[m]:.3f}" for m in METRICS)
        lines.append(
            f"  {s.arm}: {row['size']} rows, {row['samples_seen']} samples seen, {s.seeds} seed(s), "
            f"{row['wall_seconds']:.1f}s/seed on {row['device']}: {metrics}"
        )
    by_arm = {s.arm: s for s in result.summary}
    for s in result.summary:
        other = by_arm.get(f"random_{s.arm}")
        if other is None:
            continue
        verdicts = []
        for metric in ("zero_shot_top1", "i2t_r1", "t2i_r1"):
            verdict = differs(s, other, metric)
            delta = s.mean[metric] - other.mean[metric]
            word = "no spread (one seed)" if verdict is None else "beyond spread" if verdict else "within spread"
            verdicts.append(f"{metric} {delta:+.3f} ({word})")
        lines.append(f"  {s.arm} vs random_{s.arm}: " + ", ".join(verdicts))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
