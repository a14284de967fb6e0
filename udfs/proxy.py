"""Proxy CLIP training: a student CLIP trained from scratch on a selection's pairs, then evaluated.

The pure side of ``clipsift eval`` (torch, open_clip, numpy, Pillow, pyarrow; no Spark):

* :func:`pixels_fn`: a ``mapInArrow`` function that decodes image bytes (or reads image paths) into the
  student's square uint8 pixels on the executors, so only small arrays reach the driver.
* :class:`Vocab`: the token ids a run's captions use, renumbered densely (the student's token table then holds a
  few hundred rows instead of 49,408: the "shrunk vocabulary" that makes a CPU proxy run in minutes).
* :func:`train_student`: open_clip's model (``open_clip.create_model``), tokenizer (``open_clip.get_tokenizer``)
  and loss (``open_clip.loss.ClipLoss``), AdamW with linear warm-up and cosine decay, for a fixed number of
  steps (``steps x batch_size`` = samples seen, the equal-compute budget), cycling seeded epochs over smaller sets.
* :func:`zero_shot_accuracy` (class names x prompt templates) and :func:`retrieval_recall` (image <-> text R@k).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clipsift.udfs.decode import decode_caption, decode_image, prepare_image
from clipsift.udfs.readers import read_bytes

#: The default student: a ViT of 2 layers on 32 x 32 images and a text transformer of 2 layers, 64 wide.
STUDENT_NAME = "clipsift-student-tiny"
TINY_STUDENT: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

#: What :func:`pixels_fn` returns: one row per input row, ``pixels`` null where ``error`` says why.
PIXELS_ARROW = pa.schema(
    [("uid", pa.string()), ("caption", pa.string()), ("pixels", pa.binary()), ("error", pa.string())]
)
PIXELS_DDL = "uid string, caption string, pixels binary, error string"

TextFn = Callable[[Sequence[str]], Any]


@dataclass(frozen=True)
class TrainSettings:
    """How a student is trained; every arm of an eval run gets the same settings (the same compute).

    Attributes:
        steps: optimizer steps.
        batch_size: pairs per step; ``steps * batch_size`` is the samples seen.
        lr: peak AdamW learning rate, reached after ``warmup_steps``, then cosine-decayed to zero.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay on weight matrices (not on biases, norms, ``logit_scale``).
        threads: ``torch.set_num_threads`` on CPU (None: the machine's cores).
        device: ``auto`` (CUDA when torch sees a GPU), ``cpu``, ``cuda`` or ``cuda:N``.
        shrink_vocab: renumber the tokens the run's texts use (:class:`Vocab`) and size the token table to them.
    """

    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    threads: int | None = None
    device: str = "auto"
    shrink_vocab: bool = True

    @property
    def samples_seen(self) -> int:
        """Pairs the student sees: ``steps * batch_size``."""
        return self.steps * self.batch_size


def pixels_fn(
    size: int,
    *,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    max_pixels: int = 50_000_000,
    max_image_bytes: int = 64 << 20,
    max_caption_chars: int = 4096,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function from rows with ``uid, caption, image, image_path`` to :data:`PIXELS_ARROW`.

    Each image (``image`` bytes, else the file at ``image_path``) is decoded and resized/cropped as open_clip's
    inference transform does (:func:`~clipsift.udfs.decode.prepare_image`), to ``size x size x 3`` uint8 bytes.
    A row that cannot be used keeps its uid with null pixels and the reason in ``error``.
    """

    def convert(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            columns = batch.to_pydict()
            out: dict[str, list[Any]] = {"uid": [], "caption": [], "pixels": [], "error": []}
            for uid, caption, image, path in zip(
                columns["uid"], columns["caption"], columns["image"], columns["image_path"], strict=True
            ):
                text, _status, text_error = decode_caption(caption, max_chars=max_caption_chars)
                pixels, error = _pixels(image, path, size, interpolation, resize_mode, max_pixels, max_image_bytes)
                out["uid"].append(uid)
                out["caption"].append(text)
                out["pixels"].append(pixels)
                out["error"].append(error or (None if text is not None else text_error))
            yield pa.RecordBatch.from_pydict(out, schema=PIXELS_ARROW)

    return convert


def _pixels(
    image: bytes | None,
    path: str | None,
    size: int,
    interpolation: str,
    resize_mode: str,
    max_pixels: int,
    max_image_bytes: int,
) -> tuple[bytes | None, str | None]:
    if image is None and path:
        try:
            image = read_bytes(path, max_image_bytes)
        except Exception as exc:  # a missing or refused file is this row's problem, not the task's
            return None, f"unreadable image file: {type(exc).__name__}"
    if image is not None and len(image) > max_image_bytes:
        return None, "image_too_large"
    img, status, error = decode_image(image, max_pixels=max_pixels)
    if img is None:
        return None, f"{status}: {error}"
    return prepare_image(img, size, interpolation=interpolation, resize_mode=resize_mode).tobytes(), None


def pixels_array(blobs: Sequence[bytes], size: int) -> np.ndarray:
    """``n`` rows of :func:`pixels_fn`'s ``pixels`` as one uint8 ``(n, size, size, 3)`` array."""
    if not blobs:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), size, size, 3)


class Vocab:
    """A dense renumbering of the token ids some texts use, for a student whose token table holds only those.

    Index 0 stays the padding id, 1 stands for any token not in the vocabulary, and the known ids follow in
    their original order, so the end-of-text id (the largest) stays the largest: open_clip's text tower pools
    at ``argmax`` of the ids, which therefore still finds it.
    """

    def __init__(self, ids: Sequence[int]) -> None:
        import torch

        known = sorted({int(i) for i in ids} - {0})
        self.ids = torch.tensor([0, *known], dtype=torch.long)

    @classmethod
    def from_tokens(cls, *tokens: Any) -> Vocab:
        """The vocabulary of one or more token tensors (``(n, context)`` from an open_clip tokenizer)."""
        import torch

        return cls(np.unique(torch.cat([t.reshape(-1) for t in tokens]).numpy()).tolist())

    @property
    def size(self) -> int:
        """Rows of the student's token table: padding, unknown and the known ids."""
        return len(self.ids) + 1

    def encode(self, tokens: Any) -> Any:
        """Tokenizer ids -> this vocabulary's indices (unknown ids -> 1), same shape."""
        import torch

        position = torch.searchsorted(self.ids, tokens).clamp(max=len(self.ids) - 1)
        found = self.ids[position] == tokens
        index = torch.where(position > 0, position + 1, position)
        return torch.where(found, index, torch.ones_like(tokens))


@dataclass
class Student:
    """A trained student: the open_clip model, its tokenizer (through the run's :class:`Vocab`) and its inputs.

    Attributes:
        model: the open_clip ``CLIP`` in eval mode.
        tokenizer: open_clip's tokenizer for the architecture.
        vocab: the renumbering applied to the tokenizer's ids (None: the full vocabulary).
        device: where the model is.
        image_size: the side of the square pixels it takes.
        losses: the training loss of every step.
        seconds: wall time of the training loop.
        vocab_size: rows of its token table.
    """

    model: Any
    tokenizer: Any
    vocab: Vocab | None
    device: str
    image_size: int
    losses: list[float]
    seconds: float
    vocab_size: int

    def tokens(self, texts: Sequence[str]) -> Any:
        """Token ids of ``texts`` as the student reads them."""
        tokens = self.tokenizer(list(texts))
        return self.vocab.encode(tokens) if self.vocab is not None else tokens

    def encode_images(self, pixels: np.ndarray, batch_size: int = 512) -> Any:
        """uint8 ``(n, s, s, 3)`` -> unit float32 rows on the CPU."""
        import torch

        self.model.eval()
        with torch.inference_mode():
            parts = [
                self.model.encode_image(_normalized(self.model, chunk, self.device), normalize=True).float().cpu()
                for chunk in _chunks(pixels, batch_size)
            ]
        return torch.cat(parts) if parts else torch.zeros(0, _embed_dim(self.model))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024) -> Any:
        """Texts -> unit float32 rows on the CPU."""
        import torch

        self.model.eval()
        tokens = self.tokens(texts)
        with torch.inference_mode():
            parts = [
                self.model.encode_text(chunk.to(self.device), normalize=True).float().cpu()
                for chunk in torch.split(tokens, batch_size)
            ]
        return torch.cat(parts) if parts else torch.zeros(0, _embed_dim(self.model))


def _chunks(pixels: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(pixels), size):
        yield pixels[start : start + size]


def _embed_dim(model: Any) -> int:
    return int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") else 0


def _normalized(model: Any, pixels: np.ndarray, device: str) -> Any:
    """uint8 NHWC -> the float NCHW input open_clip's transform makes (ToTensor, then Normalize)."""
    import torch

    pp = model.visual.preprocess_cfg
    mean = torch.tensor(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(pp.get("std", (0.26862954, 0.26130258, 0.27577711)), device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C")).to(device)  # a writable copy for torch
    return x.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but torch sees no CUDA device; use device: auto or cpu")
    return device


def register_config(name: str, config: Mapping[str, Any]) -> None:
    """Register an open_clip model config (a dict like open_clip's ``model_configs/*.json``) under ``name``."""
    import open_clip

    text = json.dumps(config, sort_keys=True)
    folder = Path(tempfile.gettempdir()) / "clipsift-model-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    if not path.exists():
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    open_clip.add_model_config(path)


def model_config(name: str) -> dict[str, Any]:
    """The open_clip config registered under ``name`` (a built-in architecture or one :func:`register_config`
    added).

    Raises:
        ValueError: the name is not an open_clip model.
    """
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"'{name}' is not an open_clip model; use one of open_clip.list_models() or a custom config")
    return dict(config)


def can_shrink(config: Mapping[str, Any]) -> bool:
    """True when the text tower is open_clip's own transformer over its BPE ids (not a Hugging Face model)."""
    text_cfg = config.get("text_cfg", {})
    return not any(key in text_cfg for key in ("hf_model_name", "hf_tokenizer_name"))


def build_student(name: str, vocab_size: int | None, seed: int) -> Any:
    """A randomly initialised open_clip model ``name`` (seeded), its token table cut to ``vocab_size`` rows."""
    import open_clip
    import torch

    overrides: dict[str, Any] = {}
    if vocab_size is not None:
        overrides["text_cfg"] = {**model_config(name)["text_cfg"], "vocab_size": vocab_size}
    torch.manual_seed(seed)
    root = logging.getLogger()
    root.addFilter(_no_weights_notice)  # a student has no weights by design; open_clip warns of it on every build
    try:
        return open_clip.create_model(name, pretrained=None, **overrides)
    finally:
        root.removeFilter(_no_weights_notice)


def _no_weights_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No pretrained weights loaded")


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to zero at ``steps``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_student(
    pixels: np.ndarray,
    texts: Sequence[str],
    settings: TrainSettings,
    *,
    seed: int,
    model_name: str = STUDENT_NAME,
    vocab: Vocab | None = None,
) -> Student:
    """Train a student CLIP from scratch on ``(pixels[i], texts[i])`` pairs for ``settings.steps`` steps.

    Batches are drawn from seeded random permutations of the pairs, one after another (epochs), so a set
    smaller than ``steps * batch_size`` is cycled and every student sees the same number of samples.

    Args:
        pixels: uint8 ``(n, s, s, 3)``, ``s`` the model's image size (see :func:`pixels_fn`).
        texts: ``n`` captions.
        settings: the budget and optimizer.
        seed: seeds the initial weights and the batch order.
        model_name: an open_clip architecture (``open_clip.list_models()``) or a config added with
            :func:`register_config` (default: :data:`TINY_STUDENT`, registered on first use).
        vocab: the token renumbering to use (with ``settings.shrink_vocab``); default: the tokens of ``texts``.
            Give one built from every text the student will read (evaluation prompts included) so none is unknown.

    Returns:
        The trained :class:`Student`, in eval mode.

    Raises:
        ValueError: fewer than two pairs, mismatched lengths, or pixels of another size than the model's.
    """
    import open_clip
    import torch

    if len(pixels) != len(texts):
        raise ValueError(f"{len(pixels)} images but {len(texts)} captions")
    if len(texts) < 2:
        raise ValueError(f"a contrastive batch needs at least 2 pairs, got {len(texts)}")
    if model_name == STUDENT_NAME:
        register_config(STUDENT_NAME, TINY_STUDENT)
    config = model_config(model_name)
    image_size = _image_size(config)
    if pixels.shape[1:] != (image_size, image_size, 3):
        raise ValueError(f"pixels are {pixels.shape[1:]}, the model takes ({image_size}, {image_size}, 3)")
    device = resolve_device(settings.device)
    if device == "cpu":
        torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    tokenizer = open_clip.get_tokenizer(model_name)
    tokens = tokenizer(list(texts))
    if settings.shrink_vocab and can_shrink(config):
        vocab = vocab if vocab is not None else Vocab.from_tokens(tokens)
        tokens = vocab.encode(tokens)
    else:
        vocab = None
    started = time.perf_counter()
    model = build_student(model_name, vocab.size if vocab is not None else None, seed).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": other, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    loss_fn = open_clip.loss.ClipLoss()
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        while len(order) < settings.batch_size:
            order = torch.cat([order, torch.randperm(len(texts), generator=generator)])
        batch, order = order[: settings.batch_size], order[settings.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        # Encode each distinct caption of the batch once (templated or repeated captions are common).
        unique, inverse = torch.unique(tokens[batch], dim=0, return_inverse=True)
        image_features = model.encode_image(_normalized(model, pixels[batch.numpy()], device), normalize=True)
        text_features = model.encode_text(unique.to(device), normalize=True)[inverse.to(device)]
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.eval()
    size = vocab.size if vocab is not None else int(config["text_cfg"].get("vocab_size", 49408))
    return Student(model, tokenizer, vocab, device, image_size, losses, seconds, size)


def _image_size(config: Mapping[str, Any]) -> int:
    size = config.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def student_image_size(model_name: str) -> int:
    """The side of the square images ``model_name`` takes (registering :data:`TINY_STUDENT` if it is named)."""
    if model_name == STUDENT_NAME:
        register_config(STUDENT_NAME, TINY_STUDENT)
    return _image_size(model_config(model_name))


def zero_shot_accuracy(
    student: Student,
    pixels: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    templates: Sequence[str],
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Top-k zero-shot accuracy: each class is the mean of its unit prompt embeddings (``template.format(name)``
    for every template), re-normalised; an image is right when its class is among the ``k`` most cosine-similar.

    Args:
        labels: int ``(n,)`` indices into ``classes``.

    Returns:
        ``{k: accuracy}`` for every ``k`` (``k`` capped at the number of classes).
    """
    import torch

    prompts = [template.format(name) for name in classes for template in templates]
    text = student.encode_texts(prompts).view(len(classes), len(templates), -1).mean(dim=1)
    text = torch.nn.functional.normalize(text, dim=-1)
    similarity = student.encode_images(pixels) @ text.T
    truth = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    own = similarity.gather(1, truth.view(-1, 1))
    rank = (similarity > own).sum(dim=1)  # classes scoring strictly higher than the right one
    return {k: float((rank < k).float().mean()) for k in ks}


def retrieval_recall(
    student: Student, pixels: np.ndarray, texts: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Image->text and text->image recall@k on pairs ``(pixels[i], texts[i])``: the share of queries whose own
    pair is among the ``k`` best-scoring candidates (a tie with the right one does not push it down).

    Returns:
        ``{"i2t_r1": ..., "t2i_r1": ..., "i2t_r5": ..., ...}``.
    """
    similarity = student.encode_images(pixels) @ student.encode_texts(texts).T
    own = similarity.diagonal().view(-1, 1)
    i2t = similarity.gt(own).sum(dim=1)  # texts scoring strictly higher than the image's own caption
    t2i = similarity.T.gt(own).sum(dim=1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t < k).float().mean())
        out[f"t2i_r{k}"] = float((t2i < k).float().mean())
    return out


#: The metrics of a student, in the order the eval table and its summary show them.
METRICS = ("zero_shot_top1", "zero_shot_top5", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")


@dataclass(frozen=True)
class ArmSummary:
    """One arm over its seeds: the mean and spread (sample standard deviation; 0 with one seed) per metric."""

    arm: str
    seeds: int
    mean: dict[str, float]
    std: dict[str, float]


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> list[ArmSummary]:
    """Mean and spread of each metric per ``arm`` over the rows (one row per arm and seed), arms in first-seen
    order."""
    arms: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        arms.setdefault(str(row["arm"]), []).append(row)
    out = []
    for arm, group in arms.items():
        values = {m: np.array([float(r[m]) for r in group]) for m in metrics}
        out.append(
            ArmSummary(
                arm,
                len(group),
                {m: float(v.mean()) for m, v in values.items()},
                {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
            )
        )
    return out


def differs(a: ArmSummary, b: ArmSummary, metric: str) -> bool | None:
    """Whether two arms' means of ``metric`` differ beyond their spread (the gap exceeds the sum of their
    standard deviations); None when either arm has a single seed, so no spread is known."""
    if a.seeds < 2 or b.seeds < 2:
        return None
    return abs(a.mean[metric] - b.mean[metric]) > a.std[metric] + b.std[metric]
