"""Shared pieces of the benchmarks: sizes, result rows, machine facts, process memory, subprocesses."""

from __future__ import annotations

import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one benchmark run (see ``FULL``, ``QUICK`` and ``TOY``).

    Attributes:
        name: preset name, for the report.
        dim: embedding dimension d.
        batch_size: negCLIPLoss batch size B.
        shards: pool shards (each one negCLIPLoss group, as ``grouping: shard``).
        rows_per_shard: rows of each shard.
        rounds: K.
        tau: temperature.
        block_rows: kernel similarity block rows; ``None`` = the kernel's default.
        matmul_blocks: ``(block_rows × d) @ (d × B)`` products timed per repeat of the matmul baseline.
        repeats: repeats of the cheap in-process measurements (the best one is kept).
        heavy_repeats: repeats of the kernel runs and of the Spark negCLIPLoss stage (the best one is kept).
        normsim_targets: M, target rows of NormSim.
        normsim_inf_rows: pool rows scored by NormSim∞ (kernel, and through Spark).
        normsim2_rows: pool rows scored by NormSim₂ in the kernel benchmark.
    """

    name: str
    dim: int
    batch_size: int
    shards: int
    rows_per_shard: int
    rounds: int
    tau: float
    block_rows: int | None
    matmul_blocks: int
    repeats: int
    heavy_repeats: int
    normsim_targets: int
    normsim_inf_rows: int
    normsim2_rows: int

    @property
    def pool_rows(self) -> int:
        return self.shards * self.rows_per_shard

    def kernel_block_rows(self) -> int:
        """Rows of the similarity block the kernel actually uses for a full batch of B rows."""
        from clipsift.udfs.kernels.negclip import BLOCK_ELEMENTS

        b = self.batch_size
        return self.block_rows or max(1, min(b, BLOCK_ELEMENTS // b))


#: The sizes of the issue: B = 32,768, d = 768, two shards of one batch each, K = 1, M = 100k.
FULL = Sizes(
    name="full",
    dim=768,
    batch_size=32768,
    shards=2,
    rows_per_shard=32768,
    rounds=1,
    tau=0.01,
    block_rows=None,
    matmul_blocks=4,
    repeats=3,
    heavy_repeats=2,
    normsim_targets=100_000,
    normsim_inf_rows=8192,
    normsim2_rows=65536,
)
#: A smoke run of the whole suite, Spark included (about a minute).
QUICK = Sizes(
    name="quick",
    dim=768,
    batch_size=4096,
    shards=2,
    rows_per_shard=4096,
    rounds=1,
    tau=0.01,
    block_rows=None,
    matmul_blocks=1,
    repeats=2,
    heavy_repeats=1,
    normsim_targets=10_000,
    normsim_inf_rows=2048,
    normsim2_rows=8192,
)
#: Toy sizes for the smoke test (a remainder batch included: 300 rows in batches of 256).
TOY = Sizes(
    name="toy",
    dim=32,
    batch_size=256,
    shards=2,
    rows_per_shard=300,
    rounds=2,
    tau=0.01,
    block_rows=64,
    matmul_blocks=1,
    repeats=1,
    heavy_repeats=1,
    normsim_targets=500,
    normsim_inf_rows=200,
    normsim2_rows=400,
)
PRESETS = {s.name: s for s in (FULL, QUICK, TOY)}


@dataclass(frozen=True)
class Row:
    """One measured number."""

    bench: str
    case: str
    metric: str
    value: float
    unit: str
    note: str = ""


@dataclass(frozen=True)
class Ratio:
    """A ratio of two measured numbers of the same run, with the goal it is held against."""

    name: str
    value: float
    goal: float | None
    numerator: str
    denominator: str

    @property
    def met(self) -> bool | None:
        if self.goal is None or not math.isfinite(self.value):
            return None
        return self.value >= self.goal


@dataclass
class Report:
    """Everything one benchmark contributes: rows, ratios and raw details (JSON only)."""

    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, bench: str, case: str, metric: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append(Row(bench, case, metric, float(value), unit, note))

    def value(self, bench: str, case: str, metric: str) -> float:
        """The value of a row added earlier (NaN if there is none)."""
        for r in self.rows:
            if (r.bench, r.case, r.metric) == (bench, case, metric):
                return r.value
        return math.nan

    def extend(self, other: Report) -> None:
        self.rows += other.rows
        self.ratios += other.ratios
        self.raw.update(other.raw)


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when either side is missing or the denominator is not positive."""
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return math.nan
    return num / den


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = math.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def negclip_flops(batch_sizes: list[int], dim: int) -> float:
    """Effective FLOPs of negCLIPLoss: Σ over every batch of every round of ``2·B_b²·d``."""
    return float(sum(2.0 * b * b * dim for b in batch_sizes))


def plan_batch_sizes(plan: np.ndarray) -> list[int]:
    """Sizes of every batch of a ``(K, n)`` batch plan, all rounds."""
    return [int(c) for row in np.atleast_2d(plan) for c in np.bincount(row) if c]


# --------------------------------------------------------------------------------------------------
# Processes and memory (Linux /proc)

_KB = 1024


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS``/``VmHWM`` (bytes) of a process; empty if it is gone or /proc is unavailable."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * _KB
    except (OSError, ValueError, IndexError):
        return {}
    return out


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset a process's peak RSS (``VmHWM``) to its current RSS (``clear_refs`` 5, Linux ≥ 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _process_table() -> dict[int, tuple[int, str]]:
    """``pid -> (ppid, cmdline)`` of every visible process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, cmd)
    return table


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """Processes below ``root`` (not ``root`` itself): ``pid -> (ppid, cmdline)``."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, tuple[int, str]] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out[pid] = table[pid]
        stack += children.get(pid, [])
    return out


def other_java_processes() -> int:
    """Java processes on the machine that this process did not start (other sessions' Spark)."""
    mine = set(descendants(os.getpid()))
    return sum(
        1 for pid, (_, cmd) in _process_table().items() if pid not in mine and cmd.split(" ", 1)[0].endswith("java")
    )


def process_kind(pid: int, tree: dict[int, tuple[int, str]]) -> str:
    """``jvm``, ``python worker`` (forked by the PySpark daemon), ``python daemon`` or ``other``."""
    ppid, cmd = tree[pid]
    if cmd.split(" ", 1)[0].endswith("java"):
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
        parent = tree.get(ppid, (0, ""))[1]
        return "python worker" if "pyspark.daemon" in parent else "python daemon"
    return "other"


def _busy_jiffies() -> int:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def _tree_jiffies(root: int) -> int:
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, ValueError, IndexError):
            continue
    return total


class CpuWatch:
    """CPU used by processes outside this process tree (other sessions, other jobs) while a block runs.

    ``others`` is in cores (0 = nothing else ran; 1 = one core's worth of foreign work), so each
    measurement says whether it was taken on a quiet machine.
    """

    def __init__(self) -> None:
        self.others = math.nan
        self._start: tuple[float, int, int] | None = None

    def __enter__(self) -> CpuWatch:
        try:
            self._start = (time.perf_counter(), _busy_jiffies(), _tree_jiffies(os.getpid()))
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        t0, busy0, mine0 = self._start
        try:
            busy, mine = _busy_jiffies() - busy0, _tree_jiffies(os.getpid()) - mine0
        except OSError:
            return
        elapsed = time.perf_counter() - t0
        if elapsed > 0:
            self.others = max(0.0, (busy - mine) / os.sysconf("SC_CLK_TCK") / elapsed)


def quiet_note(watch: CpuWatch) -> str:
    """``others 0.1 cores`` for a result's note."""
    return "" if math.isnan(watch.others) else f"others used {watch.others:.2f} cores"


@dataclass
class PhaseMemory:
    """Peak RSS of each process under the monitored root during one phase."""

    peaks: dict[int, int] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    exact: bool = True
    """Whether peaks are kernel high-water marks reset at the phase start (else sampled RSS only)."""
    cpu: CpuWatch = field(default_factory=CpuWatch)
    """CPU used outside this process tree during the phase."""

    def of_kind(self, kind: str) -> list[int]:
        return [v for pid, v in self.peaks.items() if self.kinds.get(pid) == kind]


class ProcessTreeMonitor:
    """Samples the RSS of every process below ``root`` (the JVM and Python workers of a local Spark).

    Inside :meth:`phase`, each process's peak is its kernel high-water mark (``VmHWM``), reset at
    the start of the phase, or the largest sampled ``VmRSS`` where the reset is not permitted.
    """

    def __init__(self, root: int | None = None, interval: float = 0.05) -> None:
        self.root = root if root is not None else os.getpid()
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: PhaseMemory | None = None
        self._tree: dict[int, tuple[int, str]] = {}

    def __enter__(self) -> ProcessTreeMonitor:
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        tree = descendants(self.root)
        with self._lock:
            self._tree.update(tree)
            phase = self._current
            if phase is None:
                return
            for pid in tree:
                st = proc_status(pid)
                if not st:
                    continue
                peak = max(st.get("VmRSS", 0), st.get("VmHWM", 0) if phase.exact else 0)
                phase.peaks[pid] = max(phase.peaks.get(pid, 0), peak)
                phase.kinds[pid] = process_kind(pid, self._tree)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextmanager
    def phase(self) -> Iterator[PhaseMemory]:
        """Measure peaks from now until the block ends; the yielded object is filled on exit."""
        result = PhaseMemory()
        for pid in descendants(self.root):
            result.exact = reset_peak_rss(pid) and result.exact
        with self._lock:
            self._current = result
        try:
            with result.cpu:
                yield result
        finally:
            self._sample()
            with self._lock:
                self._current = None


# --------------------------------------------------------------------------------------------------
# Fresh processes and machine facts


class FreshProcess:
    """A function call running in a new Python interpreter (its own memory high-water mark, its own BLAS)."""

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self._dir = tempfile.mkdtemp(prefix="clipsift-bench-call-")
        call, self._result = os.path.join(self._dir, "call.pkl"), os.path.join(self._dir, "result.pkl")
        with open(call, "wb") as fh:
            pickle.dump((fn.__module__, fn.__qualname__, args, kwargs), fh)
        code = (
            "import importlib, pickle, sys\n"
            "mod, name, args, kwargs = pickle.load(open(sys.argv[1], 'rb'))\n"
            "result = getattr(importlib.import_module(mod), name)(*args, **kwargs)\n"
            "pickle.dump(result, open(sys.argv[2], 'wb'))\n"
        )
        child_env = {**os.environ, **(env or {})}
        # The child imports this package the way this process did (tests.benchmarks or, under pytest, benchmarks).
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._proc = subprocess.Popen([sys.executable, "-c", code, call, self._result], env=child_env)

    def result(self) -> Any:
        """Wait for the call and return its result (raises if the child failed)."""
        try:
            rc = self._proc.wait()
            if rc != 0:
                raise RuntimeError(f"benchmark child process exited with status {rc}")
            with open(self._result, "rb") as fh:
                return pickle.load(fh)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def in_fresh_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` (a module-level function) in a new Python process and return its result."""
    result: T = FreshProcess(fn, args, kwargs).result()
    return result


def blas_info() -> dict[str, Any]:
    """The BLAS numpy runs (threadpoolctl), or why it cannot be told."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"note": "threadpoolctl not installed (pip install threadpoolctl to report the BLAS kernel)"}
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer", "filepath")
            return {k: info.get(k) for k in keys}
    return {"note": "no BLAS library found loaded"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0


def machine_info() -> dict[str, Any]:
    """Facts that explain the numbers: CPU, cores, memory, BLAS and its kernel, versions, load, other Spark."""
    import pyarrow
    import pyspark

    env_keys = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(_mem_total() / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyspark": pyspark.__version__,
        "pyarrow": pyarrow.__version__,
        "blas": blas_info(),
        "env": {k: os.environ.get(k) for k in env_keys},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "other_java_processes": other_java_processes(),
    }


def repo_root() -> Path:
    """The repository root (the folder holding ``udfs/`` and ``jobs/``)."""
    return Path(__file__).resolve().parents[2]
