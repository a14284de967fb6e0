"""Unit tests for clipsift.jobs.config: YAML + ``--set`` loading, strict keys, types, ranges and rules (no Spark).

Also checks that the jobs' ``main`` turns a bad config into exit status 2 and one line on stderr
without ever asking for a SparkSession.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from clipsift.jobs.config import ClipSelectConfig, ConfigError, EmbedConfig, ScoreConfig, SelectConfig, from_dict, load

SCORE_YAML: dict[str, Any] = {
    "input": {"kind": "datacomp", "path": "/data/pool", "arch": "b32"},
    "output": {"path": "/tmp/scores"},
    "negclip": {"rounds": 3, "batch_size": 128},
}

SELECT_YAML: dict[str, Any] = {
    "scores": {"path": "/tmp/scores"},
    "selections": [{"name": "top", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3}],
}


def _write(tmp_path: Path, data: Any, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _score(**changes: Any) -> dict[str, Any]:
    """A valid score-config mapping with top-level sections replaced or merged."""
    data: dict[str, Any] = {k: dict(v) for k, v in SCORE_YAML.items()}
    for section, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    return data


def _select(*selections: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"scores": {"path": "/tmp/scores"}, "selections": list(selections), **top}


def _score_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(ScoreConfig, data)
    return info.value


def _select_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(SelectConfig, data)
    return info.value


# --------------------------------------------------------------------------------------------------
# Loading: file + overrides


def test_load_yaml_file_with_typed_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, SCORE_YAML)
    cfg = load(
        ScoreConfig,
        path,
        [
            "negclip.rounds=5",
            "negclip.tau=0.07",
            "negclip.enabled=false",
            "normsim.norms=[2,inf]",
            "normsim2_dynamic.iterations=7",  # a section absent from the file
            "run_id=my-run.1",
        ],
    )
    assert cfg.input.path == "/data/pool"
    assert cfg.input.arch == "b32"
    assert cfg.input.expected_dim == 512
    assert cfg.output.path == "/tmp/scores"
    assert cfg.negclip.rounds == 5 and isinstance(cfg.negclip.rounds, int)
    assert cfg.negclip.batch_size == 128  # from the file, untouched by the overrides
    assert cfg.negclip.tau == pytest.approx(0.07) and isinstance(cfg.negclip.tau, float)
    assert cfg.negclip.enabled is False
    assert cfg.normsim.norms == ("2", "inf")
    assert cfg.normsim2_dynamic.iterations == 7
    assert cfg.normsim2_dynamic.enabled is False  # default kept
    assert cfg.run_id == "my-run.1"


def test_override_of_a_file_value_wins_and_int_becomes_float(tmp_path: Path) -> None:
    path = _write(tmp_path, _score(negclip={"tau": 0.02}))
    cfg = load(ScoreConfig, path, ["negclip.rounds=9", "negclip.tau=1"])
    assert cfg.negclip.rounds == 9
    assert cfg.negclip.tau == 1.0 and isinstance(cfg.negclip.tau, float)


def test_load_select_file(tmp_path: Path) -> None:
    path = _write(tmp_path, SELECT_YAML)
    cfg = load(SelectConfig, path, ["view_prefix=exp1_"])
    assert cfg.scores.path == "/tmp/scores"
    assert [s.name for s in cfg.selections] == ["top"]
    assert cfg.selections[0].fraction == pytest.approx(0.3)
    assert cfg.selections[0].counting == "exact"
    assert cfg.view_prefix == "exp1_"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(ScoreConfig, tmp_path / "nope.yaml")
    assert info.value.key == "--config"
    assert "nope.yaml" in str(info.value)


def test_config_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load(ScoreConfig, path)
    assert info.value.key == "--config"


@pytest.mark.parametrize("override", ["negclip.rounds", "negclip..rounds=3", ".rounds=3"])
def test_malformed_override(tmp_path: Path, override: str) -> None:
    with pytest.raises(ConfigError):
        load(ScoreConfig, _write(tmp_path, SCORE_YAML), [override])


def test_override_below_a_scalar(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(ScoreConfig, _write(tmp_path, SCORE_YAML), ["negclip.rounds.x=1"])
    assert "rounds" in str(info.value)


def test_override_of_a_dotted_spark_conf_key(tmp_path: Path) -> None:
    """Spark settings have dots in their names: ``--set spark.conf.<key>=v`` must give that one key."""
    data = _score(spark={"conf": {"spark.executor.memory": "4g"}})
    cfg = load(
        ScoreConfig,
        _write(tmp_path, data),
        ["spark.conf.spark.sql.shuffle.partitions=8", "spark.conf.spark.sql.adaptive.enabled=false"],
    )
    assert dict(cfg.spark.conf) == {
        "spark.executor.memory": "4g",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.adaptive.enabled": "false",
    }


# --------------------------------------------------------------------------------------------------
# Unknown keys and wrong types


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_score(outptu={"path": "/x"}), "outptu"),
        (_score(negclip={"roundz": 3}), "negclip.roundz"),
        (_score(input={"shard_column": "s"}), "input.shard_column"),
        (_score(normsim={"targets": [{"name": "t", "path": "/t.npy", "kee": "x"}]}), "normsim.targets[0].kee"),
        (_score(spark={"app": "x"}), "spark.app"),
    ],
)
def test_unknown_key_names_the_full_path(data: dict[str, Any], key: str) -> None:
    err = _score_error(data)
    assert err.key == key
    assert f"'{key}'" in str(err)
    assert "unknown key" in str(err)


def test_unknown_key_inside_a_selection() -> None:
    err = _select_error(_select({"name": "a", "rule": "threshold", "colum": "clip_score", "min": 0.2}))
    assert err.key == "selections[0].colum"


def test_unknown_top_level_key_via_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(ScoreConfig, _write(tmp_path, SCORE_YAML), ["negclip.roundz=4"])
    assert info.value.key == "negclip.roundz"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_score(negclip={"rounds": "five"}), "negclip.rounds"),
        (_score(negclip={"rounds": 2.0}), "negclip.rounds"),
        (_score(negclip={"rounds": True}), "negclip.rounds"),
        (_score(negclip={"tau": "small"}), "negclip.tau"),
        (_score(negclip={"tau": False}), "negclip.tau"),
        (_score(negclip={"enabled": "yes"}), "negclip.enabled"),
        (_score(negclip={"grouping": "batch"}), "negclip.grouping"),
        (_score(negclip="fast"), "negclip"),
        (_score(input={"arch": "h14"}), "input.arch"),
        (_score(input={"kind": "csv"}), "input.kind"),
        (_score(input={"dim": "512"}), "input.dim"),
        (_score(output={"path": None}), "output.path"),  # Optional, so null is allowed ...
        (_score(spark={"conf": ["a"]}), "spark.conf"),
        (_score(normsim={"targets": [{"name": "t"}]}), "normsim.targets[0].path"),
    ],
)
def test_wrong_types_name_the_key(data: dict[str, Any], key: str) -> None:
    err = _score_error(data)
    if key == "output.path":
        # ... but then neither table nor path is given.
        assert err.key == "output"
    else:
        assert err.key == key


def test_required_key_missing() -> None:
    data = _score()
    del data["output"]
    assert _score_error(data).key == "output"
    sel = _select({"rule": "threshold", "column": "c", "min": 0})
    assert _select_error(sel).key == "selections[0].name"


# --------------------------------------------------------------------------------------------------
# Ranges


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("negclip", {"rounds": 0}, "negclip.rounds"),
        ("negclip", {"rounds": -2}, "negclip.rounds"),
        ("negclip", {"batch_size": 0}, "negclip.batch_size"),
        ("negclip", {"tau": 0}, "negclip.tau"),
        ("negclip", {"tau": -0.01}, "negclip.tau"),
        ("negclip", {"tau": float("inf")}, "negclip.tau"),
        ("negclip", {"tau": float("nan")}, "negclip.tau"),
        ("negclip", {"batch_size": 64, "pool_group_rows": 63}, "negclip.pool_group_rows"),
        ("negclip", {"block_rows": 0}, "negclip.block_rows"),
        ("negclip", {"device": "gpu"}, "negclip.device"),
        ("negclip", {"device": "cuda:x"}, "negclip.device"),
        ("negclip", {"precision": "fp16"}, "negclip.precision"),
        ("negclip", {"device": "cpu", "precision": "bf16"}, "negclip.precision"),
        ("normsim", {"device": "tpu"}, "normsim.device"),
        ("normsim", {"device": "cpu", "precision": "tf32"}, "normsim.precision"),
        ("normsim2_dynamic", {"candidate_fraction": 0}, "normsim2_dynamic.candidate_fraction"),
        ("normsim2_dynamic", {"candidate_fraction": 1.5}, "normsim2_dynamic.candidate_fraction"),
        ("normsim2_dynamic", {"final_fraction": -0.1}, "normsim2_dynamic.final_fraction"),
        ("normsim2_dynamic", {"candidate_fraction": 0.2, "final_fraction": 0.3}, "normsim2_dynamic.final_fraction"),
        ("normsim2_dynamic", {"iterations": 0}, "normsim2_dynamic.iterations"),
        ("input", {"dim": 0}, "input.dim"),
        ("normsim", {"norms": ["3"]}, "normsim.norms"),
        ("normsim", {"norms": []}, "normsim.norms"),
        ("normsim", {"block_size": 0}, "normsim.block_size"),
    ],
)
def test_out_of_range(section: str, values: dict[str, Any], key: str) -> None:
    err = _score_error(_score(**{section: values}))
    assert err.key == key


@pytest.mark.parametrize(
    "values",
    [
        {"candidate_fraction": 1.0, "final_fraction": 1.0},
        {"candidate_fraction": 0.3, "final_fraction": 0.3},
        {"candidate_fraction": 0.001, "final_fraction": 0.0005},
    ],
)
def test_fraction_bounds_inclusive(values: dict[str, Any]) -> None:
    cfg = from_dict(ScoreConfig, _score(normsim2_dynamic=values))
    assert cfg.normsim2_dynamic.final_fraction == values["final_fraction"]


def test_pool_group_rows_equal_to_batch_size_is_fine() -> None:
    cfg = from_dict(ScoreConfig, _score(negclip={"batch_size": 64, "pool_group_rows": 64, "grouping": "pool"}))
    assert cfg.negclip.group_rows == 64
    assert from_dict(ScoreConfig, _score(negclip={"batch_size": 64})).negclip.group_rows == 8 * 64


def test_targets_rules() -> None:
    ok = {"targets": [{"name": "in1k", "path": "/t/a.npy"}, {"name": "tasks", "path": "/t/b.npz", "key": "x"}]}
    cfg = from_dict(ScoreConfig, _score(normsim=ok))
    assert [t.name for t in cfg.normsim.targets] == ["in1k", "tasks"]
    dup = {"targets": [{"name": "a", "path": "/t/a.npy"}, {"name": "a", "path": "/t/b.npy"}]}
    assert _score_error(_score(normsim=dup)).key == "normsim.targets"
    bad_name = {"targets": [{"name": "in-1k", "path": "/t/a.npy"}]}
    assert _score_error(_score(normsim=bad_name)).key == "normsim.targets[0].name"
    bad_suffix = {"targets": [{"name": "a", "path": "/t/a.csv"}]}
    assert _score_error(_score(normsim=bad_suffix)).key == "normsim.targets[0].path"


def test_run_id_characters() -> None:
    assert _score_error(_score(run_id="a b")).key == "run_id"
    assert _score_error(_score(run_id="x" * 65)).key == "run_id"
    assert from_dict(ScoreConfig, _score(run_id="r_1.2-3")).run_id == "r_1.2-3"


# --------------------------------------------------------------------------------------------------
# Table vs path


@pytest.mark.parametrize(
    ("output", "key"),
    [
        ({"path": "/tmp/s", "table": "main.db.scores"}, "output"),
        ({"format": "delta"}, "output"),
        ({"table": "not a name"}, "output.table"),
        ({"path": "/tmp/s", "format": "parquet"}, "output.format"),
    ],
)
def test_output_table_or_path(output: dict[str, Any], key: str) -> None:
    data = _score()
    data["output"] = output
    assert _score_error(data).key == key


def test_output_by_catalog_name() -> None:
    data = _score()
    data["output"] = {"table": "main.curation.scores"}
    cfg = from_dict(ScoreConfig, data)
    assert cfg.output.table == "main.curation.scores" and cfg.output.path is None


@pytest.mark.parametrize(
    ("inp", "key"),
    [
        ({"kind": "datacomp"}, "input.path"),
        ({"kind": "datacomp", "path": "/p", "table": "db.t"}, "input.table"),
        ({"kind": "table", "path": "/p", "table": "db.t"}, "input"),
        ({"kind": "table"}, "input"),
        ({"kind": "table", "table": "db.t!"}, "input.table"),
    ],
)
def test_input_table_or_path(inp: dict[str, Any], key: str) -> None:
    data = _score()
    data["input"] = inp
    data["negclip"] = {"grouping": "pool"}
    assert _score_error(data).key == key


def test_shard_grouping_of_a_table_needs_shard_col() -> None:
    data = _score()
    data["input"] = {"kind": "table", "path": "/p"}
    assert _score_error(data).key == "negclip.grouping"
    data["input"]["shard_col"] = "shard"
    assert from_dict(ScoreConfig, data).input.shard_col == "shard"


def test_selection_materialize_table_or_path() -> None:
    sel = {"name": "a", "rule": "threshold", "column": "c", "min": 0, "materialize": {"path": "/x", "table": "d.t"}}
    assert _select_error(_select(sel)).key == "selections[0].materialize"


# --------------------------------------------------------------------------------------------------
# Select rules


@pytest.mark.parametrize(
    ("sel", "key"),
    [
        ({"name": "a", "rule": "top_fraction", "column": "c"}, "selections[0].fraction"),
        ({"name": "a", "rule": "top_fraction", "fraction": 0.3}, "selections[0].column"),
        ({"name": "a", "rule": "threshold", "column": "c"}, "selections[0].min"),
        ({"name": "a", "rule": "threshold", "min": 0.2}, "selections[0].column"),
        (
            {"name": "a", "rule": "sequential", "column": "c", "fraction": 0.3, "then_fraction": 0.2},
            "selections[0].then_column",
        ),
        (
            {"name": "a", "rule": "sequential", "column": "c", "fraction": 0.3, "then_column": "d"},
            "selections[0].then_fraction",
        ),
        (
            {
                "name": "a",
                "rule": "sequential",
                "column": "c",
                "fraction": 0.2,
                "then_column": "d",
                "then_fraction": 0.3,
            },
            "selections[0].then_fraction",
        ),
        ({"name": "a", "rule": "sum_of_ranks", "fraction": 0.2}, "selections[0].columns"),
        ({"name": "a", "rule": "sum_of_ranks", "columns": ["c"], "fraction": 0.2}, "selections[0].columns"),
        ({"name": "a", "rule": "sum_of_ranks", "columns": ["c", "d"]}, "selections[0].fraction"),
        ({"name": "a", "rule": "top_fraction", "column": "c", "fraction": 0}, "selections[0].fraction"),
        ({"name": "a", "rule": "top_fraction", "column": "c", "fraction": 1.01}, "selections[0].fraction"),
        (
            {"name": "a", "rule": "top_fraction", "column": "c", "fraction": 0.1, "counting": "x"},
            "selections[0].counting",
        ),
        ({"name": "a", "rule": "top_fraction", "column": "c; DROP", "fraction": 0.1}, "selections[0].column"),
        ({"name": "a", "rule": "best", "column": "c"}, "selections[0].rule"),
        ({"name": "a-b", "rule": "threshold", "column": "c", "min": 0}, "selections[0].name"),
        (
            {"name": "a", "rule": "threshold", "column": "c", "min": 0, "export_npy": "/x.txt"},
            "selections[0].export_npy",
        ),
        ({"name": "a", "rule": "intersect", "of": []}, "selections[0].of"),
    ],
)
def test_selection_rule_needs_its_keys(sel: dict[str, Any], key: str) -> None:
    assert _select_error(_select(sel)).key == key


def test_every_rule_accepts_a_complete_selection() -> None:
    cfg = from_dict(
        SelectConfig,
        _select(
            {"name": "thr", "rule": "threshold", "column": "clip_score", "max": 0.9},
            {"name": "top", "rule": "top_fraction", "column": "negclip_loss", "fraction": 1.0, "counting": "datacomp"},
            {
                "name": "seq",
                "rule": "sequential",
                "column": "negclip_loss",
                "fraction": 0.3,
                "then_column": "normsim_inf_t",
                "then_fraction": 0.3,
            },
            {"name": "sor", "rule": "sum_of_ranks", "columns": ["negclip_loss", "normsim_inf_t"], "fraction": 0.2},
            {"name": "both", "rule": "intersect", "of": ["top", "seq"]},
            {"name": "any", "rule": "union", "of": ["thr", "sor", "both"]},
        ),
    )
    rules = [s.rule for s in cfg.selections]
    assert rules == ["threshold", "top_fraction", "sequential", "sum_of_ranks", "intersect", "union"]
    assert cfg.selections[5].of == ("thr", "sor", "both")


@pytest.mark.parametrize("rule", ["intersect", "union"])
def test_combination_must_refer_to_earlier_selections(rule: str) -> None:
    top = {"name": "top", "rule": "top_fraction", "column": "c", "fraction": 0.3}
    later = {"name": "later", "rule": "top_fraction", "column": "d", "fraction": 0.3}
    forward = _select(top, {"name": "combo", "rule": rule, "of": ["top", "later"]}, later)
    err = _select_error(forward)
    assert err.key == "selections[1].of"
    assert "later" in str(err)
    unknown = _select(top, {"name": "combo", "rule": rule, "of": ["top", "ghost"]})
    assert _select_error(unknown).key == "selections[1].of"
    selfref = _select(top, {"name": "combo", "rule": rule, "of": ["top", "combo"]})
    assert _select_error(selfref).key == "selections[1].of"
    single = _select(top, {"name": "combo", "rule": rule, "of": ["top"]})
    assert _select_error(single).key == "selections[1].of"


def test_duplicate_selection_names() -> None:
    a = {"name": "top", "rule": "top_fraction", "column": "c", "fraction": 0.3}
    b = {"name": "top", "rule": "threshold", "column": "c", "min": 0.1}
    err = _select_error(_select(a, b))
    assert err.key == "selections[1].name"
    assert "twice" in str(err)


def test_select_top_level_rules() -> None:
    assert _select_error(_select()).key == "selections"
    sel = {"name": "a", "rule": "threshold", "column": "c", "min": 0}
    assert _select_error(_select(sel, view_prefix="x-")).key == "view_prefix"
    assert _select_error(_select(sel, view_schema="a b")).key == "view_schema"
    assert _select_error(_select(sel, scores={"path": "/x", "table": "d.t"})).key == "scores"


# --------------------------------------------------------------------------------------------------
# The jobs' main: exit status 2 and one line, no Spark


def _no_spark(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("main() asked for a SparkSession on a bad config")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_score_main_bad_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import clipsift.jobs.score
    import clipsift.jobs.session

    monkeypatch.setattr(clipsift.jobs.session, "get_spark", _no_spark)
    path = _write(tmp_path, SCORE_YAML)
    assert clipsift.jobs.score.main(["--config", str(path), "--set", "negclip.roundz=3"]) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith("clipsift score: ")
    assert "'negclip.roundz'" in line
    assert captured.out == ""

    assert clipsift.jobs.score.main(["--config", str(path), "--set", "negclip.tau=-1"]) == 2
    assert "'negclip.tau'" in _one_line(capsys.readouterr().err)


def test_score_main_missing_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import clipsift.jobs.score
    import clipsift.jobs.session

    monkeypatch.setattr(clipsift.jobs.session, "get_spark", _no_spark)
    assert clipsift.jobs.score.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "missing.yaml" in line and "--config" in line


def test_select_main_bad_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import clipsift.jobs.select
    import clipsift.jobs.session

    monkeypatch.setattr(clipsift.jobs.session, "get_spark", _no_spark)
    data = _select(
        {"name": "top", "rule": "top_fraction", "column": "c", "fraction": 0.3},
        {"name": "top", "rule": "threshold", "column": "c", "min": 0.1},
    )
    assert clipsift.jobs.select.main(["--config", str(_write(tmp_path, data))]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("clipsift select: ")
    assert "'selections[1].name'" in line

    assert clipsift.jobs.select.main(["--config", str(_write(tmp_path, SELECT_YAML)), "--set", "selections=[]"]) == 2
    assert "'selections'" in _one_line(capsys.readouterr().err)

    assert clipsift.jobs.select.main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in _one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------
# CLIP-powered selection: the clipselect rule, the score job's clipselect section, the clipselect job


@pytest.mark.parametrize(
    ("sel", "key"),
    [
        ({"name": "a", "rule": "clipselect"}, "selections[0].fraction"),
        ({"name": "a", "rule": "clipselect", "fraction": 0.5, "lam": -0.1}, "selections[0].lam"),
        ({"name": "a", "rule": "clipselect", "fraction": 0.5, "lam": float("nan")}, "selections[0].lam"),
        ({"name": "a", "rule": "top_fraction", "column": "c", "fraction": 0.5, "lam": 0.1}, "selections[0].lam"),
        ({"name": "a", "rule": "clipselect", "fraction": 0.5, "columns": ["sas"]}, "selections[0].columns"),
    ],
)
def test_clipselect_rule_keys(sel: dict[str, Any], key: str) -> None:
    assert _select_error(_select(sel)).key == key


def test_clipselect_rule_defaults() -> None:
    cfg = from_dict(SelectConfig, _select({"name": "cs", "rule": "clipselect", "fraction": 0.5}))
    assert cfg.selections[0].lam is None and cfg.selections[0].columns == ()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"enabled": True, "k": 1}, "clipselect.k"),
        ({"adapters": "/some/folder"}, "clipselect.adapters"),
        ({"enabled": True, "alpha": 1}, "clipselect.alpha"),
    ],
)
def test_score_clipselect_section(section: dict[str, Any], key: str) -> None:
    assert _score_error(_score(clipselect=section)).key == key


def test_score_clipselect_needs_clusters() -> None:
    assert not from_dict(ScoreConfig, _score()).needs_clusters
    assert from_dict(ScoreConfig, _score(clipselect={"enabled": True})).needs_clusters


CLIPSELECT_YAML: dict[str, Any] = {
    "input": {"path": "/tmp/emb"},
    "output": {"path": "/tmp/cs"},
    "model": {"name": "ViT-B-32"},
    "classes": ["cat", "dog"],
    "adapters": {"save_path": "/tmp/adapters"},
}


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"classes": []}, "classes"),
        ({"adapters": {}}, "adapters.save_path"),
        ({"adapters": {"save_path": "/a", "epochs": 0}}, "adapters.epochs"),
        ({"adapters": {"save_path": "/a", "lr": 0}}, "adapters.lr"),
        ({"prompt_templates": ["a photo of a {}", "a photo"]}, "prompt_templates[1]"),
        ({"prompt_templates": []}, "prompt_templates"),
        ({"k": 1}, "k"),
        ({"lam": -1}, "lam"),
        ({"beta": 0}, "beta"),
        ({"ratios": [0.5, 0.501]}, "ratios"),
        ({"ratios": [1.5]}, "ratios[0]"),
        ({"optimiser_max_rows": -1}, "optimiser_max_rows"),
        ({"input": {"path": "/a", "table": "s.t"}}, "input"),
        ({"input": {"path": "/a", "label_col": None}}, "input.text_col"),
        ({"input": {"path": "/a", "text_col": "t"}}, "input.text_col"),
        ({"output": {"path": "/o", "format": "parquet"}}, "output.format"),
        ({"run_id": "a b"}, "run_id"),
        ({"pseudo_classes": 0}, "pseudo_classes"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_clipselect_config_errors_name_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(ClipSelectConfig, {**CLIPSELECT_YAML, **changes})
    assert info.value.key == key


def test_clipselect_label_free_needs_no_classes() -> None:
    data = {**CLIPSELECT_YAML, "input": {"path": "/a", "label_col": None, "text_col": "text_emb"}, "classes": []}
    cfg = from_dict(ClipSelectConfig, {k: v for k, v in data.items() if k != "adapters"})
    assert not cfg.labelled


# --------------------------------------------------------------------------------------------------
# The shipped examples load


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("score.yaml", ScoreConfig),
        ("select.yaml", SelectConfig),
        ("embed.yaml", EmbedConfig),
        ("clipselect.yaml", ClipSelectConfig),
        ("select_clipselect.yaml", SelectConfig),
        ("select_paper.yaml", SelectConfig),
        ("select_paper_d3.yaml", SelectConfig),
    ],
)
def test_examples_load(name: str, cls: type) -> None:
    load(cls, EXAMPLES / name)


def test_kmeans_init() -> None:
    from clipsift.jobs.baselines import kmeans_init_mode
    from clipsift.jobs.config import KMEANS_PARALLEL_MAX_K, KMeansConfig

    auto = KMeansConfig()
    assert kmeans_init_mode(auto, 100) == "k-means||"
    assert kmeans_init_mode(auto, KMEANS_PARALLEL_MAX_K + 1) == "random"
    assert kmeans_init_mode(KMeansConfig(init="random"), 10) == "random"
    assert kmeans_init_mode(KMeansConfig(init="k-means||"), 100_000) == "k-means||"
    assert _score_error(_score(baselines={"kmeans": {"init": "kmeans++"}})).key == "baselines.kmeans.init"


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable key path of a config class (sections recursed; lists of sections by their item keys)."""
    import dataclasses
    import typing

    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        inner = next((a for a in [tp, *args] if dataclasses.is_dataclass(a)), None)
        key = f"{prefix}{f.name}"
        out += _leaf_keys(inner, f"{key}.") if inner is not None else [key]
    return out


@pytest.mark.parametrize(
    ("name", "cls"),
    [("score.yaml", ScoreConfig), ("select.yaml", SelectConfig), ("embed.yaml", EmbedConfig),
     ("clipselect.yaml", ClipSelectConfig)],
)  # fmt: skip
def test_every_config_key_appears_in_its_example(name: str, cls: type) -> None:
    """Each key is set in the example, or named in one of its comments (alternatives such as table input)."""
    text = (EXAMPLES / name).read_text()
    data = yaml.safe_load(text)
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)

    def present(path: str) -> bool:
        node: Any = data
        for part in path.split("."):
            if isinstance(node, list):
                node = next((item for item in node if isinstance(item, dict) and part in item), {})
            if not isinstance(node, dict) or part not in node:
                leaf = path.rsplit(".", 1)[-1]
                return re.search(rf"(?<![\w.]){re.escape(leaf)}\b", comments) is not None
            node = node[part]
        return True

    missing = [key for key in _leaf_keys(cls) if not present(key)]
    assert not missing, f"examples/{name} neither sets nor mentions: {missing}"


# --------------------------------------------------------------------------------------------------
# Configs validate however they are built (code, dataclasses.replace, YAML)


def test_a_section_built_in_code_validates_and_names_itself() -> None:
    from clipsift.jobs.config import NegClipConfig, SelectionConfig, TableRef

    with pytest.raises(ConfigError) as info:
        NegClipConfig(tau=-1)
    assert info.value.key == "NegClipConfig.tau"
    with pytest.raises(ConfigError) as info:
        TableRef()
    assert info.value.key == "TableRef"
    with pytest.raises(ConfigError) as info:
        SelectionConfig(name="top", rule="top_fraction", column="clip_score", fraction=1.5)
    assert info.value.key == "SelectionConfig.fraction"


def test_a_job_config_built_in_code_validates_across_sections() -> None:
    import dataclasses

    from clipsift.jobs.config import BaselinesConfig, InputConfig, SelectionConfig, TableRef

    cfg = ScoreConfig(input=InputConfig(path="/data/pool"), output=TableRef(path="/tmp/scores"))
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(cfg, run_id="not an id!")
    assert info.value.key == "ScoreConfig.run_id"
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(cfg, baselines=BaselinesConfig(image_based_target="imagenet"))
    assert info.value.key == "ScoreConfig.baselines.image_based_target"
    union = SelectionConfig(name="both", rule="union", of=("a", "b"))
    with pytest.raises(ConfigError) as info:
        SelectConfig(scores=TableRef(path="/tmp/scores"), selections=(union,))
    assert info.value.key == "SelectConfig.selections[0].of"


def test_from_yaml_names_the_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path, SCORE_YAML)
    assert ScoreConfig.from_yaml(path, ["negclip.rounds=5"]).negclip.rounds == 5
    with pytest.raises(ConfigError) as info:
        ScoreConfig.from_yaml(path, ["negclip.tau=-1"])
    assert info.value.key == "negclip.tau"
    with pytest.raises(ConfigError) as info:
        ScoreConfig.from_yaml(path, ["normsim.targets=[{name: 'a b', path: t.npy}]"])
    assert info.value.key == "normsim.targets[0].name"
    with pytest.raises(ConfigError) as info:
        SelectConfig.from_yaml(_write(tmp_path, _select({"name": "x", "rule": "union", "of": ["a", "b"]})))
    assert info.value.key == "selections[0].of"


# --------------------------------------------------------------------------------------------------
# The run id hashes the whole config but the fields marked as not changing scores


#: The only score-config keys left out of the run id.
NOT_SCORED_KEYS = {
    "output.table", "output.path", "output.format", "output.properties", "run_id", "spark.app_name", "spark.conf",
    "spark.local_catalog",
    "negclip.block_rows", "normsim.closure_max_mb", "normsim.staging_dir", "normsim.block_size",
    "normsim.targets.path", "negclip.device", "normsim.device",
}  # fmt: skip


def test_run_id_basis_is_every_key_but_the_marked_ones() -> None:
    from clipsift.jobs.config import scores_basis

    data = _score(normsim={"targets": [{"name": "t", "path": "/t.npy"}]})
    basis = scores_basis(from_dict(ScoreConfig, data))

    def flat(node: Any, prefix: str = "") -> set[str]:
        if isinstance(node, dict) and node and prefix.rstrip(".").split(".")[-1] not in ("conf", "metadata_cols"):
            return set().union(*(flat(v, f"{prefix}{k}.") for k, v in node.items()))
        if isinstance(node, list) and node and isinstance(node[0], dict):
            return set().union(*(flat(v, prefix) for v in node))
        return {prefix.rstrip(".")}

    assert flat(basis) == set(_leaf_keys(ScoreConfig)) - NOT_SCORED_KEYS


def test_run_id_changes_with_scores_only(tmp_path: Path) -> None:
    from clipsift.jobs.score import derive_run_id

    lineage = {"targets": [], "code_version": "0"}

    def run_id(**changes: Any) -> str:
        return derive_run_id(from_dict(ScoreConfig, _score(**changes)), lineage)

    base = run_id()
    assert run_id(negclip={"tau": 0.07}) != base
    assert run_id(baselines={"kmeans": {"init": "random"}}) != base
    assert run_id(input={"dim": 512}) != base
    assert run_id(negclip={"block_rows": 1024}) == base
    assert run_id(output={"path": "/elsewhere"}) == base
    assert run_id(spark={"conf": {"spark.sql.shuffle.partitions": "8"}}) == base


def test_output_properties_are_checked() -> None:
    err = _score_error(_score(output={"path": "/tmp/s", "properties": {"bad name": "x"}}))
    assert err.key == "output.properties.bad name"
    err = _score_error(_score(output={"path": "/tmp/s", "format": "parquet", "properties": {"comment": "x"}}))
    assert err.key in ("output.properties", "output.format")
    cfg = from_dict(ScoreConfig, _score(output={"path": "/tmp/s", "properties": {"delta.appendOnly": False}}))
    assert dict(cfg.output.properties) == {"delta.appendOnly": "false"}


# --------------------------------------------------------------------------------------------------
# NaN is refused for every float key (it passes every range check, and would turn a check off)


def _sections(cfg: Any) -> list[Any]:
    """Every config section in the tree of ``cfg`` (sections, and sections inside tuples)."""
    import dataclasses

    out = [cfg]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                out += _sections(v)
    return out


@pytest.mark.parametrize(
    ("name", "cls"),
    [("score.yaml", ScoreConfig), ("select_paper_d3.yaml", SelectConfig), ("embed.yaml", EmbedConfig),
     ("clipselect.yaml", ClipSelectConfig)],
)  # fmt: skip
def test_nan_is_refused_for_every_float_key(name: str, cls: type) -> None:
    import dataclasses
    import typing

    tried = 0
    for section in _sections(load(cls, EXAMPLES / name)):
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            if float not in (hints[f.name], *typing.get_args(hints[f.name])):
                continue
            tried += 1
            with pytest.raises(ConfigError) as err:
                dataclasses.replace(section, **{f.name: float("nan")})
            assert err.value.key.endswith(f.name) and "NaN" in str(err.value), (type(section), f.name)
    assert tried >= 1, name
    with pytest.raises(ConfigError) as err:  # and from YAML, named by its key path
        load(EmbedConfig, EXAMPLES / "embed.yaml", ["embed.max_aspect_ratio=.nan"])
    assert err.value.key == "embed.max_aspect_ratio"


# --------------------------------------------------------------------------------------------------
# Injection: every config string that becomes an identifier in SQL text is validated (string literals are quoted by
# sql_string, tested in tests/spark/test_io.py)

PAYLOADS = ("x`y", "x'y", "x; DROP TABLE t", "x -- c", "x/*c*/", "x y", "x)", "x\ny", "")


def _select_keys() -> dict[str, Any]:
    return {
        "scores": {"table": "db.scores"},
        "view_prefix": "p_",
        "view_schema": "db",
        "join": [{"alias": "b", "scores": {"table": "db.other"}}],
        "selections": [
            {"name": "a", "rule": "sequential", "column": "c", "fraction": 0.3, "then_column": "b.d",
             "then_fraction": 0.2, "materialize": {"table": "db.m", "properties": {"comment": "x"}}},
            {"name": "r", "rule": "sum_of_ranks", "columns": ["c", "b.d"], "fraction": 0.1, "within": "a"},
            {"name": "i", "rule": "import", "source": {"table": "db.uids", "uid_column": "u"}},
            {"name": "u", "rule": "union", "of": ["a", "r"]},
        ],
    }  # fmt: skip


SQL_NAMES = [
    ("view_prefix",), ("view_schema",), ("scores", "table"), ("join", 0, "alias"), ("join", 0, "scores", "table"),
    ("selections", 0, "name"), ("selections", 0, "column"), ("selections", 0, "then_column"),
    ("selections", 0, "materialize", "table"), ("selections", 1, "columns", 0), ("selections", 1, "within"),
    ("selections", 2, "source", "table"), ("selections", 2, "source", "uid_column"), ("selections", 3, "of", 0),
]  # fmt: skip


@pytest.mark.parametrize("path", SQL_NAMES, ids=lambda p: ".".join(map(str, p)))
def test_select_keys_that_reach_sql_refuse_injection(path: tuple[Any, ...]) -> None:
    for payload in PAYLOADS:
        data = _select_keys()
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = payload
        if path[-1] == "view_prefix" and payload == "":
            continue  # no prefix is valid
        with pytest.raises(ConfigError):
            from_dict(SelectConfig, data)
    from_dict(SelectConfig, _select_keys())  # the unchanged config is valid


def test_property_names_and_score_names_refuse_injection() -> None:
    for payload in PAYLOADS:
        data = _select_keys()
        data["selections"][0]["materialize"]["properties"] = {payload: "v"}
        with pytest.raises(ConfigError):
            from_dict(SelectConfig, data)
        for key, value in (("output", {"table": payload}), ("normsim", {"targets": [{"name": payload, "path": "t"}]})):
            score = {"input": {"kind": "datacomp", "path": "/p"}, "output": {"table": "db.s"}, key: value}
            with pytest.raises(ConfigError):
                from_dict(ScoreConfig, score)
