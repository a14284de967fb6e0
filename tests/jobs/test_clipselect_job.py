"""``clipsift clipselect`` end to end on Spark + Delta: tiny-CLIP Fashion-MNIST embeddings with 20 % flipped labels.

The Spark scores must equal the in-process kernels (same adapters, loaded from ``adapters.save_path``), the
criterion's top half must hold few flipped labels, and the driver-side optimiser must pick the criterion's top-k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import SparkSession

from clipsift.jobs import score, select
from clipsift.jobs.clipselect import class_prompts, run
from clipsift.jobs.config import ClipSelectConfig, ScoreConfig, SelectConfig, from_dict
from clipsift.jobs.embed import model_spec
from clipsift.udfs.adapters import apply_image, apply_text, load_adapters
from clipsift.udfs.kernels import l2_normalize
from clipsift.udfs.kernels.clipselect import (
    diversity_within_label,
    minmax,
    select_top_k,
    selection_scores,
    semantic_alignment,
)
from clipsift.udfs.models import get_model
from tests.support.tiny_clip import (
    FASHION_CLASSES,
    encode_images,
    load_fashion_mnist,
    preprocess_images,
    trained_tiny_clip,
)

N_POOL, NOISE, SEED, K, LAM = 2_000, 0.2, 0, 50, 0.1
N_LABEL_FREE = 300


def _model(tiny: Any) -> dict[str, Any]:
    return {
        "name": tiny.model_name,
        "config_json": str(tiny.config_path),
        "pretrained": str(tiny.checkpoint_path),
        "device": "cpu",
        "threads": 1,
    }


@pytest.fixture(scope="module")
def embedded(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = trained_tiny_clip()
        model, preprocess, tokenizer = tiny.load()
        images, labels = load_fashion_mnist("train")
        rng = np.random.default_rng(SEED)
        rows = rng.choice(len(images), size=N_POOL, replace=False)
        clean = labels[rows].astype(np.int64)
        flipped = np.zeros(N_POOL, dtype=bool)
        flipped[rng.choice(N_POOL, size=int(NOISE * N_POOL), replace=False)] = True
        noisy = clean.copy()
        shift = rng.integers(1, len(FASHION_CLASSES), size=int(flipped.sum()))
        noisy[flipped] = (clean[flipped] + shift) % len(FASHION_CLASSES)
        emb = encode_images(model, preprocess_images(images[rows], preprocess)).numpy().astype(np.float32)
        captions = [f"a photo of a {FASHION_CLASSES[c]}" for c in clean[:N_LABEL_FREE]]
        with torch.no_grad():
            text = model.encode_text(tokenizer(captions)).float()
            text = torch.nn.functional.normalize(text, dim=-1).numpy()
    finally:
        torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("clipselect")
    uids = [f"u{i:05d}" for i in range(N_POOL)]
    frame = pd.DataFrame({"uid": uids, "image_emb": list(emb), "label": noisy})
    extra = pd.DataFrame(
        {
            "uid": ["null-emb-1", "null-emb-2", "null-label"],
            "image_emb": [None, None, emb[0]],
            "label": [1, 2, None],
        }
    )
    table = pd.concat([frame, extra], ignore_index=True)
    table["label"] = table["label"].astype("Int64")
    spark.createDataFrame(table, "uid string, image_emb array<float>, label bigint").write.format("delta").save(
        str(root / "embeddings")
    )
    free = pd.DataFrame({"uid": uids[:N_LABEL_FREE], "image_emb": list(emb[:N_LABEL_FREE]), "text_emb": list(text)})
    spark.createDataFrame(free, "uid string, image_emb array<float>, text_emb array<float>").write.format("delta").save(
        str(root / "pairs")
    )
    return {"root": root, "tiny": tiny, "emb": emb, "noisy": noisy, "flipped": flipped, "uids": uids}


@pytest.fixture(scope="module")
def labelled(spark: SparkSession, embedded: dict[str, Any]) -> dict[str, Any]:
    root = embedded["root"]
    cfg = from_dict(
        ClipSelectConfig,
        {
            "input": {"path": str(root / "embeddings"), "label_col": "label"},
            "output": {"path": str(root / "scores")},
            "model": _model(embedded["tiny"]),
            "classes": list(FASHION_CLASSES),
            "adapters": {"epochs": 10, "lr": 5e-4, "save_path": str(root / "adapters")},
            "k": K,
            "lam": LAM,
            "ratios": [0.5],
            "run_id": "fmnist",
        },
    )
    result = run(spark, cfg)
    scores = spark.read.format("delta").load(str(root / "scores")).drop("lineage").toPandas().set_index("uid")
    return {"cfg": cfg, "result": result, "scores": scores}


def test_every_row_once_with_a_status(embedded: dict[str, Any], labelled: dict[str, Any]) -> None:
    result, scores = labelled["result"], labelled["scores"]
    assert result.rows_in == result.rows_out == N_POOL + 3
    assert result.by_status == {"ok": N_POOL, "null_embedding": 2, "missing_label": 1}
    assert scores.index.is_unique and len(scores) == N_POOL + 3
    assert scores.loc[["null-emb-1", "null-emb-2", "null-label"], "clipselect_score"].isna().all()
    ok = scores[scores["status"] == "ok"]
    assert np.isfinite(ok[["sas", "sds", "sas_norm", "sds_norm", "clipselect_score"]].to_numpy()).all()
    runs = labelled["result"].run_id
    assert runs == "fmnist" and (Path(embedded["root"]) / "scores_runs" / "_delta_log").is_dir()


def test_spark_scores_equal_in_process_kernels(embedded: dict[str, Any], labelled: dict[str, Any]) -> None:
    cfg: ClipSelectConfig = labelled["cfg"]
    pair, provenance = load_adapters(str(cfg.adapters.save_path))
    assert provenance["classes"] == list(FASHION_CLASSES) and provenance["trained"]
    prompts = class_prompts(get_model(model_spec(cfg.model)), cfg.classes, cfg.prompt_templates)
    adapted = apply_image(pair, embedded["emb"])
    sas = semantic_alignment(adapted, apply_text(pair, prompts), embedded["noisy"])
    sds = diversity_within_label(adapted, embedded["noisy"], K)
    ok = labelled["scores"].loc[embedded["uids"]]
    gaps = (np.abs(ok["sas"].to_numpy() - sas).max(), np.abs(ok["sds"].to_numpy() - sds).max())
    print(f"clipselect-job: max |spark - kernel| sas={gaps[0]:.2e} sds={gaps[1]:.2e}")
    np.testing.assert_allclose(ok["sas"].to_numpy(), sas, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ok["sds"].to_numpy(), sds, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ok["sas_norm"].to_numpy(), minmax(sas), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ok["sds_norm"].to_numpy(), minmax(sds), rtol=0, atol=1e-5)


def test_top_half_keeps_few_flipped_labels_and_optimiser_agrees(
    embedded: dict[str, Any], labelled: dict[str, Any]
) -> None:
    ok = labelled["scores"].loc[embedded["uids"]]
    k = int(N_POOL * 0.5)
    top = np.zeros(N_POOL, dtype=bool)
    top[np.argsort(-ok["clipselect_score"].to_numpy(), kind="stable")[:k]] = True
    flipped = embedded["flipped"]
    share = float(flipped[top].mean())
    print(f"clipselect-job: flipped share top-50% = {share:.4f} (pool {flipped.mean():.4f})")
    assert share < 0.25 * NOISE
    chosen = ok["optimiser_selected_50"].to_numpy(dtype=bool)
    disagree = int((chosen != top).sum())
    print(f"clipselect-job: optimiser selected {int(chosen.sum())}, top-k {k}, rows disagreeing {disagree}")
    assert abs(int(chosen.sum()) - k) <= max(1, 0.0005 * N_POOL)
    assert disagree <= 2 * max(1, 0.0005 * N_POOL)


def test_label_free_variant_gives_finite_scores(spark: SparkSession, embedded: dict[str, Any]) -> None:
    root = embedded["root"]
    cfg = from_dict(
        ClipSelectConfig,
        {
            "input": {"path": str(root / "pairs"), "label_col": None, "text_col": "text_emb"},
            "output": {"path": str(root / "free_scores")},
            "model": _model(embedded["tiny"]),
            "pseudo_classes": 5,
            "kmeans_iterations": 5,
            "k": 10,
            "ratios": [0.5],
        },
    )
    result = run(spark, cfg)
    assert result.rows_in == result.rows_out == N_LABEL_FREE and result.by_status == {"ok": N_LABEL_FREE}
    scores = spark.read.format("delta").load(str(root / "free_scores")).toPandas()
    assert np.isfinite(scores[["sas", "sds", "clipselect_score"]].to_numpy()).all()
    assert scores["sds_group"].nunique() > 1 and scores["optimiser_selected_50"].sum() == N_LABEL_FREE // 2


# --------------------------------------------------------------------------------------------------
# The same scores in clipsift select, and the label-free variant in the score table


def _select(spark: SparkSession, scores: str, run_id: str, selections: list[dict[str, Any]]) -> dict[str, set[str]]:
    cfg = from_dict(SelectConfig, {"scores": {"path": scores}, "run_id": run_id, "selections": selections})
    results = select.run(spark, cfg)
    return {r.name: {row["uid"] for row in spark.table(r.view).select("uid").collect()} for r in results}


def test_select_clipselect_rule_is_the_criterion_top_k(
    spark: SparkSession, embedded: dict[str, Any], labelled: dict[str, Any]
) -> None:
    """``clipsift select`` rule clipselect (λ at select time) keeps exactly the kernel's top-k of the criterion."""
    ok = labelled["scores"].loc[embedded["uids"]]
    views = _select(
        spark,
        str(embedded["root"] / "scores"),
        labelled["result"].run_id,
        [
            {"name": "cs_half", "rule": "clipselect", "fraction": 0.5, "lam": LAM},
            {"name": "cs_half_score", "rule": "top_fraction", "column": "clipselect_score", "fraction": 0.5},
            {"name": "cs_alignment_only", "rule": "clipselect", "fraction": 0.3, "lam": 0.0},
        ],
    )
    uids = np.asarray(embedded["uids"])
    sas_n, sds_n = ok["sas_norm"].to_numpy(), np.nan_to_num(ok["sds_norm"].to_numpy())
    expected = set(uids[select_top_k(selection_scores(sas_n, sds_n, LAM), 0.5)])
    assert len(views["cs_half"]) == int(N_POOL * 0.5)
    assert views["cs_half"] == expected == views["cs_half_score"]
    by_sas = set(uids[np.argsort(-ok["sas"].to_numpy(), kind="stable")[: int(N_POOL * 0.3)]])
    assert views["cs_alignment_only"] == by_sas


def test_score_job_label_free_columns(spark: SparkSession, embedded: dict[str, Any], labelled: dict[str, Any]) -> None:
    """``clipsift score`` with ``clipselect.enabled``: sas/sds in the score table, equal to the kernels, with identity
    adapters (sas = clip_score) and with the adapters ``clipsift clipselect`` saved; then selected in SQL."""
    root = embedded["root"]
    base = {
        "input": {"kind": "table", "path": str(root / "pairs")},
        "output": {"path": str(root / "pool_scores")},
        "negclip": {"enabled": True, "grouping": "pool", "batch_size": 64, "rounds": 1},
        "baselines": {"kmeans": {"clusters": 5, "iterations": 5}},
        "clipselect": {"enabled": True, "k": 10},
    }
    free = spark.read.format("delta").load(str(root / "pairs")).toPandas().set_index("uid")
    img = np.stack(free["image_emb"].to_numpy()).astype(np.float32)
    txt = np.stack(free["text_emb"].to_numpy()).astype(np.float32)
    pair, _ = load_adapters(str(labelled["cfg"].adapters.save_path))
    for adapters in (None, str(labelled["cfg"].adapters.save_path)):
        data = {**base, "clipselect": {**base["clipselect"], "adapters": adapters}}
        result = score.run(spark, from_dict(ScoreConfig, data))
        assert result.rows_in == result.rows_out == N_LABEL_FREE and result.by_status == {"ok": N_LABEL_FREE}
        out = spark.read.format("delta").load(str(root / "pool_scores")).where(f"run_id = '{result.run_id}'")
        frame = out.toPandas().set_index("uid").loc[free.index]
        assert frame[["sas", "sds", "negclip_loss", "image_cluster"]].notna().all().all()
        lo_img, lo_txt = l2_normalize(img)[0], l2_normalize(txt)[0]  # the job normalises on ingest
        if adapters is None:
            np.testing.assert_allclose(frame["sas"], frame["clip_score"], rtol=0, atol=1e-6)
            adapted = lo_img
        else:
            adapted = apply_image(pair, lo_img)
            sas = semantic_alignment(adapted, apply_text(pair, lo_txt), np.arange(N_LABEL_FREE))
            np.testing.assert_allclose(frame["sas"], sas, rtol=0, atol=1e-5)
        clusters = frame["image_cluster"].to_numpy()
        sds = diversity_within_label(adapted, clusters, 10)
        np.testing.assert_allclose(frame["sds"], sds, rtol=0, atol=1e-5)
        views = _select(
            spark, str(root / "pool_scores"), result.run_id, [{"name": "free", "rule": "clipselect", "fraction": 0.4}]
        )
        crit = selection_scores(minmax(frame["sas"].to_numpy()), np.nan_to_num(minmax(sds)), 0.1)
        assert views["free"] == set(frame.index[select_top_k(crit, 0.4)])


def test_class_prompts_average_several_templates(embedded: dict[str, Any], labelled: dict[str, Any]) -> None:
    encoder = get_model(model_spec(labelled["cfg"].model))
    templates = ("a photo of a {}", "a blurry photo of the {}")
    got = class_prompts(encoder, FASHION_CLASSES[:3], templates)
    each = [encoder.encode_texts([t.format(c) for c in FASHION_CLASSES[:3]]).astype(np.float64) for t in templates]
    mean = (each[0] + each[1]) / 2
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(got, each[0], atol=1e-3)  # the second template changes the prompt features


def test_repeated_uids_keep_their_first_ok_row(spark: SparkSession) -> None:
    """The clipselect job marks repeated uids with the score job's marker: the first ``ok`` row (by input order)
    stays, later ``ok`` ones become ``duplicate_uid``; a bad first row does not demote a later good one."""
    from pyspark.sql import functions as F

    from clipsift.jobs.clipselect import with_status

    good, bad = [1.0, 0.0], [0.0, 0.0]
    rows = [("a", good, 0), ("a", good, 1), ("b", bad, 0), ("b", good, 1), ("c", good, 2), (None, good, 0)]
    frame = spark.createDataFrame(rows, "uid string, image_emb array<float>, label bigint")
    frame = frame.withColumn("text_emb", F.lit(None).cast("array<float>"))
    out = (
        frame.withColumn("_rid", F.monotonically_increasing_id())
        .transform(with_status, dim=2, n_classes=3)
        .orderBy("_rid")
        .select("uid", "status", "error")
        .collect()
    )
    assert len(out) == len(rows)
    assert [(r["uid"], r["status"]) for r in out] == [
        ("a", "ok"), ("a", "duplicate_uid"), ("b", "zero_norm"), ("b", "ok"), ("c", "ok"), (None, "null_uid"),
    ]  # fmt: skip
    assert "occurrence 2" in out[1]["error"]
