"""The README's table of bad input kinds, checked against this run: every kind below is fed to the real function
that meets it in a job (image decode, caption decode, the embedding checks, the subset-file reader, the config
loader) and must get its expected status or one clear error; the README's figures must equal the counts here.
Kinds met only inside Spark jobs (shards, tars, tables) are tested in tests/unit/test_readers_hostile.py and the
jobs tier, and are listed in the README's status tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from clipsift.jobs.config import ConfigError, ScoreConfig, SelectConfig, from_dict
from clipsift.jobs.io import SubsetFileError, inspect_subset
from clipsift.udfs.decode import decode_caption, decode_image
from clipsift.udfs.ingest import first_problem
from clipsift.udfs.schemas import STATUS
from tests.support.corpus import broken_image_corpus
from tests.support.subsets import BAD_SUBSET_FILES, write_bad_subset

ROOT = Path(__file__).resolve().parents[2]
DIM = 4

IMAGES = broken_image_corpus()

CAPTIONS: list[tuple[str, Any, str]] = [
    ("null", None, "null_caption"),
    ("empty", "", "empty_caption"),
    ("blank", " \t\n ", "empty_caption"),
    ("control_only", "\x00\x01\x1b", "empty_caption"),
    ("invalid_utf8_bytes", b"\xff\xfe not utf-8", "invalid_utf8"),
    ("truncated_utf8_bytes", "café".encode()[:-1], "invalid_utf8"),
    ("lone_surrogate", "a\ud800b", "invalid_utf8"),
    ("huge_10mb", "word " * 2_000_000, "ok"),
    ("byte_order_mark", "\ufeffa cat", "ok"),
]

EMBEDDINGS: list[tuple[str, Any, Any, str]] = [
    ("null_uid", None, [1.0, 0.0, 0.0, 0.0], STATUS.NULL_UID),
    ("empty_uid", "", [1.0, 0.0, 0.0, 0.0], STATUS.NULL_UID),
    ("blank_uid", "  ", [1.0, 0.0, 0.0, 0.0], STATUS.NULL_UID),
    ("null_embedding", "u1", None, STATUS.NULL_EMBEDDING),
    ("short_embedding", "u2", [1.0, 0.0], STATUS.BAD_DIMENSION),
    ("long_embedding", "u3", [1.0] * (DIM + 3), STATUS.BAD_DIMENSION),
    ("empty_embedding", "u4", [], STATUS.BAD_DIMENSION),
    ("nan_value", "u5", [np.nan, 0.0, 1.0, 0.0], STATUS.NON_FINITE),
    ("inf_value", "u6", [np.inf, 0.0, 1.0, 0.0], STATUS.NON_FINITE),
    ("minus_inf_value", "u7", [-np.inf, 0.0, 1.0, 0.0], STATUS.NON_FINITE),
    ("null_value", "u8", [None, 0.0, 1.0, 0.0], STATUS.NON_FINITE),
    ("zero_vector", "u9", [0.0] * DIM, STATUS.ZERO_NORM),
    ("huge_values", "u10", [1e38, 1e38, 0.0, 0.0], STATUS.OK),
]

SUBSET_FILES = tuple(BAD_SUBSET_FILES)


def _readme_figures() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- bad-input-inventory -->(.*?)<!-- /bad-input-inventory -->", text, re.S)
    assert block is not None, "README.md lost its bad input table"
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([a-z ,/]+?) \| (\d+) \|", block.group(1), re.M)}


@pytest.mark.parametrize(("name", "data", "expected"), IMAGES, ids=[c[0] for c in IMAGES])
def test_image_kinds(name: str, data: bytes | None, expected: str) -> None:
    _img, status, _error = decode_image(data)
    assert status == expected, name


@pytest.mark.parametrize(("name", "value", "expected"), CAPTIONS, ids=[c[0] for c in CAPTIONS])
def test_caption_kinds(name: str, value: Any, expected: str) -> None:
    caption, status, error = decode_caption(value)
    assert status == expected, (name, error)
    assert (caption is not None) == (status == "ok") and (error is None) == (status == "ok")


def test_embedding_kinds_in_one_batch_rows_in_equal_rows_out() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"uid": [e[1] for e in EMBEDDINGS], "image_emb": [e[2] for e in EMBEDDINGS]},
        schema=pa.schema([("uid", pa.string()), ("image_emb", pa.list_(pa.float32()))]),
    )
    status, error, _checked = first_problem(batch, DIM, [("image_emb", "image")])
    assert len(status) == len(EMBEDDINGS)  # one status per row, none lost
    got = ["ok" if s is None or s == STATUS.OK else s for s in status]
    assert got == [e[3] for e in EMBEDDINGS], list(zip([e[0] for e in EMBEDDINGS], got, error, strict=True))


@pytest.mark.parametrize("kind", SUBSET_FILES)
def test_subset_file_kinds_are_one_clear_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "subset.npy"
    write_bad_subset(kind, path)
    with pytest.raises((SubsetFileError, FileNotFoundError)) as err:
        inspect_subset(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert BAD_SUBSET_FILES[kind] in str(err.value), str(err.value)


def _config_kinds() -> list[tuple[str, type, dict[str, Any]]]:
    """Wrong types and values for config keys, each refused with the key named."""
    score = {"input": {"kind": "datacomp", "path": "/p"}, "output": {"path": "/o"}}
    select = {"scores": {"path": "/s"}, "selections": [{"name": "a", "rule": "top_fraction", "column": "c",
                                                         "fraction": 0.3}]}  # fmt: skip
    kinds: list[tuple[str, type, dict[str, Any]]] = []
    for key, value in (("tau", "hot"), ("tau", -1.0), ("tau", 0.0), ("rounds", 1.5), ("rounds", 0), ("rounds", True),
                       ("batch_size", "big"), ("seed", None), ("grouping", "random")):  # fmt: skip
        kinds.append((f"negclip.{key}", ScoreConfig, {**score, "negclip": {key: value}}))
    for key, value in (("fraction", 0.0), ("fraction", 1.5), ("fraction", "half"), ("counting", "approx"),
                       ("rule", "best"), ("name", "a-b"), ("column", "a b"), ("min", "low")):  # fmt: skip
        sel = {**select["selections"][0], key: value}  # type: ignore[index]
        kinds.append((f"selections[0].{key}", SelectConfig, {**select, "selections": [sel]}))
    kinds += [
        ("input.kind", ScoreConfig, {**score, "input": {"kind": "csv", "path": "/p"}}),
        ("input", ScoreConfig, {**score, "input": "/p"}),
        ("output", ScoreConfig, {**score, "output": {}}),
        ("output", ScoreConfig, {**score, "output": {"path": "/o", "table": "a.b"}}),
        ("unknown_key", ScoreConfig, {**score, "unknown_key": 1}),
        ("selections", SelectConfig, {**select, "selections": []}),
        ("view_prefix", SelectConfig, {**select, "view_prefix": "a;b"}),
    ]
    return kinds


CONFIGS = _config_kinds()


@pytest.mark.parametrize(("key", "cls", "data"), CONFIGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
def test_config_kinds_name_their_key(key: str, cls: type, data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data)
    assert key.split(".")[-1].split("[")[0] in err.value.key or key in str(err.value), (key, err.value.key)
    assert "\n" not in str(err.value)


def test_the_readme_table_is_this_runs_counts() -> None:
    expected = {
        "image bytes": len(IMAGES),
        "captions": len(CAPTIONS),
        "embeddings and uids": len(EMBEDDINGS),
        "subset files": len(SUBSET_FILES),
        "config values": len(CONFIGS),
    }
    figures = _readme_figures()
    assert {k: figures.get(k) for k in expected} == expected
    assert figures["total"] == sum(expected.values()) >= 50
