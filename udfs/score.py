"""Vectorised UDF factories for the scores: thin Arrow adapters over :mod:`clipsift.udfs.kernels`.

Each factory returns a UDF (or a grouped-map function) whose body converts Arrow list arrays to
numpy matrices without copying and calls one kernel. Inputs must be rows with status ``ok``:
non-null, finite, ``dim`` values each (the job filters the rest out first). negCLIPLoss and NormSim∞ run on
the executor's GPU through :mod:`clipsift.udfs.kernels.torch_kernels` where :func:`kernel_device` says so
(torch is imported only then).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql.functions import arrow_udf  # type: ignore[attr-defined]  # new in 4.1, not in the stubs

from clipsift.udfs.arrow import to_matrix
from clipsift.udfs.kernels import batch_plan, clip_score, negclip_loss, normsim2_from_moment, normsim_inf, second_moment


def clip_score_udf(dim: int) -> Any:
    """UDF ``(image_emb, text_emb) -> double``: CLIPScore."""

    @arrow_udf("double")  # type: ignore[untyped-decorator]  # pyspark's decorator is untyped
    def clip_score_column(img: pa.Array, txt: pa.Array) -> pa.Array:
        return pa.array(clip_score(to_matrix(img, dim), to_matrix(txt, dim)), pa.float64())

    return clip_score_column


@dataclass(frozen=True)
class TargetHandle:
    """What a NormSim UDF needs of one target: its second moment, and its rows in the closure or at a path."""

    name: str
    sha256: str
    rows: int
    moment: np.ndarray
    """``(d, d)`` float64 Σ t tᵀ, for p = 2."""
    matrix: np.ndarray | None = None
    """The rows themselves (small targets travel in the closure)."""
    path: str | None = None
    """A staged float32 ``.npy`` every worker can read (large targets; memory-mapped once per worker)."""


#: Memory-mapped staged targets, one per (path, content hash) per Python worker.
_TARGET_CACHE: dict[tuple[str, str], np.ndarray] = {}


def target_rows(handle: TargetHandle) -> np.ndarray:
    """The target's rows: from the closure, or memory-mapped from its staged file (cached per worker)."""
    if handle.matrix is not None:
        return handle.matrix
    if handle.path is None:
        raise ValueError(f"target '{handle.name}' has neither rows nor a staged path")
    key = (handle.path, handle.sha256)
    if key not in _TARGET_CACHE:
        _TARGET_CACHE[key] = np.load(handle.path, mmap_mode="r")
    return _TARGET_CACHE[key]


def kernel_device(device: str, key: str) -> str | None:
    """Where a score kernel runs on this executor: ``None`` for the numpy kernels (the host's CPUs), else a torch
    device for :mod:`clipsift.udfs.kernels.torch_kernels`. The one place the choice is made.

    Args:
        device: ``cpu`` (numpy); ``auto``: the GPU Spark gave the running task (``spark.task.resource.gpu.amount``),
            else ``cuda`` when torch sees one, else numpy (also when torch is not installed, as in the CPU image;
            torch is not even imported on a host without a GPU device node); ``cuda`` / ``cuda:N``: torch on that
            device.
        key: the config key ``device`` came from, for the error when ``cuda`` is asked for and there is none.
    """
    if device == "cpu":
        return None
    gpus: list[str] = []
    if device == "auto":
        from pyspark import TaskContext

        ctx = TaskContext.get()
        resource = ctx.resources().get("gpu") if ctx is not None else None
        gpus = list(resource.addresses) if resource is not None else []
        if not gpus and not _host_shows_gpu():
            return None  # a CPU host: numpy, without importing torch
    missing = _no_cuda_reason()
    if missing is not None:
        if device == "auto":
            return None
        raise RuntimeError(f"{key} is '{device}', but this executor has no GPU for it ({missing}); use auto or cpu")
    if device != "auto":
        return device
    return f"cuda:{gpus[0]}" if gpus else "cuda"


def _host_shows_gpu() -> bool:
    """Whether the host has a GPU device node (NVIDIA, or AMD's ROCm), checked before paying for ``import torch``."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/kfd") or bool(glob.glob("/dev/nvidia[0-9]*"))


@lru_cache(maxsize=1)
def _no_cuda_reason() -> str | None:
    """Why torch cannot run on a GPU in this worker, or ``None`` when it can (asked once per Python worker)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


#: Targets kept on a device for the torch NormSim∞, one per (target, content hash, device, precision) per worker.
_DEVICE_TARGETS: dict[tuple[str, str, str, str], Any] = {}


def _normsim_inf(
    f: np.ndarray, handle: TargetHandle, signed: bool, block_size: int, device: str, precision: str
) -> np.ndarray:
    """NormSim∞ of ``f`` against the target, on the numpy or the torch kernel as :func:`kernel_device` says."""
    dev = kernel_device(device, "normsim.device")
    if dev is None:
        return normsim_inf(f, target_rows(handle), signed=signed, block_size=block_size)
    from clipsift.udfs.kernels import torch_kernels

    key = (handle.name, handle.sha256, dev, precision)
    if key not in _DEVICE_TARGETS:
        _DEVICE_TARGETS[key] = torch_kernels.resident(target_rows(handle), dev, precision)
    return torch_kernels.normsim_inf(
        f, _DEVICE_TARGETS[key], signed=signed, block_size=block_size, device=dev, precision=precision
    )


def normsim_udf(
    handle: TargetHandle,
    norms: tuple[str, ...],
    dim: int,
    signed: bool,
    block_size: int,
    device: str = "auto",
    precision: str = "fp32",
) -> Any:
    """UDF ``image_emb -> struct<normsim_<p> double, ...>`` for one target and the requested p ∈ {"2", "inf"}.

    NormSim∞ runs where :func:`kernel_device` puts ``device`` (``normsim.device``), its matmul at ``precision``;
    NormSim₂ (``O(d²)`` per row) always on numpy.
    """
    fields = ", ".join(f"normsim_{p} double" for p in norms)

    @arrow_udf(f"struct<{fields}>")  # type: ignore[untyped-decorator]
    def normsim_column(img: pa.Array) -> pa.Array:
        f = to_matrix(img, dim)
        cols = []
        for p in norms:
            if p == "2":
                cols.append(normsim2_from_moment(f, handle.moment))
            else:
                cols.append(_normsim_inf(f, handle, signed, block_size, device, precision))
        return pa.StructArray.from_arrays(
            [pa.array(c, pa.float64()) for c in cols], names=[f"normsim_{p}" for p in norms]
        )

    return normsim_column


#: The columns negCLIPLoss adds: the score and its two parts (ALGORITHMS.md §1.1), averaged over the rounds.
NEGCLIP_COLUMNS = ("negclip_loss", "negclip_r_i2t", "negclip_r_t2i")


@dataclass(frozen=True)
class NegClipSettings:
    """What the negCLIPLoss of a group depends on (besides its rows)."""

    rounds: int
    batch_size: int
    tau: float
    seed: int
    dim: int
    block_rows: int | None = None
    device: str = "auto"
    """``negclip.device``: see :func:`kernel_device`."""
    precision: str = "fp32"
    """``negclip.precision``: the torch path's matmul (fp32, tf32, bf16)."""


def negclip_table(table: pa.Table, s: NegClipSettings, drop: tuple[str, ...] = ()) -> pa.Table:
    """negCLIPLoss of every row of one group: the rows in uid order, less ``drop``, plus :data:`NEGCLIP_COLUMNS`.

    The rows are put in uid order (so the input order never matters), given the seeded batch plan of
    :func:`clipsift.udfs.kernels.batch_plan`, and scored by :func:`clipsift.udfs.kernels.negclip_loss`, which
    averages the rounds.
    """
    uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    order = np.argsort(uids.astype(str), kind="stable")
    sorted_uids = [str(u) for u in uids[order]]
    img = to_matrix(table.column("image_emb"), s.dim)[order]
    txt = to_matrix(table.column("text_emb"), s.dim)[order]
    plan = batch_plan(sorted_uids, s.rounds, s.batch_size, s.seed)
    dev = kernel_device(s.device, "negclip.device")
    if dev is None:
        parts = negclip_loss(img, txt, plan, tau=s.tau, return_parts=True, block_rows=s.block_rows)
    else:
        from clipsift.udfs.kernels import torch_kernels

        parts = torch_kernels.negclip_loss(
            img, txt, plan, tau=s.tau, return_parts=True, block_rows=s.block_rows, device=dev, precision=s.precision
        )
    assert isinstance(parts, dict)
    del img, txt
    kept = table.drop_columns([c for c in drop if c in table.column_names]).take(pa.array(order))
    for name, key in zip(NEGCLIP_COLUMNS, ("negclip_loss", "r_i2t", "r_t2i"), strict=True):
        kept = kept.append_column(name, pa.array(parts[key], pa.float64()))
    return kept


def negclip_group_fn(s: NegClipSettings, drop: tuple[str, ...] = ()) -> Callable[[pa.Table], pa.Table]:
    """Grouped-map function for ``applyInArrow``: :func:`negclip_table` of the group Spark hands over."""

    def negclip_group(table: pa.Table) -> pa.Table:
        return negclip_table(table, s, drop)

    return negclip_group


def negclip_partition_fn(
    s: NegClipSettings, group_col: str, drop: tuple[str, ...] = ()
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function for partitions that hold whole groups (a DataComp shard is read by one task).

    The partition's rows are split by ``group_col`` and each group scored by :func:`negclip_table`; no shuffle.
    The caller guarantees that no group spans two partitions.
    """

    def negclip_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = [b for b in batches if b.num_rows]
        if not received:
            return
        table = pa.Table.from_batches(received)
        members: dict[object, list[int]] = {}
        for i, key in enumerate(table.column(group_col).to_pylist()):
            members.setdefault(key, []).append(i)
        for key in sorted(members, key=str):
            rows = table.take(pa.array(members[key], pa.int64())) if len(members) > 1 else table
            yield from negclip_table(rows, s, (*drop, group_col)).to_batches(max_chunksize=8192)

    return negclip_partition


def moment_partial_fn(dim: int) -> Callable[[Any], Any]:
    """``mapInArrow`` function: each partition's Σ f fᵀ of ``image_emb`` as one row (``rows long, moment binary``)."""

    def moment_partial(batches: Any) -> Any:
        total = np.zeros((dim, dim))
        rows = 0
        for batch in batches:
            f = to_matrix(batch.column(0), dim)
            total += second_moment(f)
            rows += f.shape[0]
        yield pa.RecordBatch.from_arrays(
            [pa.array([rows], pa.int64()), pa.array([total.tobytes()], pa.binary())], names=["rows", "moment"]
        )

    return moment_partial
