"""The torch path of the score kernels (``clipsift.udfs.kernels.torch_kernels``) on the CPU, against the numpy kernels.

At ``precision="fp32"`` every part of negCLIPLoss and NormSim∞ must equal the numpy kernel's within 1e-5, on
random pools and on the inputs that break naive code (duplicates, all-equal logits, logits of ±1000, single-row
batches, remainder batches). tf32/bf16 are emulated on the CPU by rounding the matmul inputs: they must move the
scores (the rounding happens) and stay within their documented error. The CUDA run of the same comparison is
``tests/gpu/test_kernels_cuda.py``. Also: where :func:`clipsift.udfs.score.kernel_device` sends a score, and that
a CPU host never imports torch for it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

torch = pytest.importorskip("torch", reason="pip install torch (clipsift's gpu extra)")

from clipsift.udfs.kernels import negclip_loss, normsim_inf  # noqa: E402  (after the skip: needs torch)
from clipsift.udfs.kernels import torch_kernels as tk  # noqa: E402

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
PART_KEYS = ("clip_score", "r_i2t", "r_t2i", "negclip_loss")
#: The issue's bound between the torch (fp32) and the numpy path.
ATOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]


def _unit(x: NDArray[np.floating]) -> F32:
    x64 = np.asarray(x, dtype=np.float64)
    out: F32 = (x64 / np.linalg.norm(x64, axis=-1, keepdims=True)).astype(np.float32)
    return out


def _pair(rng: np.random.Generator, n: int, d: int) -> tuple[F32, F32]:
    """Unit image/caption rows, own-pair cosine about min(0.5, 2/√d) against others of ±1/√d: the own pair stands
    out by a few standard deviations, as in CLIP, so the other terms of each log-sum-exp count."""
    cos = min(0.5, 2 / math.sqrt(d))
    img = _unit(rng.normal(size=(n, d)))
    txt = _unit(img + rng.normal(size=(n, d)) * math.sqrt((1 / cos**2 - 1) / d))
    return img, txt


def _plan(rng: np.random.Generator, n: int, batch_size: int, rounds: int) -> I64:
    """(rounds, n) batch ids: a permutation cut into chunks of ``batch_size`` (the last a remainder), ids spread."""
    plan = np.empty((rounds, n), dtype=np.int64)
    for k in range(rounds):
        chunk = np.empty(n, dtype=np.int64)
        chunk[rng.permutation(n)] = np.arange(n) // batch_size
        plan[k] = chunk * 7919 - 1000
    return plan


def _both(
    img: F32, txt: F32, plan: I64, tau: float, block_rows: int | None = None, precision: str = "fp32"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    want = negclip_loss(img, txt, plan, tau=tau, return_parts=True, block_rows=block_rows)
    got = tk.negclip_loss(img, txt, plan, tau=tau, return_parts=True, block_rows=block_rows, precision=precision)
    assert isinstance(want, dict) and isinstance(got, dict)
    return want, got


def _assert_parts_close(want: dict[str, np.ndarray], got: dict[str, np.ndarray], atol: float = ATOL) -> None:
    for key in PART_KEYS:
        assert got[key].dtype == np.float64 and got[key].shape == want[key].shape, key
        assert np.all(np.isfinite(got[key])), key
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=0, err_msg=key)


# --------------------------------------------------------------------------------------------------
# negCLIPLoss, fp32: equal to numpy within 1e-5


@pytest.mark.parametrize(
    ("n", "d", "batch_size", "rounds", "tau", "block_rows"),
    [
        (300, 64, 128, 3, 0.01, None),  # remainder batch of 44
        (300, 64, 128, 2, 0.01, 7),  # blocks that do not divide the batch
        (257, 32, 257, 1, 0.07, 1),  # one batch, one row per block
        (512, 768, 512, 1, 0.01, 100),  # CLIP's dimension
        (200, 16, 50, 4, 1.0, None),  # τ = 1: logits within ±1
        (200, 16, 50, 2, 10.0, None),  # large temperature: logits within ±0.1
    ],
)
def test_negclip_torch_equals_numpy(
    n: int, d: int, batch_size: int, rounds: int, tau: float, block_rows: int | None
) -> None:
    rng = np.random.default_rng(n + d)
    img, txt = _pair(rng, n, d)
    want, got = _both(img, txt, _plan(rng, n, batch_size, rounds), tau, block_rows)
    assert float(np.median(want["negclip_loss"])) < -1e-3  # the contrastive terms matter in this data
    _assert_parts_close(want, got)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 24),
    batch_size=st.integers(1, 70),
    rounds=st.integers(1, 3),
    tau=st.sampled_from([1e-3, 0.01, 0.07, 1.0]),
    block_rows=st.one_of(st.none(), st.integers(1, 9)),
    seed=st.integers(0, 2**31 - 1),
)
def test_negclip_torch_equals_numpy_on_any_shape(
    n: int, d: int, batch_size: int, rounds: int, tau: float, block_rows: int | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    img, txt = _pair(rng, n, d)
    want, got = _both(img, txt, _plan(rng, n, batch_size, rounds), tau, block_rows)
    _assert_parts_close(want, got)
    assert np.all(got["negclip_loss"] <= 0.0)


@pytest.mark.parametrize("tau", [1e-3, 1e-4])
def test_negclip_torch_large_logits(tau: float) -> None:
    """Logits s/τ up to ±1000 and ±10,000: exp would overflow without the max shift."""
    rng = np.random.default_rng(3)
    img, txt = _pair(rng, 200, 32)
    want, got = _both(img, txt, _plan(rng, 200, 64, 2), tau, block_rows=16)
    _assert_parts_close(want, got)


def test_negclip_torch_identical_rows() -> None:
    """Every pair the same vector (all logits equal, 100 at τ = 0.01): −τ·log(batch size) exactly as numpy."""
    rng = np.random.default_rng(4)
    img = np.repeat(_unit(rng.normal(size=(1, 32))), 23, axis=0)
    plan = _plan(rng, 23, 5, 2)
    want, got = _both(img, img.copy(), plan, 0.01, block_rows=3)
    _assert_parts_close(want, got)


def test_negclip_torch_duplicates_and_anti_aligned_rows() -> None:
    """Exact duplicate pairs, captions equal to their image, and img = −txt rows (logits −100) among random rows."""
    rng = np.random.default_rng(5)
    n = 160
    img, txt = _pair(rng, n, 16)
    txt[:10] = img[:10]
    img[10:30] = img[0]
    txt[10:30] = txt[0]
    img[40:60] = -txt[40:60]
    want, got = _both(img, txt, _plan(rng, n, 40, 3), 0.01, block_rows=7)
    _assert_parts_close(want, got)
    assert np.all(got["negclip_loss"][10:30] <= -0.01 * math.log(2) + 1e-6)  # duplicates are penalised


def test_negclip_torch_single_row_batches_score_zero() -> None:
    """A batch of one row has R_i2t = R_t2i = ½ s_ii: the loss is exactly 0, as in the numpy kernel."""
    rng = np.random.default_rng(6)
    img, txt = _pair(rng, 12, 8)
    plan = np.arange(12, dtype=np.int64)[None, :]
    want, got = _both(img, txt, plan, 0.01)
    _assert_parts_close(want, got)
    assert np.all(got["negclip_loss"] == 0.0)
    one = tk.negclip_loss(img[:1], txt[:1], np.zeros((3, 1), dtype=np.int64))
    assert isinstance(one, np.ndarray) and one.shape == (1,) and one[0] == 0.0


def test_negclip_torch_independent_of_block_rows() -> None:
    rng = np.random.default_rng(7)
    img, txt = _pair(rng, 150, 32)
    plan = _plan(rng, 150, 40, 2)
    results = [tk.negclip_loss(img, txt, plan, return_parts=True, block_rows=b) for b in (1, 7, None, 10_000)]
    for other in results[1:]:
        assert isinstance(other, dict) and isinstance(results[0], dict)
        _assert_parts_close(results[0], other, atol=2e-6)


def test_negclip_torch_default_is_the_score_alone_and_inputs_are_untouched() -> None:
    rng = np.random.default_rng(8)
    img, txt = _pair(rng, 90, 16)
    img.flags.writeable = False  # as Arrow hands them over: read-only, and no warning about it
    txt_before = txt.copy()
    plan = _plan(rng, 90, 32, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = tk.negclip_loss(img, txt, plan)
    assert isinstance(got, np.ndarray) and got.shape == (90,)
    np.testing.assert_allclose(got, np.asarray(negclip_loss(img, txt, plan)), atol=ATOL, rtol=0)
    np.testing.assert_array_equal(txt, txt_before)


def test_negclip_torch_ignores_a_global_reduced_matmul_precision_and_restores_it() -> None:
    """A process set to ``medium`` (oneDNN may then round float32 matmuls on CPUs with bf16 units, as here) gets
    the same bits as one at ``highest``, and keeps its setting."""
    rng = np.random.default_rng(9)
    img, txt = _pair(rng, 200, 768)
    plan = _plan(rng, 200, 100, 1)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        want = tk.negclip_loss(img, txt, plan, return_parts=True)
        torch.set_float32_matmul_precision("medium")
        got = tk.negclip_loss(img, txt, plan, return_parts=True)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert isinstance(want, dict) and isinstance(got, dict)
    for key in PART_KEYS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"txt": np.zeros((5, 4), dtype=np.float32)}, "same shape"),
        ({"batches": np.zeros((1, 5), dtype=np.int64)}, "batches must have shape"),
        ({"batches": np.zeros((1, 6), dtype=np.float64)}, "integer batch ids"),
        ({"tau": 0.0}, "tau must be > 0"),
        ({"block_rows": 0}, "block_rows must be >= 1"),
        ({"precision": "fp16"}, "precision must be one of"),
    ],
)
def test_negclip_torch_rejects_what_numpy_rejects(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "img": np.ones((6, 4), dtype=np.float32),
        "txt": np.ones((6, 4), dtype=np.float32),
        "batches": np.zeros((1, 6), dtype=np.int64),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tk.negclip_loss(**args)  # type: ignore[arg-type]  # deliberately wrong values


# --------------------------------------------------------------------------------------------------
# negCLIPLoss, tf32 / bf16 (emulated on the CPU): the rounding happens, the error stays bounded


@pytest.mark.parametrize(("precision", "clip_atol", "loss_atol"), [("tf32", 1e-3, 1e-3), ("bf16", 6e-3, 6e-3)])
def test_negclip_torch_reduced_precision_moves_scores_within_bounds(
    precision: str, clip_atol: float, loss_atol: float
) -> None:
    rng = np.random.default_rng(10)
    img, txt = _pair(rng, 512, 768)
    want, got = _both(img, txt, _plan(rng, 512, 256, 2), 0.01, precision=precision)
    moved = float(np.max(np.abs(got["clip_score"] - want["clip_score"])))
    assert moved > 1e-6, "the matmul inputs were not rounded"
    np.testing.assert_allclose(got["clip_score"], want["clip_score"], atol=clip_atol, rtol=0)
    np.testing.assert_allclose(got["negclip_loss"], want["negclip_loss"], atol=loss_atol, rtol=0)
    assert np.all(got["negclip_loss"] <= 0.0)


def test_tf32_rounding_keeps_ten_mantissa_bits() -> None:
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11 + 2**-12, 1.0 + 2**-12, -(1.0 + 2**-11 + 2**-12), 3.0e-20, 0.0])
    got = tk._operand(x, "tf32")
    want = torch.tensor([1.0 + 2**-10, 1.0 + 2**-10, 1.0, -(1.0 + 2**-10), 3.0e-20, 0.0])
    torch.testing.assert_close(got[:3], want[:3], atol=0, rtol=0)
    torch.testing.assert_close(got[3], want[3], atol=0, rtol=0)
    assert abs(float(got[4]) - 3.0e-20) <= 3.0e-20 * 2**-10 and float(got[5]) == 0.0
    torch.testing.assert_close(tk._operand(got, "tf32"), got, atol=0, rtol=0)  # idempotent


# --------------------------------------------------------------------------------------------------
# NormSim∞


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(("m", "block_size"), [(1, 8192), (1000, 8192), (1000, 333), (4097, 1024)])
def test_normsim_inf_torch_equals_numpy(m: int, block_size: int, signed: bool) -> None:
    rng = np.random.default_rng(m + block_size)
    img = _unit(rng.normal(size=(300, 48)))
    target = _unit(rng.normal(size=(m, 48)))
    want = normsim_inf(img, target, signed=signed, block_size=block_size)
    got = tk.normsim_inf(img, target, signed=signed, block_size=block_size)
    assert got.dtype == np.float64 and got.shape == (300,)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_normsim_inf_torch_signed_differs_where_the_best_match_is_negative() -> None:
    rng = np.random.default_rng(11)
    target = _unit(rng.normal(size=(50, 16)))
    img = -target[:5]  # each pool row's best |cosine| is −1
    np.testing.assert_allclose(tk.normsim_inf(img, target), 1.0, atol=ATOL)
    signed = tk.normsim_inf(img, target, signed=True)
    assert np.all(signed < 0.99)
    np.testing.assert_allclose(signed, normsim_inf(img, target, signed=True), atol=ATOL, rtol=0)


def test_normsim_inf_torch_reads_a_memory_map_and_a_resident_target(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    img = _unit(rng.normal(size=(64, 32)))
    target = _unit(rng.normal(size=(2000, 32)))
    np.save(tmp_path / "t.npy", target)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    want = normsim_inf(img, target, block_size=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only memory map is read without a warning
        got_mapped = tk.normsim_inf(img, mapped, block_size=300)
    on_device = tk.resident(mapped, "cpu")
    assert isinstance(on_device, torch.Tensor) and tuple(on_device.shape) == (2000, 32)
    got_resident = tk.normsim_inf(img, on_device, block_size=300)
    np.testing.assert_allclose(got_mapped, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got_resident, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("precision", "atol"), [("tf32", 1e-3), ("bf16", 6e-3)])
def test_normsim_inf_torch_reduced_precision_within_bounds(precision: str, atol: float) -> None:
    rng = np.random.default_rng(13)
    img = _unit(rng.normal(size=(200, 768)))
    target = _unit(rng.normal(size=(3000, 768)))
    want = normsim_inf(img, target)
    got = tk.normsim_inf(img, target, precision=precision)
    resident = tk.normsim_inf(img, tk.resident(target, "cpu", precision), precision=precision)
    assert float(np.max(np.abs(got - want))) > 1e-7, "the matmul inputs were not rounded"
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    np.testing.assert_allclose(resident, got, atol=1e-6, rtol=0)


def test_normsim_inf_torch_rejects_bad_targets() -> None:
    img = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="target must be"):
        tk.normsim_inf(img, np.ones((5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="target is empty"):
        tk.normsim_inf(img, np.ones((0, 4), dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Where a score runs: clipsift.udfs.score.kernel_device


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_kernel_device_cpu_is_numpy() -> None:
    from clipsift.udfs.score import kernel_device

    assert kernel_device("cpu", "negclip.device") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA: tests/gpu covers it")
def test_kernel_device_cuda_without_a_gpu_is_one_error_naming_the_key() -> None:
    from clipsift.udfs.score import kernel_device

    with pytest.raises(RuntimeError, match=r"^normsim\.device is 'cuda:1', but this executor has no GPU") as info:
        kernel_device("cuda:1", "normsim.device")
    assert "use auto or cpu" in str(info.value)


def test_auto_on_a_cpu_host_scores_on_numpy_without_importing_torch() -> None:
    """The job's own group function with the default ``device: auto``: numpy, and torch never imported."""
    code = (
        "import sys, numpy as np, pyarrow as pa\n"
        "from clipsift.udfs.arrow import from_matrix\n"
        "from clipsift.udfs.score import NegClipSettings, _host_shows_gpu, kernel_device, negclip_table\n"
        "if _host_shows_gpu(): print('gpu host'); sys.exit(0)\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(40, 8)).astype(np.float32); x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "t = pa.table({'uid': [f'u{i}' for i in range(40)], 'image_emb': from_matrix(x), 'text_emb': from_matrix(x)})\n"
        "out = negclip_table(t, NegClipSettings(rounds=2, batch_size=16, tau=0.01, seed=0, dim=8))\n"
        "assert out.num_rows == 40 and kernel_device('auto', 'negclip.device') is None\n"
        "print('torch' in sys.modules)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "gpu host":
        pytest.skip("this host has a GPU device node: auto goes to torch there (tests/gpu)")
    assert proc.stdout.strip() == "False"


def test_without_torch_auto_is_numpy_and_cuda_says_torch_is_missing() -> None:
    """The CPU image has no torch: ``auto`` falls back to numpy, ``cuda`` fails with the reason (import blocked)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed: 'import torch' raises ImportError\n"
        "import clipsift.udfs.score as s\n"
        "s._host_shows_gpu = lambda: True  # even on a host with a GPU device node\n"
        "assert s.kernel_device('auto', 'negclip.device') is None\n"
        "try:\n"
        "    s.kernel_device('cuda', 'negclip.device')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "negclip.device is 'cuda', but this executor has no GPU for it (torch is not installed); use auto or cpu"
    )
