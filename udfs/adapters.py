"""Linear image/text adapters on frozen CLIP embeddings (CLIP-powered data selection, ICLR 2025; ALGORITHMS.md §4.1).

Two dimension-preserving ``Linear(d, d)`` layers, one for image embeddings and one for class-prompt embeddings,
start as the identity (so an untrained pair reproduces frozen CLIP) and are trained with a symmetric InfoNCE loss
between each image and the prompt "A photo of a {class}" of its label.

Training consumes an iterable of mini-batches ``(image_embeddings (b, d), labels (b,))`` and never holds more than
one batch, so the Spark side can stream a pool (Arrow batches from ``toLocalIterator``, slices of a numpy memmap)
without a second copy of it on the driver.

The loss is the *class-level* symmetric InfoNCE. A mini-batch of ``b`` images usually holds several images of one
class, so the instance-level CLIP loss (a ``b x b`` matrix whose text side repeats the same prompt) would treat
identical prompts as negatives of each other. Here the text side is the ``C`` distinct class prompts instead:

* image -> text: cross-entropy of each image over all ``C`` class prompts (every other class is a true negative);
* text -> image: for each class ``c`` present in the batch, the log-softmax of prompt ``c`` over the batch's images,
  averaged over the images labelled ``c`` (a multi-positive InfoNCE), then averaged over the classes present;
* loss = (image -> text + text -> image) / 2, on L2-normalised adapted features scaled by ``1 / temperature``.

The adapters themselves apply no normalisation: :func:`apply_image` returns the raw adapted features, as the
Sample Diversity Score measures Euclidean distances between unnormalised adapted image features.

This module needs torch and numpy only (no pyspark).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from clipsift.udfs.models import first_line, load_weights

WEIGHTS_FILE = "adapters.pt"
PROVENANCE_FILE = "provenance.json"
_APPLY_CHUNK = 65_536

Batch = tuple[np.ndarray, np.ndarray]
BatchSource = Iterable[Batch] | Callable[[], Iterable[Batch]]


class AdapterPair(torch.nn.Module):
    """An image adapter and a text adapter, each ``Linear(dim, dim)``, initialised to identity and zero bias.

    Attributes:
        image: the adapter applied to CLIP image embeddings.
        text: the adapter applied to CLIP class-prompt embeddings.
    """

    def __init__(self, dim: int) -> None:
        """Builds the pair as the identity map (an untrained pair returns its inputs).

        Args:
            dim: the CLIP embedding dimension ``d``.

        Raises:
            ValueError: when ``dim`` is not positive.
        """
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.image = torch.nn.Linear(dim, dim)
        self.text = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            for layer in (self.image, self.text):
                layer.weight.copy_(torch.eye(dim))
                layer.bias.zero_()


def class_contrastive_loss(
    image_features: torch.Tensor, labels: torch.Tensor, prompt_features: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Class-level symmetric InfoNCE between adapted image features and adapted class-prompt features.

    Args:
        image_features: ``(b, d)`` adapted image features (any norm; normalised here).
        labels: ``(b,)`` int64 class indices into ``prompt_features``.
        prompt_features: ``(C, d)`` adapted prompt features, one row per class.
        temperature: the softmax temperature (logits are cosines divided by it).

    Returns:
        The scalar loss ``(image->text + text->image) / 2`` described in the module docstring.
    """
    logits = F.normalize(image_features, dim=1) @ F.normalize(prompt_features, dim=1).T / temperature  # (b, C)
    image_to_text = F.cross_entropy(logits, labels)
    present, inverse = torch.unique(labels, return_inverse=True)
    log_prob = F.log_softmax(logits[:, present], dim=0)  # prompt of each present class over the batch's images
    positive = log_prob.gather(1, inverse[:, None])[:, 0]  # log p(image i | prompt of its own class)
    per_class = torch.zeros(len(present), dtype=positive.dtype).index_add_(0, inverse, positive)
    counts = torch.bincount(inverse, minlength=len(present)).to(positive.dtype)
    text_to_image = -(per_class / counts).mean()
    return (image_to_text + text_to_image) / 2


def adapter_loss(
    pair: AdapterPair,
    image_embeddings: np.ndarray,
    labels: np.ndarray,
    prompt_embeddings: np.ndarray,
    *,
    temperature: float = 0.07,
) -> float:
    """The training loss of ``pair`` on one batch, without gradients (for monitoring and tests).

    Args:
        pair: the adapters.
        image_embeddings: ``(b, d)`` CLIP image embeddings.
        labels: ``(b,)`` integer labels in ``[0, C)``.
        prompt_embeddings: ``(C, d)`` CLIP embeddings of the class prompts.
        temperature: as in :func:`train_adapters`.

    Returns:
        The class-level symmetric InfoNCE loss.
    """
    prompts = _as_matrix(prompt_embeddings, pair.dim, "prompt_embeddings")
    images, targets = _as_batch((image_embeddings, labels), pair.dim, len(prompts))
    with torch.no_grad():
        return float(class_contrastive_loss(pair.image(images), targets, pair.text(prompts), temperature))


def train_adapters(
    batches: BatchSource,
    prompt_embeddings: np.ndarray,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    lr: float = 1e-4,
    temperature: float = 0.07,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> AdapterPair:
    """Trains an identity-initialised :class:`AdapterPair` with Adam on streamed mini-batches.

    Each step takes one mini-batch, adapts its image embeddings and all ``C`` prompt embeddings, and minimises
    :func:`class_contrastive_loss`. Batches are used in the order the source yields them (shuffle upstream);
    only the current batch is held in memory.

    Args:
        batches: mini-batches ``(image_embeddings (b, d) float, labels (b,) int)``. For ``epochs > 1`` pass a
            re-iterable (a list, a ``Dataset``-like object) or a zero-argument callable returning a fresh iterable
            per epoch (e.g. ``lambda: arrow_batches(df)``); a one-shot iterator allows a single epoch only.
        prompt_embeddings: ``(C, d)`` CLIP text embeddings of "A photo of a {class}", row ``c`` for label ``c``.
        epochs: passes over ``batches``.
        max_steps: stop after this many optimizer steps (None: run all epochs).
        lr: Adam learning rate.
        temperature: softmax temperature of the InfoNCE logits (fixed, not learned; CLIP's initial 0.07).
        seed: seeds torch's generator inside a forked RNG state. The loss itself draws no random numbers, so the
            result depends only on the batches and their order; the seed guards any future stochastic part and
            belongs in the provenance.
        on_step: called after every step with ``(step, loss)``, e.g. to log or to record the final loss.

    Returns:
        The trained pair, in eval mode.

    Raises:
        ValueError: for bad shapes, labels outside ``[0, C)``, non-positive settings, an empty source, or a
            one-shot iterator with ``epochs > 1``.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if lr <= 0 or temperature <= 0:
        raise ValueError(f"lr and temperature must be positive, got {lr} and {temperature}")
    prompts_np = np.asarray(prompt_embeddings)
    if prompts_np.ndim != 2 or len(prompts_np) == 0:
        raise ValueError(f"prompt_embeddings must be (C, d) with C >= 1, got shape {prompts_np.shape}")
    dim = int(prompts_np.shape[1])
    prompts = _as_matrix(prompts_np, dim, "prompt_embeddings")
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pair = AdapterPair(dim)
        optimizer = torch.optim.Adam(pair.parameters(), lr=lr)
        pair.train()
        for epoch in range(epochs):
            if callable(batches):
                source = batches()
            elif epoch > 0 and iter(batches) is batches:
                raise ValueError(
                    "a one-shot iterator can feed one epoch only: pass a list or a callable for epochs > 1"
                )
            else:
                source = batches
            seen = 0
            for batch in source:
                images, targets = _as_batch(batch, dim, len(prompts))
                loss = class_contrastive_loss(pair.image(images), targets, pair.text(prompts), temperature)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                step += 1
                seen += 1
                if on_step is not None:
                    on_step(step, float(loss.detach()))
                if max_steps is not None and step >= max_steps:
                    break
            if seen == 0:
                raise ValueError(f"the batch source yielded no batches in epoch {epoch}")
            if max_steps is not None and step >= max_steps:
                break
    pair.eval()
    return pair


def apply_image(pair: AdapterPair, x: np.ndarray) -> np.ndarray:
    """Adapted image features, float32, not normalised.

    Args:
        pair: the adapters.
        x: ``(n, d)`` or ``(d,)`` CLIP image embeddings.

    Returns:
        ``A_I(x)`` with the shape of ``x``.
    """
    return _apply(pair.image, pair.dim, x)


def apply_text(pair: AdapterPair, x: np.ndarray) -> np.ndarray:
    """Adapted text (class-prompt) features, float32, not normalised.

    Args:
        pair: the adapters.
        x: ``(n, d)`` or ``(d,)`` CLIP text embeddings.

    Returns:
        ``A_T(x)`` with the shape of ``x``.
    """
    return _apply(pair.text, pair.dim, x)


def save_adapters(pair: AdapterPair, path: str | Path, provenance: Mapping[str, Any]) -> Path:
    """Writes ``<path>/adapters.pt`` (the two state dicts) and ``<path>/provenance.json``.

    ``provenance`` should name the CLIP model id, the classes and prompt template, the training settings (steps,
    epochs, lr, temperature, seed), the final loss and the identity of the training data (table, version, label
    column). ``dim`` and the weights' sha256 are added here.

    Args:
        pair: the adapters.
        path: a directory, created if missing; existing files of the same names are replaced.
        provenance: JSON-serialisable metadata.

    Returns:
        The directory.

    Raises:
        ValueError: when ``provenance`` sets ``dim`` to something other than ``pair.dim``.
    """
    if "dim" in provenance and provenance["dim"] != pair.dim:
        raise ValueError(f"provenance dim {provenance['dim']} does not match the adapters' {pair.dim}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"image": pair.image.state_dict(), "text": pair.text.state_dict()}, buffer)
    weights = buffer.getvalue()
    record = {**provenance, "dim": pair.dim, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    text = json.dumps(record, indent=2, sort_keys=True)  # fails before anything is written if not serialisable
    (folder / WEIGHTS_FILE).write_bytes(weights)
    (folder / PROVENANCE_FILE).write_text(text + "\n")
    return folder


def load_adapters(path: str | Path) -> tuple[AdapterPair, dict[str, Any]]:
    """Reads what :func:`save_adapters` wrote, with ``torch.load(weights_only=True)``.

    Args:
        path: the directory.

    Returns:
        ``(pair, provenance)``: the pair in eval mode and the provenance dict (including ``dim`` and
        ``weights_sha256``).

    Raises:
        ValueError: (one line) when the weights' sha256 or shapes do not match the provenance, the weights file is
            refused for pickling more than tensors (its code is never run) or does not hold the two adapters.
        OSError: a file cannot be read.
    """
    folder = Path(path)
    provenance: dict[str, Any] = json.loads((folder / PROVENANCE_FILE).read_text())
    weights_file = folder / WEIGHTS_FILE
    weights = weights_file.read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    if provenance.get("weights_sha256") not in (None, digest):
        raise ValueError(f"{weights_file} has sha256 {digest}, the provenance says {provenance['weights_sha256']}")
    fix = "save adapters with clipsift clipselect (adapters.save_path) or save_adapters"
    state = load_weights(io.BytesIO(weights), str(weights_file), fix)
    try:
        dim = int(state["image"]["weight"].shape[1])
        if provenance.get("dim", dim) != dim:
            raise ValueError(f"weights have dim {dim}, the provenance says {provenance['dim']}")
        pair = AdapterPair(dim)
        pair.image.load_state_dict(state["image"])
        pair.text.load_state_dict(state["text"])
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:  # not what save_adapters writes
        raise ValueError(
            f"{weights_file} does not hold the image and text adapters save_adapters writes "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    pair.eval()
    return pair, provenance


def _apply(layer: torch.nn.Linear, dim: int, x: np.ndarray) -> np.ndarray:
    array = np.asarray(x)
    single = array.ndim == 1
    matrix = _as_matrix(array[None, :] if single else array, dim, "x")
    out = np.empty((len(matrix), dim), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(matrix), _APPLY_CHUNK):  # bounds the temporary copies for large inputs
            out[start : start + _APPLY_CHUNK] = layer(matrix[start : start + _APPLY_CHUNK]).numpy()
    return out[0] if single else out


def _as_matrix(x: np.ndarray, dim: int, name: str) -> torch.Tensor:
    array = np.asarray(x)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name} must be (n, {dim}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return tensor


def _as_batch(batch: Batch, dim: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images_np, labels_np = batch
    images = _as_matrix(images_np, dim, "image_embeddings")
    labels_array = np.asarray(labels_np)
    if len(images) == 0:
        raise ValueError("empty mini-batch")
    if labels_array.shape != (len(images),) or not np.issubdtype(labels_array.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape ({len(images)},), got {labels_array.dtype} {labels_array.shape}"
        )
    if labels_array.min() < 0 or labels_array.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{labels_array.min()}, {labels_array.max()}]")
    return images, torch.from_numpy(labels_array.astype(np.int64))
