"""Jobs-tier tests of ``clipsift.jobs.select.run``: each selection's SQL view against a pandas computation on the
(small) collected score table, plus the selections table, materialisations and DataComp subset files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from clipsift.jobs.config import ConfigError, SelectConfig, from_dict
from clipsift.jobs.select import run
from clipsift.udfs.schemas import STATUS

PREFIX = "sj_"


def _top(frame: pd.DataFrame, column: str, n: int) -> pd.DataFrame:
    """The top n rows by (column desc, uid asc), rows where column is null never counted."""
    ranked = frame.dropna(subset=[column]).sort_values([column, "uid"], ascending=[False, True], kind="mergesort")
    return ranked.iloc[: max(n, 0)]


def _view(spark: SparkSession, name: str) -> set[str]:
    return {r["uid"] for r in spark.sql(f"SELECT uid FROM `{name}`").collect()}


@pytest.fixture(scope="module")
def selected(spark: SparkSession, scored: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("selected")
    data = {
        "scores": {"path": scored.data["output"]["path"]},
        "run_id": scored.result.run_id,
        "view_prefix": PREFIX,
        "selections": [
            {"name": "top_exact", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3,
             "export_npy": str(out / "top_exact.npy")},
            {"name": "top_dc", "rule": "top_fraction", "column": "clip_score", "fraction": 0.25,
             "counting": "datacomp"},
            {"name": "seq", "rule": "sequential", "column": "negclip_loss", "fraction": 0.3,
             "then_column": "normsim_inf_tgt", "then_fraction": 0.2, "materialize": {"path": str(out / "seq_uids")}},
            {"name": "sor", "rule": "sum_of_ranks", "columns": ["negclip_loss", "normsim_inf_tgt"], "fraction": 0.2},
            {"name": "thr", "rule": "threshold", "column": "clip_score", "min": 0.25, "max": 0.35},
            {"name": "both", "rule": "intersect", "of": ["top_exact", "top_dc"]},
            {"name": "either", "rule": "union", "of": ["top_exact", "top_dc", "thr"]},
            # normsim2d_survived is null outside NormSim2-D's CLIPScore pre-filter (half the pool).
            {"name": "sor_nulls", "rule": "sum_of_ranks", "columns": ["clip_score", "normsim2d_survived"],
             "fraction": 0.1},
        ],
    }  # fmt: skip
    results = run(spark, from_dict(SelectConfig, data))
    return {"data": data, "results": {r.name: r for r in results}, "frame": scored.frame, "out": out}


def test_results_match_views(spark: SparkSession, selected: dict[str, Any]) -> None:
    results = selected["results"]
    assert list(results) == ["top_exact", "top_dc", "seq", "sor", "thr", "both", "either", "sor_nulls"]
    for name, r in results.items():
        assert r.view == f"`{PREFIX}{name}`"
        assert r.pool_rows == 800
        assert r.rows == len(_view(spark, PREFIX + name))
        count = spark.sql(f"SELECT COUNT(*) AS n FROM {r.view}").first()
        assert count is not None and count["n"] == r.rows


def test_top_fraction_exact(spark: SparkSession, selected: dict[str, Any]) -> None:
    frame = selected["frame"]
    got = _view(spark, PREFIX + "top_exact")
    assert len(got) == int(800 * 0.3) == 240
    assert got == set(_top(frame, "negclip_loss", 240)["uid"])


def test_top_fraction_datacomp_counting(spark: SparkSession, selected: dict[str, Any]) -> None:
    frame = selected["frame"]
    n = int(800 * 0.25)
    theta = frame["clip_score"].sort_values(ascending=False).iloc[n]  # the (n+1)-th largest
    expected = set(frame.loc[frame["clip_score"] >= theta, "uid"])
    got = _view(spark, PREFIX + "top_dc")
    assert got == expected
    if (frame["clip_score"] == theta).sum() == 1:  # no tie at the cut-off
        assert len(got) == n + 1
    assert selected["results"]["top_dc"].cutoffs["n"] == n


def test_sequential(spark: SparkSession, selected: dict[str, Any]) -> None:
    frame = selected["frame"]
    first = _top(frame, "negclip_loss", int(800 * 0.3))
    expected = set(_top(first, "normsim_inf_tgt", int(800 * 0.2))["uid"])
    got = _view(spark, PREFIX + "seq")
    assert len(got) == 160
    assert got <= _view(spark, PREFIX + "top_exact")
    assert got == expected
    # Not simply the NormSim top 20% of the pool.
    assert got != set(_top(frame, "normsim_inf_tgt", 160)["uid"])


def test_sum_of_ranks(spark: SparkSession, selected: dict[str, Any]) -> None:
    frame = selected["frame"].copy()
    n = len(frame)
    # Rank ratio r(x) = (ascending ordinal rank from 0, equal values ordered by uid) / N over the whole pool; keep
    # the top int(N·f) of r(a) + r(b), ties by uid. The sum is compared as exact integers (N·r).
    frame = frame.sort_values("uid", kind="mergesort")
    ranks = [frame[c].rank(method="first", ascending=True).to_numpy() - 1 for c in ("negclip_loss", "normsim_inf_tgt")]
    frame["rank_sum"] = (ranks[0] + ranks[1]).astype(np.int64)
    assert frame["rank_sum"].duplicated().any()  # ties in the sum exist, so the uid rule matters
    expected = set(_top(frame, "rank_sum", int(n * 0.2))["uid"])
    got = _view(spark, PREFIX + "sor")
    assert len(got) == 160
    assert got == expected
    # The rank sums are kept beside the scores, one row per ranked row, and equal the ones computed here.
    ranks_path = selected["data"]["scores"]["path"] + "_ranks"
    kept = spark.read.format("delta").load(ranks_path).where(f"view = '{PREFIX}sor'").toPandas()
    assert len(kept) == n
    stored = dict(zip(kept["uid"], kept["rank_sum"], strict=True))
    assert stored == dict(zip(frame["uid"], frame["rank_sum"], strict=True))


def test_sum_of_ranks_with_a_nullable_column(spark: SparkSession, selected: dict[str, Any]) -> None:
    frame = selected["frame"]
    assert frame["normsim2d_survived"].isna().sum() == 400
    got = _view(spark, PREFIX + "sor_nulls")
    assert selected["results"]["sor_nulls"].rows == len(got)
    assert len(got) == int(800 * 0.1)
    assert got <= set(frame.loc[frame["normsim2d_survived"].notna(), "uid"])


def test_threshold(spark: SparkSession, selected: dict[str, Any]) -> None:
    frame = selected["frame"]
    expected = set(frame.loc[(frame["clip_score"] >= 0.25) & (frame["clip_score"] <= 0.35), "uid"])
    assert 0 < len(expected) < 800
    assert _view(spark, PREFIX + "thr") == expected


def test_intersect_and_union(spark: SparkSession, selected: dict[str, Any]) -> None:
    top, dc, thr = (_view(spark, PREFIX + n) for n in ("top_exact", "top_dc", "thr"))
    both, either = _view(spark, PREFIX + "both"), _view(spark, PREFIX + "either")
    assert both == top & dc
    assert either == top | dc | thr
    assert 0 < len(both) < len(either)


def test_views_carry_the_score_columns(spark: SparkSession, selected: dict[str, Any]) -> None:
    df = spark.table(PREFIX + "seq")
    for col in ("uid", "status", "run_id", "negclip_loss", "normsim_inf_tgt", "clip_score"):
        assert col in df.columns
    statuses = {r["status"] for r in df.select("status").distinct().collect()}
    assert statuses == {STATUS.OK}


def test_selections_table(spark: SparkSession, selected: dict[str, Any], scored: Any) -> None:
    path = scored.data["output"]["path"] + "_selections"
    recorded = spark.read.format("delta").load(path).where(f"run_id = '{scored.result.run_id}'").collect()
    # The shared run also has other tests' selections (test_report's): this select's are those of its views.
    rows = {r["name"]: r for r in recorded if r["view"].startswith(f"`{PREFIX}")}
    assert set(rows) == set(selected["results"])
    for name, r in rows.items():
        res = selected["results"][name]
        assert (r["rule"], r["rows"], r["pool_rows"], r["view"]) == (res.rule, res.rows, 800, res.view)
        assert r["sql"] == res.sql and "SELECT" in r["sql"]
        assert json.loads(r["params"])["name"] == name
    cut = json.loads(rows["top_exact"]["cutoffs"])
    assert cut["n"] == 240 and cut["negclip_loss"]["uid"] is not None


def test_materialize(spark: SparkSession, selected: dict[str, Any], scored: Any) -> None:
    table = spark.read.format("delta").load(str(selected["out"] / "seq_uids"))
    assert sorted(table.columns) == ["run_id", "selection", "uid"]
    rows = table.collect()
    assert {r["uid"] for r in rows} == _view(spark, PREFIX + "seq")
    assert len(rows) == 160
    assert {(r["selection"], r["run_id"]) for r in rows} == {("seq", scored.result.run_id)}


def test_export_npy(spark: SparkSession, selected: dict[str, Any]) -> None:
    arr = np.load(selected["out"] / "top_exact.npy")
    assert arr.dtype == np.dtype("u8,u8")
    uids = _view(spark, PREFIX + "top_exact")
    expected = sorted((int(u[:16], 16), int(u[16:], 16)) for u in uids)
    assert arr.tolist() == expected
    assert len(arr) == 240
    # Exports are written only where asked: the subset file and the materialised table, no temporary file left.
    assert sorted(p.name for p in selected["out"].iterdir()) == ["seq_uids", "top_exact.npy"]


def test_unknown_column_and_empty_run(spark: SparkSession, scored: Any) -> None:
    base = {"scores": {"path": scored.data["output"]["path"]}, "run_id": scored.result.run_id}
    bad_col = {**base, "selections": [{"name": "x", "rule": "top_fraction", "column": "nope", "fraction": 0.1}]}
    with pytest.raises(ConfigError, match="nope"):
        run(spark, from_dict(SelectConfig, bad_col))
    no_run = {**bad_col, "run_id": "no-such-run"}
    no_run["selections"] = [{"name": "x", "rule": "top_fraction", "column": "clip_score", "fraction": 0.1}]
    with pytest.raises(ValueError, match="no-such-run"):
        run(spark, from_dict(SelectConfig, no_run))


def test_a_missing_score_table_is_one_line_before_any_work(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clipsift.jobs.select import main

    cfg = tmp_path / "select.yaml"
    selections = [{"name": "x", "rule": "top_fraction", "column": "clip_score", "fraction": 0.1}]
    cfg.write_text(json.dumps({"scores": {"path": str(tmp_path / "nowhere")}, "selections": selections}))
    assert main(["--config", str(cfg)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'scores.path'" in lines[0] and "nowhere" in lines[0], lines
    assert "run clipsift score first" in lines[0]


# --------------------------------------------------------------------------------------------------
# Ties, reruns and the latest run, on a hand-made score table


@pytest.fixture(scope="module")
def tied(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two runs of 200 ok rows whose 'tie' column has 4 values, plus non-ok rows scoring above them all."""
    rng = np.random.default_rng(8)
    rows = []
    for run_id in ("r1", "r2"):
        for _i in range(200):
            uid = f"{rng.integers(1 << 62):016x}{rng.integers(1 << 62):016x}"
            rows.append((uid, STATUS.OK, float(rng.integers(0, 4)), run_id))
        rows += [(f"bad{i}", STATUS.NULL_EMBEDDING, 100.0, run_id) for i in range(5)]
    path = str(tmp_path_factory.mktemp("tied") / "scores")
    spark.createDataFrame(rows, "uid string, status string, tie double, run_id string").write.format("delta").save(path)
    spark.createDataFrame(
        [("r1", "2024-01-01 00:00:00"), ("r2", "2024-06-01 00:00:00")], "run_id string, started_at string"
    ).selectExpr("run_id", "CAST(started_at AS TIMESTAMP) AS started_at").write.format("delta").save(path + "_runs")
    frame = pd.DataFrame(rows, columns=["uid", "status", "tie", "run_id"])
    return {"path": path, "frame": frame}


def _tie_config(path: str, fraction: float, run_id: str | None = None, **extra: Any) -> SelectConfig:
    data: dict[str, Any] = {
        "scores": {"path": path},
        "view_prefix": "tied_",
        "selections": [
            {"name": "exact", "rule": "top_fraction", "column": "tie", "fraction": fraction},
            {"name": "dc", "rule": "top_fraction", "column": "tie", "fraction": fraction, "counting": "datacomp"},
        ],
        **extra,
    }
    if run_id is not None:
        data["run_id"] = run_id
    return from_dict(SelectConfig, data)


def test_ties_exact_counting(spark: SparkSession, tied: dict[str, Any]) -> None:
    frame = tied["frame"]
    ok = frame[(frame["run_id"] == "r1") & (frame["status"] == STATUS.OK)]
    assert ok["tie"].value_counts().min() > 20
    for fraction in (0.37, 1.0):
        run(spark, _tie_config(tied["path"], fraction, "r1"))
        n = int(200 * fraction)
        got = _view(spark, "tied_exact")
        assert len(got) == n, fraction
        assert got == set(_top(ok, "tie", n)["uid"])
        theta = ok["tie"].sort_values(ascending=False).iloc[min(n, 199)]
        assert _view(spark, "tied_dc") == set(ok.loc[ok["tie"] >= theta, "uid"])


def test_latest_run_and_rerun_bookkeeping(spark: SparkSession, tied: dict[str, Any]) -> None:
    frame = tied["frame"]
    results = run(spark, _tie_config(tied["path"], 0.25))  # no run_id: the latest run, r2
    assert {r.name: r.rows for r in results}["exact"] == 50
    r2 = frame[(frame["run_id"] == "r2") & (frame["status"] == STATUS.OK)]
    assert _view(spark, "tied_exact") == set(_top(r2, "tie", 50)["uid"])

    run(spark, _tie_config(tied["path"], 0.25, "r1"))
    run(spark, _tie_config(tied["path"], 0.1, "r1"))  # rerun: replaces the views and r1's rows
    assert len(_view(spark, "tied_exact")) == 20
    table = spark.read.format("delta").load(tied["path"] + "_selections").toPandas()
    assert not table.duplicated(["run_id", "name"]).any()
    assert {(r, n) for r, n in zip(table["run_id"], table["name"], strict=True)} >= {
        ("r1", "exact"), ("r1", "dc"), ("r2", "exact"), ("r2", "dc"),
    }  # fmt: skip
    rows = table.set_index(["run_id", "name"])["rows"]
    assert rows[("r1", "exact")] == 20 and rows[("r2", "exact")] == 50

    # Renaming the prefix keeps one row per (run, name) too.
    cfg = _tie_config(tied["path"], 0.5, "r1", view_prefix="tied2_")
    run(spark, cfg)
    table = spark.read.format("delta").load(tied["path"] + "_selections").toPandas()
    assert not table.duplicated(["run_id", "name"]).any()
    assert table.set_index(["run_id", "name"]).loc[("r1", "exact"), "view"] == "`tied2_exact`"
    assert len(_view(spark, "tied2_exact")) == 100


def test_a_run_missing_from_the_runs_table_is_not_skipped_silently(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A score run that stopped between its score commit and its runs row: without a run_id, select must not pick
    the previous run as the latest."""
    path = str(tmp_path_factory.mktemp("orphan") / "scores")
    rows = [(f"{i:032x}", STATUS.OK, float(i), run) for run in ("r1", "r2") for i in range(20)]
    spark.createDataFrame(rows, "uid string, status string, tie double, run_id string").write.format("delta").save(path)
    spark.createDataFrame([("r1",)], "run_id string").selectExpr(
        "run_id", "CAST('2024-01-01 00:00:00' AS TIMESTAMP) AS started_at"
    ).write.format("delta").save(path + "_runs")
    with pytest.raises(ConfigError) as err:
        run(spark, _tie_config(path, 0.5))
    assert err.value.key == "run_id" and "r2" in str(err.value) and "rerun clipsift score" in str(err.value)
    assert {r.name: r.rows for r in run(spark, _tie_config(path, 0.5, "r1"))}["exact"] == 10  # named: fine
