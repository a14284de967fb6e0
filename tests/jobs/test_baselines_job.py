"""Jobs-tier tests of the DataComp baselines and semantic dedup in ``clipsift score`` and ``select``, on a
generated DataComp-style pool whose right answers are known: planted clusters, planted near-duplicates
and exact duplicates, captions in several languages, tiny and odd-sized images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.config import ScoreConfig, SelectConfig, from_dict
from clipsift.jobs.score import run as score_run
from clipsift.jobs.select import run as select_run
from clipsift.udfs.kernels import basic_filter
from clipsift.udfs.langid import detect_languages
from tests.support.corpus import tuxpaint_translations

DIM = 16
CLUSTERS = 6
PER_CLUSTER = 30
ENGLISH = [
    "a brown dog running on the beach", "a red car parked in the street", "two cats sleeping on a sofa",
    "a bowl of fresh fruit on a wooden table", "a man riding a bicycle in the park", "a bird sitting on a branch",
]  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    centers = np.eye(DIM, dtype=np.float32)[:CLUSTERS]
    rows: list[dict[str, Any]] = []
    img, txt = [], []
    foreign = [c for _, _, c in tuxpaint_translations(limit=40, langs={"de", "fr", "es", "ja", "ru"})][:20]
    for c in range(CLUSTERS):
        for i in range(PER_CLUSTER):
            v = _unit(centers[c] + rng.normal(0, 0.12, DIM))
            img.append(v)
            txt.append(_unit(v + rng.normal(0, 0.3, DIM)))
            text = ENGLISH[(c + i) % len(ENGLISH)] if i % 5 else foreign[(c * 6 + i // 5) % len(foreign)]
            width, height = (640, 480) if i % 7 else (120, 90)  # tiny images fail the basic filter
            if i == 3:
                width, height = 1200, 300  # aspect 4 > 3
            rows.append({"uid": f"c{c}-r{i:02d}", "text": text, "original_width": width, "original_height": height,
                         "cluster": c, "dup_of": None})  # fmt: skip
    # Planted near-duplicates (cosine > 0.999) and exact duplicates of cluster rows.
    for j, base in enumerate([0, 31, 62, 93, 124, 155, 5, 36]):
        v = img[base] if j >= 6 else _unit(img[base] + rng.normal(0, 0.005, DIM))
        img.append(v)
        txt.append(txt[base])
        rows.append({**rows[base], "uid": f"dup{j}", "dup_of": rows[base]["uid"]})
    pool_dir = tmp_path_factory.mktemp("baselines-pool")
    table = pd.DataFrame(rows)
    table["clip_b32_similarity_score"] = np.einsum("ij,ij->i", np.stack(img), np.stack(txt)).astype(np.float32)
    pq.write_table(pa.Table.from_pandas(table.drop(columns=["cluster", "dup_of"]), preserve_index=False),
                   pool_dir / "00000.parquet")  # fmt: skip
    np.savez(pool_dir / "00000.npz", b32_img=np.stack(img), b32_txt=np.stack(txt))
    target = _unit(centers[:2] + rng.normal(0, 0.05, (2, DIM)))  # near clusters 0 and 1 only
    target = np.repeat(target, 5, axis=0)
    np.save(pool_dir.parent / "target.npy", target)
    return {
        "dir": pool_dir,
        "rows": table.set_index("uid"),
        "img": np.stack(img),
        "target": pool_dir.parent / "target.npy",
    }


@pytest.fixture(scope="module")
def scored(spark: SparkSession, pool: dict[str, Any]) -> dict[str, Any]:
    out = pool["dir"].parent / "scores"
    cfg = from_dict(
        ScoreConfig,
        {
            "input": {"kind": "datacomp", "path": str(pool["dir"]), "arch": "b32", "dim": DIM},
            "output": {"path": str(out)},
            "negclip": {"grouping": "pool", "batch_size": 32, "rounds": 2},
            "normsim": {"targets": [{"name": "tgt", "path": str(pool["target"])}], "norms": ["inf"]},
            "baselines": {
                "basic": True,
                "text_based": True,
                "image_based_target": "tgt",
                "dedup_threshold": 0.99,
                "kmeans": {"clusters": CLUSTERS, "iterations": 20, "seed": 3},
            },
        },
    )
    result = score_run(spark, cfg)
    frame = spark.read.format("delta").load(str(out)).drop("lineage").toPandas().set_index("uid")
    dups = spark.read.format("delta").load(f"{out}_duplicates").toPandas().set_index("uid")
    return {"out": out, "result": result, "frame": frame, "dups": dups}


def test_metadata_is_carried_into_the_score_table(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    frame, rows = scored["frame"], pool["rows"]
    assert scored["result"].rows_out == len(rows)
    assert (frame.loc[rows.index, "text"] == rows["text"]).all()
    assert (frame.loc[rows.index, "original_width"] == rows["original_width"]).all()


def test_basic_filter_matches_the_kernel_and_the_planted_cases(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    frame, rows = scored["frame"], pool["rows"]
    lang, _ = detect_languages(list(rows["text"]))
    expected = basic_filter(
        lang, list(rows["text"]), rows["original_width"].to_numpy(), rows["original_height"].to_numpy()
    )
    assert (frame.loc[rows.index, "basic_filter"].to_numpy() == expected).all()
    english_big = rows["text"].isin(ENGLISH) & (rows["original_width"] == 640)
    assert frame.loc[english_big[english_big].index, "basic_filter"].all()
    assert not frame.loc[rows.index[rows["original_width"] == 120], "basic_filter"].any()  # tiny
    assert not frame.loc[rows.index[rows["original_width"] == 1200], "basic_filter"].any()  # aspect 4
    foreign = ~rows["text"].isin(ENGLISH)
    assert (frame.loc[foreign[foreign].index, "caption_lang"] != "en").mean() > 0.8


def test_text_based_filter_finds_imagenet_nouns(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    frame, rows = scored["frame"], pool["rows"]
    english = rows.index[rows["text"].isin(ENGLISH)]
    assert frame.loc[english, "caption_in21k"].all()  # dog, car, cat, fruit, bicycle, bird
    assert (frame.loc[english, "text_based_filter"] == (frame.loc[english, "caption_lang"] == "en")).all()


def test_kmeans_recovers_the_planted_clusters_and_image_based_keeps_target_clusters(
    pool: dict[str, Any], scored: dict[str, Any]
) -> None:
    frame, rows = scored["frame"], pool["rows"]
    found = frame.loc[rows.index, "image_cluster"]
    mapping = pd.crosstab(rows["cluster"], found)
    assert (mapping.gt(0).sum(axis=1) == 1).all() and (mapping.gt(0).sum(axis=0) == 1).all()  # a bijection
    near_target = rows["cluster"].isin([0, 1]).to_numpy()
    expected = near_target & frame.loc[rows.index, "caption_prefilter"].to_numpy()
    assert (frame.loc[rows.index, "image_based_filter"].to_numpy() == expected).all()
    assert expected.sum() > 20


def test_dedup_groups_planted_duplicates_and_keeps_the_best(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    frame, rows, dups = scored["frame"], pool["rows"], scored["dups"]
    planted = rows[rows["dup_of"].notna()]
    grouped = {frozenset((uid, of)) for uid, of in planted["dup_of"].items()}
    for pair in grouped:
        a, b = sorted(pair)
        assert frame.loc[a, "dedup_group"] == frame.loc[b, "dedup_group"]
        best = max(pair, key=lambda u: (frame.loc[u, "clip_score"], -sorted(pair).index(u)))
        assert frame.loc[list(pair), "dedup_kept"].sum() == 1
        assert frame.loc[frame.loc[a, "dedup_group"], "clip_score"] == frame.loc[best, "clip_score"]
    in_pairs = set().union(*grouped)
    assert frame.loc[[u for u in frame.index if u not in in_pairs], "dedup_kept"].all()  # nothing else grouped
    assert len(dups) == len(grouped) and set(dups.index) <= in_pairs
    assert (dups["similarity"] >= 0.99).all()


def test_select_combines_baselines(spark: SparkSession, scored: dict[str, Any]) -> None:
    cfg = from_dict(
        SelectConfig,
        {
            "scores": {"path": str(scored["out"])},
            "view_prefix": "bl_",
            "selections": [
                {"name": "image_based", "rule": "flag", "column": "image_based_filter"},
                {
                    "name": "clip30",
                    "rule": "top_fraction",
                    "column": "clip_b32_similarity_score",
                    "fraction": 0.3,
                    "counting": "datacomp",
                },
                {"name": "unique", "rule": "flag", "column": "dedup_kept"},
                {"name": "datacomp_1b_style", "rule": "intersect", "of": ["image_based", "clip30", "unique"]},
            ],
        },
    )
    results = {r.name: r for r in select_run(spark, cfg)}
    frame = scored["frame"]
    assert results["image_based"].rows == int(frame["image_based_filter"].sum())
    assert results["unique"].rows == int(frame["dedup_kept"].sum())
    got = {r["uid"] for r in spark.sql("SELECT uid FROM bl_datacomp_1b_style").collect()}
    theta = np.sort(frame["clip_b32_similarity_score"].to_numpy())[::-1][int(len(frame) * 0.3)]
    expected = set(
        frame.index[frame["image_based_filter"] & frame["dedup_kept"] & (frame["clip_b32_similarity_score"] >= theta)]
    )
    assert got == expected and got


@pytest.mark.parametrize("init", ["random", "k-means||"])
def test_kmeans_init_modes_fit_centroids_near_the_planted_clusters(
    spark: SparkSession, pool: dict[str, Any], init: str
) -> None:
    """Both initialisations fit ``k`` unit-scale centroids; every planted cluster's mean has a centroid near it."""
    from clipsift.jobs.baselines import fit_kmeans
    from clipsift.jobs.config import KMeansConfig

    img = pool["img"]
    df = spark.createDataFrame([(v.tolist(),) for v in img], "image_emb array<float>")
    cfg = KMeansConfig(clusters=CLUSTERS, iterations=20, seed=3, init=init)  # type: ignore[arg-type]
    centroids = fit_kmeans(df, cfg, len(img))
    assert centroids.shape == (CLUSTERS, DIM) and np.isfinite(centroids).all()
    labels = pool["rows"]["cluster"].to_numpy()
    for c in np.unique(labels):
        mean = img[labels == c].mean(axis=0)
        assert np.linalg.norm(centroids - mean, axis=1).min() < 0.5
