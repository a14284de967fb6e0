"""Broken DataComp subset files, one per kind, for the subset reader's and the ``import`` rule's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsift.jobs.io import uid_pairs

#: kind -> a phrase of the one-line error it must get.
BAD_SUBSET_FILES: dict[str, str] = {
    "wrong_dtype": "dtype",
    "signed_pairs": "dtype",
    "plain_uint64": "dtype",
    "two_dim": "dtype",
    "object_array": "dtype",
    "no_rows": "no uid",
    "empty_file": "not a .npy",
    "text_file": "not a .npy",
    "truncated": "truncated",
    "missing": "no file",
}


def write_bad_subset(kind: str, path: Path) -> None:
    """Write the broken subset file ``kind`` of :data:`BAD_SUBSET_FILES` at ``path`` (nothing for ``missing``)."""
    good = uid_pairs([f"{i:032x}" for i in range(10)])
    if kind == "wrong_dtype":
        np.save(path, np.zeros(10, dtype="f8,f8"))
    elif kind == "signed_pairs":
        np.save(path, good.astype("i8,i8"))
    elif kind == "plain_uint64":
        np.save(path, np.zeros(10, dtype=np.uint64))
    elif kind == "two_dim":
        np.save(path, np.zeros((10, 2), dtype=np.uint64))
    elif kind == "object_array":
        np.save(path, np.array([{"uid": "x"}], dtype=object), allow_pickle=True)
    elif kind == "no_rows":
        np.save(path, good[:0])
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "text_file":
        path.write_text("\n".join(f"{i:032x}" for i in range(10)))
    elif kind == "truncated":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:-5])
    elif kind != "missing":
        raise ValueError(f"unknown kind {kind}")
