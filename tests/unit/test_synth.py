"""Unit tests for clipsift.jobs.demo.synth: the synthetic DataComp-style pool generator (no Spark)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsift.jobs.demo.synth import KINDS, SynthSpec, concept_vectors, generate_pool, generate_target, main

SPEC = SynthSpec(n_rows=2003, n_shards=4, dim=64, n_concepts=50, seed=0)
_CONCEPT_RE = re.compile(r"concept (\d+) ")


def _read(paths: list[Path]) -> list[tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    shards = []
    for path in paths:
        with np.load(path.with_suffix(".npz")) as npz:
            arrays = {k: npz[k] for k in npz.files}
        shards.append((pd.read_parquet(path), arrays))
    return shards


@pytest.fixture(scope="module")
def pool_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate_pool(tmp_path_factory.mktemp("pool"), SPEC)


@pytest.fixture(scope="module")
def shards(pool_paths: list[Path]) -> list[tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    return _read(pool_paths)


@pytest.fixture(scope="module")
def pool(shards: list[tuple[pd.DataFrame, dict[str, np.ndarray]]]) -> pd.DataFrame:
    frames = [df.assign(shard=i) for i, (df, _) in enumerate(shards)]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def arrays(shards: list[tuple[pd.DataFrame, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a[k] for _, a in shards]) for k in ("b32_img", "b32_txt")}


def test_layout_and_schema(pool_paths: list[Path], pool: pd.DataFrame) -> None:
    assert [p.name for p in pool_paths] == [f"{i:05d}.parquet" for i in range(4)]
    assert all(p.with_suffix(".npz").is_file() for p in pool_paths)
    assert list(pool.columns[:-1]) == [
        "uid",
        "url",
        "text",
        "original_width",
        "original_height",
        "clip_b32_similarity_score",
        "clip_l14_similarity_score",
        "synthetic_kind",
    ]
    assert pool["original_width"].dtype == np.int64
    assert pool["original_height"].dtype == np.int64
    assert pool["clip_b32_similarity_score"].dtype == np.float32
    assert pool["clip_l14_similarity_score"].dtype == np.float32
    assert set(pool["synthetic_kind"]) == set(KINDS)
    assert not pool.isna().any().any()


def test_deterministic(tmp_path: Path, pool_paths: list[Path]) -> None:
    again = generate_pool(tmp_path, SPEC)
    for a, b in zip(pool_paths, again, strict=True):
        assert a.with_suffix(".npz").read_bytes() == b.with_suffix(".npz").read_bytes()
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


def test_seed_changes_everything(tmp_path: Path, pool: pd.DataFrame, arrays: dict[str, np.ndarray]) -> None:
    (df, arr), *_ = _read(generate_pool(tmp_path, replace(SPEC, seed=1)))
    assert not set(df["uid"]) & set(pool["uid"])
    assert not np.allclose(arr["b32_img"], arrays["b32_img"][: len(df)])
    assert not np.allclose(arr["b32_txt"], arrays["b32_txt"][: len(df)])


def test_rows_aligned_and_scores_are_row_dot_products(
    shards: list[tuple[pd.DataFrame, dict[str, np.ndarray]]],
) -> None:
    for df, arr in shards:
        assert set(arr) == {"b32_img", "b32_txt"}
        for a in arr.values():
            assert a.dtype == np.float32
            assert a.shape == (len(df), SPEC.dim)
        dots = np.einsum("ij,ij->i", arr["b32_img"].astype(np.float64), arr["b32_txt"])
        np.testing.assert_allclose(df["clip_b32_similarity_score"], dots, atol=1e-6)
        # Without l14 arrays the l14 column repeats the b32 cosine.
        np.testing.assert_array_equal(df["clip_l14_similarity_score"], df["clip_b32_similarity_score"])


def test_unit_norms(arrays: dict[str, np.ndarray]) -> None:
    for a in arrays.values():
        np.testing.assert_allclose(np.linalg.norm(a.astype(np.float64), axis=1), 1.0, atol=1e-5)


def test_uids(pool: pd.DataFrame) -> None:
    assert pool["uid"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert pool["uid"].is_unique
    expected = [hashlib.md5(f"{SPEC.seed}-{r}".encode()).hexdigest() for r in range(SPEC.n_rows)]
    assert pool["uid"].tolist() == expected


def test_shard_sizes_contiguous(shards: list[tuple[pd.DataFrame, dict[str, np.ndarray]]]) -> None:
    assert [len(df) for df, _ in shards] == [501, 501, 501, 500]


def test_kind_fractions(pool: pd.DataFrame) -> None:
    shares = pool["synthetic_kind"].value_counts(normalize=True)
    assert shares["mismatched"] == pytest.approx(SPEC.mismatched_fraction, abs=0.005)
    assert shares["generic"] == pytest.approx(SPEC.generic_fraction, abs=0.005)
    assert shares["duplicate"] == pytest.approx(SPEC.duplicate_fraction, abs=0.005)
    assert shares["clean"] == pytest.approx(
        1 - SPEC.mismatched_fraction - SPEC.generic_fraction - SPEC.duplicate_fraction, abs=0.01
    )


def test_duplicates_are_exact_copies_within_their_shard(
    shards: list[tuple[pd.DataFrame, dict[str, np.ndarray]]],
) -> None:
    n_dups = 0
    for df, arr in shards:
        img, txt = arr["b32_img"], arr["b32_txt"]
        text, width, uid = df["text"].tolist(), df["original_width"].tolist(), df["uid"].tolist()
        originals = np.flatnonzero(df["synthetic_kind"].to_numpy() != "duplicate")
        for i in np.flatnonzero(df["synthetic_kind"].to_numpy() == "duplicate"):
            same = originals[(img[originals] == img[i]).all(axis=1) & (txt[originals] == txt[i]).all(axis=1)]
            assert same.size >= 1, f"duplicate row {i} copies no row of its shard"
            j = same[0]
            assert text[i] == text[j]
            assert width[i] == width[j]
            assert uid[i] != uid[j]
            n_dups += 1
    assert n_dups >= 15


def test_equal_text_iff_equal_caption_vector(pool: pd.DataFrame, arrays: dict[str, np.ndarray]) -> None:
    txt = arrays["b32_txt"]
    _, text_id = np.unique(pool["text"].to_numpy(), return_inverse=True)
    _, vec_id = np.unique(txt, axis=0, return_inverse=True)
    pairs = set(zip(text_id.tolist(), vec_id.ravel().tolist(), strict=True))
    assert len(pairs) == len(set(text_id.tolist())) == len(set(vec_id.ravel().tolist()))
    # Only generic captions and duplicated rows repeat a text.
    assert pool.loc[~pool["synthetic_kind"].isin(["generic", "duplicate"]), "text"].is_unique
    assert pool.loc[pool["synthetic_kind"] == "generic", "text"].duplicated().any()


def test_captions_follow_concepts(pool: pd.DataFrame) -> None:
    clean = pool[pool["synthetic_kind"] == "clean"]
    text_concept = clean["text"].str.extract(_CONCEPT_RE, expand=False).astype(int)
    url_concept = clean["url"].str.extract(r"/c(\d+)/", expand=False).astype(int)
    assert (text_concept == url_concept).all()
    mism = pool[pool["synthetic_kind"] == "mismatched"]
    text_concept = mism["text"].str.extract(_CONCEPT_RE, expand=False).astype(int)
    url_concept = mism["url"].str.extract(r"/c(\d+)/", expand=False).astype(int)
    assert (text_concept != url_concept).all()


def test_cosine_statistics_clean_mismatched(pool: pd.DataFrame) -> None:
    means = pool.groupby("synthetic_kind")["clip_b32_similarity_score"].mean()
    assert 0.27 <= means["clean"] <= 0.33
    assert 0.08 <= means["mismatched"] <= 0.16
    assert means["clean"] - means["mismatched"] >= 0.12


def test_generic_captions_are_liked_by_clipscore(pool: pd.DataFrame) -> None:
    generic = pool[pool["synthetic_kind"] == "generic"]
    means = pool.groupby("synthetic_kind")["clip_b32_similarity_score"].mean()
    assert means["generic"] >= means["clean"] - 0.02
    assert 1 < generic["text"].nunique() <= SPEC.n_generic_captions
    assert generic.groupby("text")["shard"].nunique().max() > 1  # reused across shards


def test_sizes(pool: pd.DataFrame) -> None:
    w, h = pool["original_width"], pool["original_height"]
    short, long = np.minimum(w, h), np.maximum(w, h)
    assert (short >= 1).all()
    assert 0.01 <= (short < 200).mean() <= 0.1
    assert 0.01 <= (long / short > 3).mean() <= 0.1
    assert ((w.between(200, 1024)) & (h.between(200, 1024))).mean() >= 0.85


def test_concept_vectors() -> None:
    c = concept_vectors(SPEC)
    assert c.shape == (SPEC.n_concepts, SPEC.dim)
    assert c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(c, concept_vectors(replace(SPEC, n_rows=5000)))
    assert not np.array_equal(c, concept_vectors(replace(SPEC, seed=1)))


def test_target_is_closer_to_its_concepts(tmp_path: Path, pool: pd.DataFrame, arrays: dict[str, np.ndarray]) -> None:
    chosen = [3, 7, 11, 20, 42]
    path = generate_target(tmp_path / "t" / "target.npy", n_rows=300, spec=SPEC, concepts=chosen)
    target = np.load(path)
    assert target.shape == (300, SPEC.dim)
    assert target.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(target, axis=1), 1.0, atol=1e-5)
    concept = pool["url"].str.extract(r"/c(\d+)/", expand=False).astype(int).to_numpy()
    normsim_inf = (arrays["b32_img"] @ target.T).max(axis=1)
    inside = np.isin(concept, chosen)
    assert inside.sum() >= 100
    assert normsim_inf[inside].mean() > normsim_inf[~inside].mean() + 0.05
    again = generate_target(tmp_path / "again.npy", n_rows=300, spec=SPEC, concepts=chosen)
    assert again.read_bytes() == path.read_bytes()


def test_target_default_concepts_and_validation(tmp_path: Path) -> None:
    target = np.load(generate_target(tmp_path / "t.npy", n_rows=200, spec=SPEC))
    centroid_sim = target @ concept_vectors(SPEC).T
    favourite = np.bincount(centroid_sim.argmax(axis=1), minlength=SPEC.n_concepts)
    assert favourite[: SPEC.n_concepts // 10].sum() >= 0.9 * len(target)
    with pytest.raises(ValueError):
        generate_target(tmp_path / "bad.npy", n_rows=10, spec=SPEC, concepts=[SPEC.n_concepts])
    with pytest.raises(ValueError):
        generate_target(tmp_path / "bad.npy", n_rows=0, spec=SPEC)


def test_with_l14(tmp_path: Path) -> None:
    spec = replace(SPEC, n_rows=400, n_shards=2, with_l14=True)
    (df, arr), _ = _read(generate_pool(tmp_path, spec))
    assert arr["l14_img"].shape == arr["l14_txt"].shape == (len(df), 768)
    assert arr["l14_img"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(arr["l14_txt"], axis=1), 1.0, atol=1e-5)
    dots = np.einsum("ij,ij->i", arr["l14_img"].astype(np.float64), arr["l14_txt"])
    np.testing.assert_allclose(df["clip_l14_similarity_score"], dots, atol=1e-6)
    assert not np.allclose(df["clip_l14_similarity_score"], df["clip_b32_similarity_score"])
    means = df.groupby("synthetic_kind")["clip_l14_similarity_score"].mean()
    assert means["clean"] - means["mismatched"] >= 0.12
    l14_target = np.load(generate_target(tmp_path / "t.npy", n_rows=5, spec=spec, arch="l14"))
    assert l14_target.shape == (5, 768)


@pytest.mark.parametrize(
    "bad",
    [
        {"n_rows": 3, "n_shards": 4},
        {"n_concepts": 1},
        {"mismatched_fraction": 0.6, "generic_fraction": 0.5},
        {"duplicate_fraction": -0.1},
        {"n_generic_captions": 0},
    ],
)
def test_spec_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SynthSpec(**bad)  # type: ignore[arg-type]  # deliberately untyped bad values


def test_main_writes_shards_and_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--out", str(tmp_path), "--rows", "300", "--shards", "3", "--dim", "32", "--target-rows", "50"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        f"{i:05d}.{ext}" for i in range(3) for ext in ("npz", "parquet")
    ]
    assert np.load(tmp_path / "target.npy").shape == (50, 32)
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "300 rows in 3 shards" in out
