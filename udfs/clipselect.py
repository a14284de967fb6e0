"""Arrow functions of the CLIP-powered selection scores (ALGORITHMS.md §4): thin wrappers over
:mod:`clipsift.udfs.kernels.clipselect`, with the adapters' weights in the closure. No Spark here beyond the Arrow
batches Spark hands over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from clipsift.udfs.arrow import to_matrix
from clipsift.udfs.kernels import diversity_of_group, semantic_alignment

if TYPE_CHECKING:
    from clipsift.udfs.adapters import AdapterPair


@dataclass(frozen=True)
class AdapterWeights:
    """The image and text adapters as float32 numpy (``y = x Wᵀ + b``, as ``torch.nn.Linear``), for closures."""

    image_w: np.ndarray
    image_b: np.ndarray
    text_w: np.ndarray
    text_b: np.ndarray

    @classmethod
    def from_pair(cls, pair: AdapterPair) -> AdapterWeights:
        def arr(t: object) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)  # type: ignore[attr-defined]

        return cls(arr(pair.image.weight), arr(pair.image.bias), arr(pair.text.weight), arr(pair.text.bias))

    @classmethod
    def identity(cls, dim: int) -> AdapterWeights:
        eye, zero = np.eye(dim, dtype=np.float32), np.zeros(dim, dtype=np.float32)
        return cls(eye, zero, eye, zero)

    @property
    def dim(self) -> int:
        return int(self.image_w.shape[1])

    def image(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x @ self.image_w.T + self.image_b
        return out

    def text(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x @ self.text_w.T + self.text_b
        return out


def sas_batch_fn(
    weights: AdapterWeights, prompts: np.ndarray | None, names: Sequence[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function appending ``sas`` to batches whose columns are ``names``.

    With ``prompts`` (the adapted class prompts, ``(C, d)``): the cosine of the adapted image and the prompt of the
    row's ``label``. Without (label-free): the cosine of the adapted image and the adapted ``text_emb``.
    """
    cols = list(names)
    dim = weights.dim

    def sas_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            img = weights.image(to_matrix(batch.column(cols.index("image_emb")), dim))
            if prompts is None:
                other = weights.text(to_matrix(batch.column(cols.index("text_emb")), dim))
                labels = np.arange(len(img))
            else:
                other = prompts
                labels = batch.column(cols.index("label")).to_numpy(zero_copy_only=False).astype(np.int64)
            sas = semantic_alignment(img, other, labels) if len(img) else np.zeros(0)
            yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(sas, pa.float64())], names=[*cols, "sas"])

    return sas_batches


def sds_group_fn(weights: AdapterWeights, k: int, key: str) -> Callable[[pa.Table], pa.Table]:
    """``applyInArrow`` function: ``key`` and ``sds`` of every row of one group (a label or a k-means cluster).

    SDS is :func:`clipsift.udfs.kernels.diversity_of_group` on the adapted images; a singleton group gets null.
    """

    def sds_group(table: pa.Table) -> pa.Table:
        img = weights.image(to_matrix(table.column("image_emb"), weights.dim))
        sds = diversity_of_group(img, k) if len(img) else np.zeros(0)
        return pa.table({key: table.column(key), "sds": pa.array(sds, pa.float64(), mask=np.isnan(sds))})

    return sds_group


#: Spark DDL of :func:`pack_rows_fn`'s output: one row per chunk of input rows.
PACKED_DDL = "rows int, image binary, label binary"


def pack_rows_fn(dim: int, rows_per_chunk: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function packing ``image_emb, label`` rows into chunks of float32 / int64 bytes, in order.

    The driver then receives one row per ``rows_per_chunk`` rows (:func:`unpack_rows`) instead of one Python row of
    ``dim`` Python floats per input row: streaming mini-batches to the driver costs a copy, not an object per value.
    """

    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for lo in range(0, batch.num_rows, rows_per_chunk):
                part = batch.slice(lo, rows_per_chunk)
                img = to_matrix(part.column(0), dim)
                lab = part.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
                yield pa.RecordBatch.from_arrays(
                    [pa.array([part.num_rows], pa.int32()), pa.array([img.tobytes()]), pa.array([lab.tobytes()])],
                    names=["rows", "image", "label"],
                )

    return pack


def unpack_rows(image: bytes, label: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(n, dim)`` float32 embeddings and ``(n,)`` int64 labels of one packed chunk."""
    return np.frombuffer(image, dtype=np.float32).reshape(-1, dim), np.frombuffer(label, dtype=np.int64)
