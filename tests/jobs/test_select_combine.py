"""Jobs-tier tests of the selections that combine: uid sets imported from outside (DataComp subset ``.npy``, tables,
other views), rules ``within`` another selection, and columns of two teachers' runs joined in one selection; and
the paper's recipes shipped in ``examples/`` run as written. Every view is checked against the same rule computed
in numpy over scores that the kernels reproduce."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import SparkSession

from clipsift.jobs.config import ConfigError, ScoreConfig, SelectConfig, from_dict
from clipsift.jobs.demo.synth import SynthSpec, generate_pool, generate_target
from clipsift.jobs.io import uid_pairs, write_subset_npy
from clipsift.jobs.score import run as score
from clipsift.jobs.select import run as select
from clipsift.udfs.kernels import clip_score, l2_normalize, normsim_inf
from clipsift.udfs.schemas import STATUS
from tests.support.subsets import BAD_SUBSET_FILES, write_bad_subset

ROOT = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(n_rows=3000, n_shards=3, dim=32, dim_l14=48, n_concepts=12, seed=21, with_l14=True)
NAN_ROWS = 40  # rows of shard 0 whose B/32 image is NaN: ok for the L/14 teacher, not for the B/32 one


def _top(frame: pd.DataFrame, column: str, n: int) -> pd.DataFrame:
    """The top n rows by (column desc, uid asc), null scores never counted: the kernels' exact counting."""
    ranked = frame.dropna(subset=[column]).sort_values([column, "uid"], ascending=[False, True], kind="mergesort")
    return ranked.iloc[: max(n, 0)]


def _sequential(frame: pd.DataFrame, first: str, f1: float, then: str, f2: float) -> set[str]:
    n = len(frame)
    step1 = _top(frame, first, int(n * f1))
    return set(_top(step1, then, int(n * f2))["uid"]) if int(n * f2) != int(n * f1) else set(step1["uid"])


def _view(spark: SparkSession, view: str) -> set[str]:
    return {r["uid"] for r in spark.sql(f"SELECT uid FROM {view}").collect()}


@pytest.fixture(scope="module")
def teachers(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One pool scored by two teachers: 'l14' (negCLIPLoss, NormSim, NormSim2-D) and 'b32' (NormSim, CLIPScore),
    each into its own table; the B/32 embeddings of NAN_ROWS rows are NaN, so those rows are ok in one run only."""
    base = tmp_path_factory.mktemp("teachers")
    pool = base / "pool"
    generate_pool(pool, SPEC)
    b32_pool = base / "pool_b32"
    shutil.copytree(pool, b32_pool)
    first = sorted(b32_pool.glob("*.npz"))[0]
    with np.load(first) as npz:
        arrays = dict(npz)
    arrays["b32_img"][:NAN_ROWS] = np.nan
    np.savez(first, **arrays)
    targets = {a: generate_target(base / f"target_{a}.npy", n_rows=30, spec=SPEC, arch=a) for a in ("l14", "b32")}
    runs = {}
    for arch, dim, src in (("l14", SPEC.dim_l14, pool), ("b32", SPEC.dim, b32_pool)):
        data = {
            "input": {"kind": "datacomp", "path": str(src), "arch": arch, "dim": dim},
            "output": {"path": str(base / f"scores_{arch}")},
            "negclip": {"rounds": 2, "batch_size": 128, "seed": 4, "tau": 0.01},
            "normsim": {"targets": [{"name": "downstream", "path": str(targets[arch])}]},
            "normsim2_dynamic": {"enabled": arch == "l14", "candidate_fraction": 0.3, "final_fraction": 0.2,
                                 "iterations": 3},
        }  # fmt: skip
        result = score(spark, from_dict(ScoreConfig, data))
        df = spark.read.format("delta").load(data["output"]["path"]).drop("lineage").toPandas()
        runs[arch] = {"path": data["output"]["path"], "run_id": result.run_id, "frame": df}
    ok = {a: r["frame"][r["frame"]["status"] == STATUS.OK] for a, r in runs.items()}
    b32 = ok["b32"].drop(columns=["run_id", "status"]).add_prefix("b32__").rename(columns={"b32__uid": "uid"})
    joined = ok["l14"].merge(b32, on="uid", how="inner")
    return {"base": base, "pool": pool, "runs": runs, "joined": joined, "targets": targets}


def test_two_teachers_are_the_kernels_scores(teachers: dict[str, Any]) -> None:
    """The columns the rules below select on are the kernels' values on each teacher's embeddings."""
    frame = teachers["runs"]["b32"]["frame"].set_index("uid")
    target, _ = l2_normalize(np.load(teachers["targets"]["b32"]))
    for parquet in sorted(Path(teachers["pool"]).glob("*.parquet")):
        uids = [str(u) for u in pq.read_table(parquet, columns=["uid"]).column("uid").to_pylist()]
        with np.load(parquet.with_suffix(".npz")) as npz:
            img, _ = l2_normalize(npz["b32_img"])
            txt, _ = l2_normalize(npz["b32_txt"])
        rows = frame.loc[uids]
        ok = (rows["status"] == STATUS.OK).to_numpy()
        assert ok.sum() == len(uids) - (NAN_ROWS if parquet.stem == "00000" else 0)
        np.testing.assert_allclose(rows["clip_score"].to_numpy()[ok], clip_score(img, txt)[ok], atol=1e-5)
        np.testing.assert_allclose(rows["normsim_inf_downstream"].to_numpy()[ok], normsim_inf(img, target)[ok],
                                   atol=1e-5)  # fmt: skip


@pytest.fixture(scope="module")
def imports(spark: SparkSession, teachers: dict[str, Any]) -> dict[str, Any]:
    """External uid sets: 'dfn' (a .npy, unsorted, with duplicates and uids of no pool), 'hype' (a Delta table by
    path whose uid column is 'key'), and a view of another select run."""
    rng = np.random.default_rng(5)
    l14 = teachers["runs"]["l14"]["frame"]
    everyone = l14["uid"].to_numpy()
    dfn = rng.choice(everyone, size=int(0.4 * len(everyone)), replace=False)
    strangers = [hashlib.md5(f"stranger-{i}".encode()).hexdigest() for i in range(30)]
    rows = [*dfn, *strangers, *dfn[:25]]  # 25 duplicates
    arr = uid_pairs(rows)
    rng.shuffle(arr)
    dfn_npy = teachers["base"] / "dfn.npy"
    np.save(dfn_npy, arr)
    hype = rng.choice(everyone, size=int(0.3 * len(everyone)), replace=False)
    hype_path = str(teachers["base"] / "hype_uids")
    spark.createDataFrame([(str(u),) for u in hype], "key string").write.format("delta").save(hype_path)
    # A view from another select run (the B/32 run alone): its CLIPScore top half.
    select(spark, from_dict(SelectConfig, {
        "scores": {"path": teachers["runs"]["b32"]["path"]}, "view_prefix": "other_",
        "selections": [{"name": "cs50", "rule": "top_fraction", "column": "clip_score", "fraction": 0.5}],
    }))  # fmt: skip
    return {"dfn": set(map(str, dfn)), "dfn_npy": dfn_npy, "dfn_rows": len(rows), "strangers": set(strangers),
            "hype": set(map(str, hype)), "hype_path": hype_path, "other": _view(spark, "other_cs50")}  # fmt: skip


@pytest.fixture(scope="module")
def combined(spark: SparkSession, teachers: dict[str, Any], imports: dict[str, Any]) -> dict[str, Any]:
    runs = teachers["runs"]
    out = teachers["base"] / "out"
    data = {
        "scores": {"path": runs["l14"]["path"]},
        "run_id": runs["l14"]["run_id"],
        "join": [{"alias": "b32", "scores": {"path": runs["b32"]["path"]}, "run_id": runs["b32"]["run_id"]}],
        "view_prefix": "cmb_",
        "selections": [
            {"name": "dfn", "rule": "import", "source": {"npy": str(imports["dfn_npy"])}},
            {"name": "hype", "rule": "import", "source": {"path": imports["hype_path"], "uid_column": "key"}},
            {"name": "other", "rule": "import", "source": {"table": "other_cs50"}},
            {"name": "dfn_or_hype", "rule": "union", "of": ["dfn", "hype"]},
            {"name": "ours_in_dfn", "rule": "sequential", "within": "dfn", "column": "negclip_loss", "fraction": 0.9,
             "then_column": "b32.normsim_inf_downstream", "then_fraction": 0.8,
             "materialize": {"path": str(out / "ours_in_dfn")}, "export_npy": str(out / "ours_in_dfn.npy")},
            {"name": "ours_in_both", "rule": "sequential", "within": "dfn_or_hype", "column": "negclip_loss",
             "fraction": 0.9, "then_column": "b32.normsim_inf_downstream", "then_fraction": 0.7},
            {"name": "dfn_or_ours", "rule": "union", "of": ["hype", "ours_in_dfn"]},
            {"name": "cs_in_dfn", "rule": "top_fraction", "within": "dfn", "column": "b32.clip_score",
             "fraction": 0.5, "counting": "datacomp"},
            {"name": "ranks_in_hype", "rule": "sum_of_ranks", "within": "hype",
             "columns": ["negclip_loss", "b32.normsim_inf_downstream"], "fraction": 0.3},
            {"name": "thr_in_other", "rule": "threshold", "within": "other", "column": "clip_score", "min": 0.3},
            {"name": "two_teachers", "rule": "sequential", "column": "negclip_loss", "fraction": 0.3,
             "then_column": "b32.normsim_inf_downstream", "then_fraction": 0.2},
        ],
    }  # fmt: skip
    results = {r.name: r for r in select(spark, from_dict(SelectConfig, data))}
    return {"data": data, "results": results, "out": out}


def test_the_pool_is_the_uids_ok_in_both_runs(combined: dict[str, Any], teachers: dict[str, Any]) -> None:
    joined = teachers["joined"]
    l14_ok = (teachers["runs"]["l14"]["frame"]["status"] == STATUS.OK).sum()
    assert len(joined) == l14_ok - NAN_ROWS
    for r in combined["results"].values():
        assert r.pool_rows == len(joined)
        runs = {x["alias"]: x for x in r.cutoffs["runs"]}  # type: ignore[union-attr]
        assert runs[None]["ok_rows"] == l14_ok and runs["b32"]["ok_rows"] == l14_ok - NAN_ROWS
        for run in teachers["runs"].values():
            assert f"'{run['run_id']}'" in r.sql  # the recorded SQL names each run


def test_imports_are_the_external_sets_within_the_pool(
    spark: SparkSession, combined: dict[str, Any], teachers: dict[str, Any], imports: dict[str, Any]
) -> None:
    pool = set(teachers["joined"]["uid"])
    res = combined["results"]
    assert _view(spark, res["dfn"].view) == imports["dfn"] & pool
    assert _view(spark, res["hype"].view) == imports["hype"] & pool
    assert _view(spark, res["other"].view) == imports["other"] & pool
    assert _view(spark, res["dfn_or_hype"].view) == (imports["dfn"] | imports["hype"]) & pool
    got = res["dfn"].cutoffs
    sha = hashlib.sha256(Path(imports["dfn_npy"]).read_bytes()).hexdigest()
    assert got["source"] == str(imports["dfn_npy"]) and got["sha256"] == sha and got["import_id"] == f"npy-{sha}"
    assert got["uids"] == imports["dfn_rows"] and got["duplicates"] == 25 and got["sorted"] is False
    # Absent: the 30 strangers, and dfn's uids that are not ok in both runs.
    assert got["absent"] == 30 + len(imports["dfn"] - pool) and got["in_pool"] == len(imports["dfn"] & pool)
    assert res["hype"].cutoffs["kind"] == "table" and res["hype"].cutoffs["duplicates"] == 0
    # Recorded in the selections table too.
    table = spark.read.format("delta").load(teachers["runs"]["l14"]["path"] + "_selections").toPandas()
    recorded = json.loads(table.set_index("name").loc["dfn", "cutoffs"])
    assert recorded["sha256"] == sha and recorded["absent"] == got["absent"]


def test_within_takes_fractions_of_the_selection(
    spark: SparkSession, combined: dict[str, Any], teachers: dict[str, Any], imports: dict[str, Any]
) -> None:
    joined = teachers["joined"]
    res = combined["results"]
    ncl, ns_b32 = "negclip_loss", "b32__normsim_inf_downstream"
    dfn = joined[joined["uid"].isin(imports["dfn"])]
    assert _view(spark, res["ours_in_dfn"].view) == _sequential(dfn, ncl, 0.9, ns_b32, 0.8)
    assert res["ours_in_dfn"].cutoffs["population"] == len(dfn)
    assert res["ours_in_dfn"].rows == int(len(dfn) * 0.8)
    both = joined[joined["uid"].isin(imports["dfn"] | imports["hype"])]
    assert _view(spark, res["ours_in_both"].view) == _sequential(both, ncl, 0.9, ns_b32, 0.7)
    assert _view(spark, res["dfn_or_ours"].view) == (imports["hype"] & set(joined["uid"])) | _sequential(
        dfn, ncl, 0.9, ns_b32, 0.8
    )
    # DataComp counting within: score >= the (int(n·f)+1)-th value of the population.
    theta = dfn["b32__clip_score"].sort_values(ascending=False).iloc[int(len(dfn) * 0.5)]
    assert _view(spark, res["cs_in_dfn"].view) == set(dfn.loc[dfn["b32__clip_score"] >= theta, "uid"])
    # Sum of ranks over the population: ascending ordinal ranks (equal values ordered by uid), n the population's.
    hype = joined[joined["uid"].isin(imports["hype"])].sort_values("uid", kind="mergesort")
    n = len(hype)
    hype["rs"] = sum(hype[c].rank(method="first").astype("int64") - 1 for c in (ncl, ns_b32))
    assert _view(spark, res["ranks_in_hype"].view) == set(_top(hype, "rs", int(n * 0.3))["uid"])
    other = joined[joined["uid"].isin(imports["other"])]
    assert _view(spark, res["thr_in_other"].view) == set(other.loc[other["clip_score"] >= 0.3, "uid"])
    assert _view(spark, res["two_teachers"].view) == _sequential(joined, ncl, 0.3, ns_b32, 0.2)


def test_views_carry_both_runs_columns_and_exports_work(
    spark: SparkSession, combined: dict[str, Any], teachers: dict[str, Any]
) -> None:
    view = combined["results"]["ours_in_dfn"].view
    columns = spark.table(view).columns
    assert {"negclip_loss", "b32__normsim_inf_downstream", "b32__run_id", "b32__clip_score"} <= set(columns)
    uids = _view(spark, view)
    out = combined["out"]
    assert {r["uid"] for r in spark.read.format("delta").load(str(out / "ours_in_dfn")).collect()} == uids
    arr = np.load(out / "ours_in_dfn.npy")
    assert arr.dtype == np.dtype("u8,u8") and len(arr) == len(uids)
    assert set(uid_pairs(sorted(uids)).tolist()) == set(arr.tolist())


def test_a_second_select_reuses_the_landed_imports(
    spark: SparkSession, combined: dict[str, Any], teachers: dict[str, Any]
) -> None:
    imports_path = teachers["runs"]["l14"]["path"] + "_imports"
    before = spark.sql(f"DESCRIBE HISTORY delta.`{imports_path}`").count()
    imports = [s for s in combined["data"]["selections"] if s["rule"] == "import"]
    again = select(spark, from_dict(SelectConfig, {**combined["data"], "view_prefix": "cmb2_", "selections": imports}))
    assert spark.sql(f"DESCRIBE HISTORY delta.`{imports_path}`").count() == before
    assert {r.name: r.rows for r in again} == {s["name"]: combined["results"][s["name"]].rows for s in imports}
    assert {r.name: r.cutoffs["import_id"] for r in again} == {
        s["name"]: combined["results"][s["name"]].cutoffs["import_id"] for s in imports
    }


@pytest.mark.parametrize("kind", [*BAD_SUBSET_FILES, "all_absent", "wrong_suffix"])
def test_bad_subset_files_are_one_clear_error(
    spark: SparkSession, teachers: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.npy"
    if kind == "all_absent":
        np.save(path, uid_pairs([hashlib.md5(str(i).encode()).hexdigest() for i in range(10)]))
    elif kind == "wrong_suffix":
        path = tmp_path / "uids.txt"
    else:
        write_bad_subset(kind, path)
    expected = {**BAD_SUBSET_FILES, "all_absent": "none of the 10 uids", "wrong_suffix": "ending in .npy"}[kind]
    data = {
        "scores": {"path": teachers["runs"]["l14"]["path"]},
        "view_prefix": "bad_",
        "selections": [{"name": "ext", "rule": "import", "source": {"npy": str(path)}}],
    }
    with pytest.raises(ConfigError) as err:
        select(spark, from_dict(SelectConfig, data))
    assert err.value.key.startswith("selections[0].source"), err.value.key
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_table_imports_and_joins_are_one_clear_error(spark: SparkSession, teachers: dict[str, Any]) -> None:
    runs = teachers["runs"]

    def error(**extra: Any) -> ConfigError:
        data = {
            "scores": {"path": runs["l14"]["path"]},
            "view_prefix": "bad_",
            "selections": [{"name": "x", "rule": "top_fraction", "column": "clip_score", "fraction": 0.1}],
        }
        data.update(extra)  # fmt: skip
        with pytest.raises(ConfigError) as err:
            select(spark, from_dict(SelectConfig, data))
        return err.value

    missing = error(selections=[{"name": "x", "rule": "import", "source": {"path": str(teachers["base"] / "none")}}])
    assert missing.key == "selections[0].source.path" and "no table" in str(missing)
    no_col = error(selections=[{"name": "x", "rule": "import", "source": {"path": runs["b32"]["path"],
                                                                          "uid_column": "key"}}])  # fmt: skip
    assert no_col.key == "selections[0].source.uid_column" and "no column 'key'" in str(no_col)
    no_alias = error(selections=[{"name": "x", "rule": "top_fraction", "column": "b32.clip_score", "fraction": 0.1}])
    assert no_alias.key == "selections[0]" and "'b32'" in str(no_alias)
    no_table = error(join=[{"alias": "b32", "scores": {"path": str(teachers["base"] / "none")}}])
    assert no_table.key == "join[0].scores.path" and "no score table" in str(no_table)
    no_column = error(
        join=[{"alias": "b32", "scores": {"path": runs["b32"]["path"]}}],
        selections=[{"name": "x", "rule": "top_fraction", "column": "b32.nope", "fraction": 0.1}],
    )
    assert no_column.key == "selections[0]" and "b32.nope" in str(no_column)
    within_later = error(selections=[
        {"name": "x", "rule": "top_fraction", "column": "clip_score", "fraction": 0.1, "within": "y"},
        {"name": "y", "rule": "top_fraction", "column": "clip_score", "fraction": 0.1},
    ])  # fmt: skip
    assert within_later.key == "selections[0].within"


def test_the_papers_recipes_run_as_shipped(
    spark: SparkSession, teachers: dict[str, Any], imports: dict[str, Any], tmp_path: Path
) -> None:
    """examples/select_paper.yaml (D1, D2: the L/14 run) and select_paper_d3.yaml (D3: DFN-P and B/32 runs with
    DFN's and HYPE's subsets), with only their table names and paths pointed at this test's."""
    runs = teachers["runs"]
    d12 = yaml.safe_load((ROOT / "examples" / "select_paper.yaml").read_text())
    d12.update(scores={"path": runs["l14"]["path"]}, view_schema=None, view_prefix="paper_")
    nsd20 = next(s for s in d12["selections"] if s["name"] == "nsd20")
    assert nsd20["min"] == 500  # the example's T; this test's run iterated 3 times
    nsd20["min"] = 3
    got = {r.name: r for r in select(spark, from_dict(SelectConfig, d12))}
    pool = teachers["runs"]["l14"]["frame"]
    pool = pool[pool["status"] == STATUS.OK]
    assert _view(spark, got["ncl30"].view) == set(_top(pool, "negclip_loss", int(len(pool) * 0.3))["uid"])
    nsd = set(pool.loc[pool["normsim2d_survived"] >= 3, "uid"])
    assert len(nsd) == int(len(pool) * 0.2)
    assert _view(spark, got["ncl30_nsd"].view) == set(_top(pool, "negclip_loss", int(len(pool) * 0.3))["uid"]) & nsd

    d3 = yaml.safe_load((ROOT / "examples" / "select_paper_d3.yaml").read_text())
    hype_npy = tmp_path / "hype.npy"
    write_subset_npy(uid_pairs(sorted(imports["hype"])), str(hype_npy))
    d3.update(scores={"path": runs["l14"]["path"]}, view_schema=None, view_prefix="d3_")
    d3["join"][0]["scores"] = {"path": runs["b32"]["path"]}
    sources = {"dfn": str(imports["dfn_npy"]), "hype": str(hype_npy)}
    for sel in d3["selections"]:
        if sel["rule"] == "import":
            sel["source"]["npy"] = sources[sel["name"]]
        sel.pop("export_npy", None)
        sel.pop("materialize", None)
    got = {r.name: r for r in select(spark, from_dict(SelectConfig, d3))}
    joined = teachers["joined"]
    ncl, ns_b32 = "negclip_loss", "b32__normsim_inf_downstream"
    dfn = joined[joined["uid"].isin(imports["dfn"])]
    either = joined[joined["uid"].isin(imports["dfn"] | imports["hype"])]
    assert _view(spark, got["dfn_ours"].view) == _sequential(dfn, ncl, 0.9, ns_b32, 0.8)
    assert _view(spark, got["dfn_hype_ours"].view) == _sequential(either, ncl, 0.9, ns_b32, 0.7)
