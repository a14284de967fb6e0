"""open_clip teacher models: resolve a model spec, load it once per Python worker, encode batches.

A :class:`ModelSpec` names a model the way open_clip does:

* a built-in name with a pretrained tag (``ViT-L-14`` + ``openai``), fetched from the hub into
  ``cache_dir`` (or found there when offline);
* a built-in or custom name with a local checkpoint file (``pretrained: /path/to/ckpt.pt``), loaded
  with ``torch.load(weights_only=True)``;
* a custom architecture from a model config JSON (``config_json``), with a checkpoint or with
  seeded random weights (tests, benchmarks);
* ``hf-hub:org/repo`` or ``local-dir:/path`` names, passed to open_clip as they are.

:func:`get_model` keeps one :class:`ClipEncoder` per spec in a module-level cache, so an executor's
Python worker loads the model once and serves every batch and task with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ModelLoadError(RuntimeError):
    """The model cannot be built or its weights cannot be found; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    """Which open_clip model to run, where, and how. Hashable: it keys the per-worker model cache."""

    name: str
    """open_clip model name (``ViT-B-32``), ``hf-hub:org/repo``, ``local-dir:/path``, or a custom config's name."""
    pretrained: str | None = None
    """A pretrained tag (``openai``, ``laion2b_s34b_b79k``), a local checkpoint file, or None for random weights."""
    config_json: str | None = None
    """Text of a custom model config (the JSON open_clip keeps in ``model_configs/``), registered as ``name``."""
    cache_dir: str | None = None
    """Where hub weights are downloaded to / looked up in."""
    device: str = "auto"
    """``auto`` (CUDA when the worker has it, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``; CPU always runs fp32."""
    seed: int = 0
    """Seed of the random initialisation when ``pretrained`` is None (every worker builds the same weights)."""
    threads: int | None = None
    """torch intra-op threads on CPU (None: torch's default)."""

    def is_checkpoint(self) -> bool:
        """True when ``pretrained`` names a file rather than a hub tag."""
        return self.pretrained is not None and (
            os.sep in self.pretrained or self.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
        )


@dataclass(frozen=True)
class ModelIdentity:
    """What a row's embedding was made with; ``model_id`` keys the embedding table with the uid."""

    model_id: str
    name: str
    pretrained: str | None
    checkpoint_sha256: str | None
    config_sha256: str | None
    image_size: int
    embed_dim: int
    context_length: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str


class Encoder(Protocol):
    """What the embedding UDF needs from a model (tests may inject any object with these members)."""

    identity: ModelIdentity
    precision: str
    device: str

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 pixels -> ``(n, d)`` float32 unit rows."""
        ...

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """``n`` captions -> ``(n, d)`` float32 unit rows."""
        ...


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def model_identity(spec: ModelSpec, model: Any) -> ModelIdentity:
    """Identity of a built model: model id, weights' provenance and its preprocessing."""
    checkpoint_sha = file_sha256(spec.pretrained) if spec.pretrained and spec.is_checkpoint() else None
    config_sha = hashlib.sha256(spec.config_json.encode()).hexdigest() if spec.config_json else None
    if checkpoint_sha is not None:
        weights = f"sha256-{checkpoint_sha[:16]}"
    elif spec.pretrained is not None:
        weights = spec.pretrained
    elif spec.name.startswith(("hf-hub:", "local-dir:")):
        weights = "bundled"
    else:
        weights = f"random-seed{spec.seed}"
    arch = f"{spec.name}@cfg-{config_sha[:12]}" if config_sha else spec.name
    pp = model.visual.preprocess_cfg
    size = pp.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ModelIdentity(
        model_id=f"{arch}:{weights}",
        name=spec.name,
        pretrained=None if checkpoint_sha is not None else spec.pretrained,
        checkpoint_sha256=checkpoint_sha,
        config_sha256=config_sha,
        image_size=size,
        embed_dim=_probe_dim(model, size),
        context_length=int(getattr(model, "context_length", 77)),
        mean=tuple(float(v) for v in pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(float(v) for v in pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=str(pp.get("interpolation", "bicubic")),
        resize_mode=str(pp.get("resize_mode", "shortest")),
    )


def _probe_dim(model: Any, size: int) -> int:
    import torch

    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, size, size)).shape[-1])


class ClipEncoder:
    """An open_clip model and tokenizer on one device, encoding batches to unit float32 rows."""

    def __init__(self, spec: ModelSpec) -> None:
        import torch

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.precision = "fp32" if self.device == "cpu" else ("bf16" if spec.precision == "auto" else spec.precision)
        if self.device == "cpu" and spec.threads:
            torch.set_num_threads(spec.threads)
        model, tokenizer = _build(spec)
        self.identity = model_identity(spec, model)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._mean = torch.tensor(self.identity.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.identity.std, device=self.device).view(1, 3, 1, 1)
        self._lock = threading.Lock()

    def _threads(self) -> None:
        """torch's thread count is per process: re-apply this spec's, which another cached spec may have changed."""
        import torch

        if self.device == "cpu" and self.spec.threads and torch.get_num_threads() != self.spec.threads:
            torch.set_num_threads(self.spec.threads)

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 -> ``(n, d)`` float32 unit rows (ToTensor + Normalize done on the device)."""
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.identity.embed_dim), dtype=np.float32)
        self._threads()
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device != "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        # Same arithmetic as torchvision's ToTensor then Normalize, so results match open_clip's preprocess.
        x = x.permute(0, 3, 1, 2).float().div(255).sub(self._mean).div(self._std)
        with self._lock, torch.inference_mode(), self._autocast():
            out = self.model.encode_image(x)
        return _unit_rows(out)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Captions -> ``(n, d)`` float32 unit rows; the tokenizer truncates to the context length."""
        import torch

        if not texts:
            return np.zeros((0, self.identity.embed_dim), dtype=np.float32)
        self._threads()
        tokens = self.tokenizer(texts)
        with self._lock, torch.inference_mode(), self._autocast():
            out = self.model.encode_text(tokens.to(self.device))
        return _unit_rows(out)


def _unit_rows(out: Any) -> np.ndarray:
    import torch

    out = torch.nn.functional.normalize(out.float(), dim=-1)
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; explicit values are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' asked for, but torch sees no CUDA device; use device: auto or cpu")
    return device


def _register_config(spec: ModelSpec) -> None:
    import open_clip

    if spec.config_json is None:
        return
    try:
        json.loads(spec.config_json)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"model '{spec.name}': the custom model config is not valid JSON ({e})") from None
    folder = Path(tempfile.gettempdir()) / "clipsift-model-configs"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(spec.config_json.encode()).hexdigest()[:16]
    sub = folder / digest
    sub.mkdir(exist_ok=True)
    path = sub / f"{spec.name}.json"
    if not path.exists():
        tmp = sub / f".{spec.name}.{os.getpid()}.tmp"
        tmp.write_text(spec.config_json)
        os.replace(tmp, path)
    open_clip.add_model_config(path)


def _build(spec: ModelSpec) -> tuple[Any, Any]:
    """Build the model (CPU, fp32, eval) and its tokenizer, or raise one :class:`ModelLoadError`."""
    import open_clip
    import torch

    _register_config(spec)
    schema = spec.name.startswith(("hf-hub:", "local-dir:"))
    if not schema and spec.name not in open_clip.list_models() and spec.config_json is not None:
        raise ModelLoadError(
            f"model '{spec.name}': the custom model config was not accepted by open_clip; it needs 'embed_dim', "
            "'vision_cfg' and 'text_cfg' (see open_clip's model_configs/*.json for examples)"
        )
    if not schema and spec.name not in open_clip.list_models():
        raise ModelLoadError(
            f"model '{spec.name}' is not an open_clip model name; use one of open_clip.list_models() "
            "(e.g. ViT-B-32, ViT-L-14), an hf-hub:/local-dir: name, or give model.config_json for a custom one"
        )
    if spec.pretrained is not None and spec.is_checkpoint() and not os.path.isfile(spec.pretrained):
        raise ModelLoadError(
            f"model '{spec.name}': checkpoint file '{spec.pretrained}' does not exist on this worker; "
            "put it on storage every executor can read (a shared mount, /Volumes/...) and give that path"
        )
    if spec.pretrained is None and not schema:
        torch.manual_seed(spec.seed)
    try:
        model = open_clip.create_model(
            spec.name,
            pretrained=spec.pretrained,
            cache_dir=spec.cache_dir,
            weights_only=True,
            device="cpu",
        )
    except Exception as e:  # open_clip raises RuntimeError/OSError/HF errors for missing weights
        raise ModelLoadError(_load_failure(spec, e)) from e
    try:
        tokenizer = open_clip.get_tokenizer(spec.name, cache_dir=spec.cache_dir)
    except Exception as e:
        raise ModelLoadError(f"model '{spec.name}': its tokenizer could not be loaded ({type(e).__name__}: {e})") from e
    return model.eval(), tokenizer


def load_weights(source: str | os.PathLike[str] | BinaryIO, what: str, fix: str) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, for files from anywhere (NormSim targets, adapters).

    Raises:
        ValueError: one line naming ``what``: a pickle of more than tensors and plain containers is refused (its
            code is never run; ``fix`` says what to save instead), and a file torch cannot read says so.
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a foreign file on stderr
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(refused_pickle(what, exc, fix)) from None
    except Exception as exc:  # a zip torch cannot read (RuntimeError), a cut file (EOFError), ...
        raise ValueError(f"{what} cannot be read by torch.load ({type(exc).__name__}: {first_line(exc)})") from None


def refused_pickle(what: str, exc: BaseException, fix: str) -> str:
    """One line: ``torch.load(weights_only=True)`` refused ``what`` (and the global it stopped at); then ``fix``."""
    text = str(exc)  # torch's message is paragraphs of advice; the global or opcode it stopped at is the fact
    named = re.search(r"GLOBAL\s+([\w.]+)", text)
    opcode = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = f" (it names {named.group(1)})" if named else f" ({opcode.group(1)[:200]})" if opcode else ""
    return (
        f"{what} was refused: it pickles more than tensors, and loading it could run code{detail}; "
        f"only tensors and plain containers are loaded (torch.load with weights_only=True): {fix}"
    )


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def _load_failure(spec: ModelSpec, e: Exception) -> str:
    what = f"model '{spec.name}'" + (f" with pretrained '{spec.pretrained}'" if spec.pretrained else "")
    if isinstance(e, pickle.UnpicklingError):
        return refused_pickle(what, e, "save the model's weights: torch.save(model.state_dict(), path)")
    cause = f"{type(e).__name__}: {first_line(e)}"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if (spec.pretrained is not None and not spec.is_checkpoint()) or spec.name.startswith("hf-hub:"):
        where = spec.cache_dir or "the default Hugging Face cache (~/.cache/huggingface)"
        return (
            f"{what}: the weights could not be fetched{' (HF_HUB_OFFLINE=1)' if offline else ''} ({cause}). "
            f"Fix: download them once on a machine with network into model.cache_dir ({where}) and point "
            "model.cache_dir there, or set model.pretrained to a local checkpoint file"
        )
    return f"{what}: could not be built ({cause}); check model.name, model.config_json and model.pretrained"


def identify(spec: ModelSpec) -> ModelIdentity:
    """Build the model once on the CPU (so a missing weight fails here, once) and return its identity."""
    model, _tokenizer = _build(spec)
    return model_identity(spec, model)


_CACHE: dict[ModelSpec, ClipEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_model(spec: ModelSpec) -> ClipEncoder:
    """The worker's encoder for ``spec``, built on first use (keyed, module-level cache)."""
    with _CACHE_LOCK:
        encoder = _CACHE.get(spec)
        if encoder is None:
            encoder = ClipEncoder(spec)
            _CACHE[spec] = encoder
        return encoder
