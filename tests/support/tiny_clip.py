"""A tiny open_clip model that the tests train themselves on Fashion-MNIST, cached between runs.

The model is an ordinary open_clip ``CLIP`` built from a JSON config named ``clipsift-tiny-fmnist``, so the code
under test loads it the way it loads any teacher: ``open_clip.add_model_config(config_path)`` and then
``open_clip.create_model(MODEL_NAME, pretrained=str(checkpoint_path))``. Images are trained with the model's own
open_clip inference transform, the one the embed job applies to decoded PNG bytes.

Training takes one to three minutes on two CPU cores; the result lands in ``<cache>/tiny-clip-<spec hash>/``
(the config, a plain state_dict and ``metadata.json``), written into a temporary folder and renamed into place under
a file lock, so concurrent test processes train it once and a changed spec trains a new one.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip import CLIP
from PIL import Image
from torch.nn import functional as F

MODEL_NAME = "clipsift-tiny-fmnist"
SPEC_VERSION = "1"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a {} on a plain background",
    "a picture of a {}",
    "a black and white photo of a {}",
)
ZERO_SHOT_TEMPLATE = "a photo of a {}"
MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class TrainSpec:
    """Hyper-parameters of the training run; part of the cache key.

    Attributes:
        steps: optimizer steps.
        batch_size: (image, caption) pairs per step.
        lr: peak AdamW learning rate, reached after ``warmup_steps`` and then cosine-decayed to zero.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay on tensors of rank >= 2 (not on biases, LayerNorm gains, logit_scale).
        seed: seeds model init, batch order and caption templates.
        threads: ``torch.set_num_threads`` during training.
        n_train: how many of the 60,000 training images to use (all by default).
    """

    steps: int = 800
    batch_size: int = 256
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 2
    n_train: int = 60_000


TRAIN_SPEC = TrainSpec()


@dataclass(frozen=True)
class TinyClip:
    """A trained tiny CLIP in the cache.

    Attributes:
        model_name: the open_clip model name, the stem of ``config_path``.
        config_path: open_clip model config JSON, for ``open_clip.add_model_config``.
        checkpoint_path: plain ``state_dict`` for ``open_clip.create_model(..., pretrained=...)``.
        metadata: ``zero_shot_accuracy`` on the t10k split, ``steps``, ``seconds``, ``seed``, ``spec_hash``, ...
    """

    model_name: str
    config_path: Path
    checkpoint_path: Path
    metadata: dict[str, Any] = field(hash=False)

    def load(self) -> tuple[CLIP, Preprocess, Callable[..., torch.Tensor]]:
        """Registers the config and loads the model the way the embed job does.

        Returns:
            ``(model, preprocess, tokenizer)``: the model in eval mode on CPU, open_clip's inference transform
            and its tokenizer.
        """
        open_clip.add_model_config(self.config_path)
        model, _, preprocess = open_clip.create_model_and_transforms(
            self.model_name, pretrained=str(self.checkpoint_path)
        )
        model.eval()
        return model, preprocess, open_clip.get_tokenizer(self.model_name)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (the t10k split, 10,000 images).

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``, labels indexing ``FASHION_CLASSES``.

    Raises:
        ValueError: for an unknown split.
        FileNotFoundError: when the package is not installed.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    label_path = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: install it with `apt-get install dataset-fashion-mnist`")
    images = _read_idx(image_path)
    labels = _read_idx(label_path).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape} and {labels.shape}")
    return images, labels


def _read_idx(path: Path) -> np.ndarray:
    """Decodes an IDX file of unsigned bytes (magic 0x00000800 + rank)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def png_bytes(image: np.ndarray) -> bytes:
    """Encodes a ``(H, W)`` uint8 array as a grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def preprocess_images(images: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """Applies open_clip's transform to grayscale arrays, as the embed job does to decoded PNGs.

    Args:
        images: uint8 ``(N, H, W)``.
        preprocess: the model's inference transform.

    Returns:
        float32 ``(N, 3, S, S)``.
    """
    return torch.stack([preprocess(Image.fromarray(image, mode="L")) for image in images])


@torch.no_grad()
def encode_images(model: CLIP, pixels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """L2-normalized image embeddings, ``(N, embed_dim)``, computed in fixed-size batches."""
    return torch.cat([model.encode_image(chunk, normalize=True) for chunk in torch.split(pixels, batch_size)])


@torch.no_grad()
def encode_texts(model: CLIP, tokenizer: Callable[..., torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
    """L2-normalized text embeddings, ``(len(texts), embed_dim)``."""
    features: torch.Tensor = model.encode_text(tokenizer(list(texts)), normalize=True)
    return features


def class_captions(template: str = ZERO_SHOT_TEMPLATE) -> list[str]:
    """One caption per class of ``FASHION_CLASSES``, in label order."""
    return [template.format(name) for name in FASHION_CLASSES]


def zero_shot_accuracy(
    model: CLIP, tokenizer: Callable[..., torch.Tensor], pixels: torch.Tensor, labels: np.ndarray
) -> float:
    """Share of images whose most cosine-similar class caption ("a photo of a {class}") is their own class."""
    similarity = encode_images(model, pixels) @ encode_texts(model, tokenizer, class_captions()).T
    return float((similarity.argmax(dim=1).numpy() == labels).mean())


def spec_hash(spec: TrainSpec = TRAIN_SPEC) -> str:
    """A short hash of everything that determines the trained weights; names the cache folder."""
    key = {
        "version": SPEC_VERSION,
        "model_config": MODEL_CONFIG,
        "train": asdict(spec),
        "classes": FASHION_CLASSES,
        "templates": CAPTION_TEMPLATES,
        "zero_shot_template": ZERO_SHOT_TEMPLATE,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$CLIPSIFT_TEST_CACHE`` or ``<repo root>/.cache/clipsift-tests``."""
    env = os.environ.get("CLIPSIFT_TEST_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "clipsift-tests"


def trained_tiny_clip(cache_dir: Path | None = None, *, spec: TrainSpec = TRAIN_SPEC) -> TinyClip:
    """Returns the cached tiny CLIP for ``spec``, training it first if the cache lacks it.

    Safe under concurrent callers: training holds an ``flock`` on ``<cache>/tiny-clip-<hash>.lock`` and publishes
    the finished folder with one atomic rename, so a folder that exists is complete. Training runs in a child
    Python process, so its thread settings and memory stay out of the caller.

    Args:
        cache_dir: parent of the per-spec folders; ``default_cache_dir()`` when None.
        spec: training hyper-parameters (the default is what the tests use).

    Returns:
        The cached model's paths and metadata.

    Raises:
        RuntimeError: when training fails (the message carries the child's stderr).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = spec_hash(spec)
    final = root / f"tiny-clip-{digest}"
    if _is_complete(final):
        return _cached(final)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"tiny-clip-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _is_complete(final):
                for stale in root.glob(f".tiny-clip-{digest}-*"):  # a killed trainer's; the lock says it is dead
                    shutil.rmtree(stale, ignore_errors=True)
                staging = Path(tempfile.mkdtemp(prefix=f".tiny-clip-{digest}-", dir=root))
                staging.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
                try:
                    _train_in_child(staging, spec)
                    if final.exists():  # left incomplete by hand; the lock means nobody else is writing it
                        shutil.rmtree(final)
                    os.replace(staging, final)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _cached(final)


def _paths(folder: Path) -> tuple[Path, Path, Path]:
    return folder / f"{MODEL_NAME}.json", folder / f"{MODEL_NAME}.pt", folder / "metadata.json"


def _is_complete(folder: Path) -> bool:
    return all(path.is_file() for path in _paths(folder))


def _cached(folder: Path) -> TinyClip:
    config_path, checkpoint_path, metadata_path = _paths(folder)
    metadata = json.loads(metadata_path.read_text())
    return TinyClip(MODEL_NAME, config_path, checkpoint_path, metadata)


def _train_in_child(folder: Path, spec: TrainSpec) -> None:
    # Passive OpenMP waiting: on a shared 2-core machine, spinning worker threads slow training ten-fold.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(spec.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), str(folder), json.dumps(asdict(spec))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training the tiny CLIP failed ({done.returncode}):\n{done.stderr[-4000:]}")


def _train_into(folder: Path, spec: TrainSpec) -> None:
    """Trains the model and writes config, checkpoint and metadata (last) into ``folder``."""
    config_path, checkpoint_path, metadata_path = _paths(folder)
    config_path.write_text(json.dumps(MODEL_CONFIG, indent=2))
    open_clip.add_model_config(config_path)
    torch.set_num_threads(spec.threads)
    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    images, labels = load_fashion_mnist("train")
    final_loss = _fit(model, preprocess, tokenizer, images[: spec.n_train], labels[: spec.n_train], spec)
    seconds = time.perf_counter() - start
    model.eval()
    test_images, test_labels = load_fashion_mnist("test")
    accuracy = zero_shot_accuracy(model, tokenizer, preprocess_images(test_images, preprocess), test_labels)
    torch.save(model.state_dict(), checkpoint_path)
    metadata = {
        "model_name": MODEL_NAME,
        "zero_shot_accuracy": accuracy,
        "zero_shot_template": ZERO_SHOT_TEMPLATE,
        "n_test": len(test_labels),
        "final_loss": final_loss,
        "seconds": round(seconds, 2),
        "steps": spec.steps,
        "seed": spec.seed,
        "spec": asdict(spec),
        "spec_hash": spec_hash(spec),
        "version": SPEC_VERSION,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    metadata_path.write_text(json.dumps(metadata, indent=2))


def _fit(
    model: CLIP,
    preprocess: Any,
    tokenizer: Callable[..., torch.Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    spec: TrainSpec,
) -> float:
    """Symmetric InfoNCE on (image, templated class caption) pairs; returns the last step's loss."""
    normalize = preprocess.transforms[-1]
    geometric = _without_normalize(preprocess)
    # The transform ends in ToTensor (uint8 / 255) then Normalize, so keeping the uint8 pixels before
    # Normalize and normalizing each batch gives bit-identical inputs at a fraction of the memory.
    pixels = torch.stack([_to_uint8(geometric(Image.fromarray(image, mode="L"))) for image in images])
    if not torch.equal(_batch(pixels[:8], normalize), preprocess_images(images[:8], preprocess)):
        raise AssertionError("the cached training pixels differ from open_clip's transform")

    tokens = tokenizer([template.format(name) for template in CAPTION_TEMPLATES for name in FASHION_CLASSES])
    targets = torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(spec.seed)
    # About 25 of the 49,408 token rows are ever used: a frozen random table spares the optimizer 95% of its work.
    model.token_embedding.weight.requires_grad_(False)
    decay = [p for p in model.parameters() if p.ndim >= 2 and p.requires_grad]
    other = [p for p in model.parameters() if p.ndim < 2 and p.requires_grad]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": other, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=spec.lr, fused=True)
    model.train()
    order = torch.empty(0, dtype=torch.long)
    loss = torch.tensor(math.nan)
    for step in range(spec.steps):
        if len(order) < spec.batch_size:
            order = torch.cat([order, torch.randperm(len(pixels), generator=generator)])
        batch, order = order[: spec.batch_size], order[spec.batch_size :]
        template = torch.randint(len(CAPTION_TEMPLATES), (len(batch),), generator=generator)
        caption = template * len(FASHION_CLASSES) + targets[batch]
        unique, inverse = torch.unique(caption, return_inverse=True)  # encode each distinct caption once
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, spec)
        image_features = model.encode_image(_batch(pixels[batch], normalize), normalize=True)
        text_features = model.encode_text(tokens[unique], normalize=True)[inverse]
        logits = model.logit_scale.exp() * image_features @ text_features.T
        target = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())


def _without_normalize(preprocess: Any) -> Callable[[Image.Image], torch.Tensor]:
    transforms = list(preprocess.transforms)
    if type(transforms[-1]).__name__ != "Normalize":
        raise AssertionError(f"expected open_clip's transform to end in Normalize: {preprocess}")
    geometric: Callable[[Image.Image], torch.Tensor] = type(preprocess)(transforms[:-1])
    return geometric


def _to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor[0] * 255).round().to(torch.uint8)  # the three channels of a converted "L" image are equal


def _batch(pixels: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    rgb = pixels.unsqueeze(1).expand(-1, 3, -1, -1).float().div(255)
    return normalize(rgb)


def _learning_rate(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _main(argv: list[str]) -> int:
    """Child-process entry: ``python tiny_clip.py <folder> <TrainSpec as JSON>``."""
    folder, spec_json = argv
    _train_into(Path(folder), TrainSpec(**json.loads(spec_json)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
