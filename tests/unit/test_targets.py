"""NormSim target files (clipsift.jobs.io.load_target): .npy, .npz and .pt, normalised on load. No Spark."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from clipsift.jobs.io import load_target
from tests.support.pickles import write_torch_payload

torch = pytest.importorskip("torch")


def _rows(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(20, 8)).astype(np.float32) * 3


def test_pt_tensor_and_dict(tmp_path: Path) -> None:
    rows = _rows()
    torch.save(torch.from_numpy(rows), tmp_path / "t.pt")
    torch.save({"image_features": torch.from_numpy(rows), "labels": torch.arange(20)}, tmp_path / "d.pt")
    expected = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    plain = load_target("t", str(tmp_path / "t.pt"))
    keyed = load_target("d", str(tmp_path / "d.pt"), key="image_features")
    np.testing.assert_allclose(plain.matrix, expected, rtol=1e-6)
    np.testing.assert_allclose(keyed.matrix, expected, rtol=1e-6)
    assert plain.sha256 != keyed.sha256 and len(plain.sha256) == 64
    with pytest.raises(ValueError, match=r"set normsim\.targets"):
        load_target("d", str(tmp_path / "d.pt"))
    with pytest.raises(ValueError, match="no array 'nope'"):
        load_target("d", str(tmp_path / "d.pt"), key="nope")


def test_bad_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = _rows(1)
    rows[3] = 0.0
    rows[5, 2] = np.nan
    np.save(tmp_path / "t.npy", rows)
    target = load_target("t", str(tmp_path / "t.npy"))
    assert target.matrix.shape == (18, 8) and target.rows_dropped == 2
    np.testing.assert_allclose(np.linalg.norm(target.matrix, axis=1), 1.0, rtol=1e-6)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="normsim target 'gone'"):
        load_target("gone", str(tmp_path / "gone.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"2-D"):
        load_target("flat", str(tmp_path / "flat.npy"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a tensor"):
        load_target("list", str(tmp_path / "list.pt"))


def test_ship_matrix_closure_or_staged_once_for_workers_to_map(tmp_path: Path) -> None:
    from clipsift.jobs.config import ConfigError
    from clipsift.jobs.io import ship_matrix

    np.save(tmp_path / "t.npy", _rows(2))
    target = load_target("t", str(tmp_path / "t.npy"))
    moment = np.eye(2)
    small = ship_matrix("t", target.matrix, target.sha256, moment=moment, closure_max_mb=1, staging_dir=None)
    assert small.matrix is target.matrix and small.path is None
    ship = {"moment": moment, "closure_max_mb": 0, "staging_dir": str(tmp_path / "stage")}
    staged = ship_matrix("t", target.matrix, target.sha256, **ship)  # type: ignore[arg-type]
    assert staged.matrix is None and staged.path is not None
    assert ship_matrix("t", target.matrix, target.sha256, **ship).path == staged.path  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [Path(staged.path).name]
    np.testing.assert_array_equal(np.load(staged.path, mmap_mode="r"), target.matrix)
    with pytest.raises(ConfigError, match=r"normsim\.staging_dir"):
        ship_matrix("t", target.matrix, target.sha256, moment=moment, closure_max_mb=0, staging_dir=None)


def test_pickles_are_refused_without_running_their_code(tmp_path: Path) -> None:
    """A .pt whose pickle would run code (``__reduce__``), bare or inside a dict, and an .npy of Python objects:
    refused with one line naming the target and why; the payload never runs."""
    marker = tmp_path / "payload-ran"
    bare = write_torch_payload(tmp_path / "bare.pt", marker)
    nested = write_torch_payload(tmp_path / "nested.pt", marker, around=lambda p: {"image_features": p})
    for path in (bare, nested):
        with pytest.raises(ValueError) as info:
            load_target("t", str(path), key="image_features")
        message = str(info.value)
        assert "\n" not in message and "normsim target 't'" in message and str(path) in message
        assert "was refused" in message and "weights_only=True" in message and re.search(r"it names \S*open", message)
    assert not marker.exists()
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="was refused: it holds pickled Python objects"):
        load_target("o", str(tmp_path / "objects.npy"))


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not really a zip")
    for name in ("cut.npz", "cut.pt"):
        with pytest.raises(ValueError) as info:
            load_target("c", str(tmp_path / name))
        assert "\n" not in str(info.value) and "cannot be read" in str(info.value) and name in str(info.value)
