"""Unit tests for ``clipsift.udfs.models``: model identity, seeded builds, checkpoints, load errors, the worker cache
(no Spark).

The model is the tiny open_clip architecture of ``tests.support.models`` (random weights, CPU). Real pictures
come from ``tests.support.corpus`` (skimage sample photos, tuxpaint stamps).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipsift.udfs.decode import decode_image, prepare_image
from clipsift.udfs.models import (
    ClipEncoder,
    ModelLoadError,
    ModelSpec,
    file_sha256,
    get_model,
    identify,
    resolve_device,
)
from tests.support.corpus import skimage_photos, tuxpaint_stamps
from tests.support.models import TINY_CONFIG, TINY_NAME, tiny_spec

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

CAPTIONS = ["a frog on a leaf", "a red bicycle", "two cats sleeping on a sofa"]
PHOTO_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg")


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    """The worker-cached tiny encoder (seed 0), shared with the other unit test modules."""
    return get_model(tiny_spec())


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    """A few decoded real pictures: skimage photos of several sizes and RGBA/palette tuxpaint stamps."""
    try:
        photos = dict(skimage_photos())
        stamps = tuxpaint_stamps(limit=3)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    raw = [photos[name] for name in PHOTO_NAMES if name in photos] + [data for _, data, _ in stamps]
    images = []
    for data in raw:
        img, status, error = decode_image(data)
        assert img is not None, (status, error)
        images.append(img)
    assert len(images) >= 5
    return images


def _pixels(images: list[Image.Image], size: int = 32) -> np.ndarray:
    return np.stack([prepare_image(img, size) for img in images])


# --------------------------------------------------------------------------------------------------
# Identity


def test_identity_of_the_tiny_random_model(encoder: ClipEncoder) -> None:
    spec = tiny_spec()
    assert spec.config_json is not None
    config_sha = hashlib.sha256(spec.config_json.encode()).hexdigest()
    ident = encoder.identity
    assert ident.model_id == f"{TINY_NAME}@cfg-{config_sha[:12]}:random-seed0"
    assert ident.name == TINY_NAME
    assert ident.config_sha256 == config_sha
    assert ident.checkpoint_sha256 is None
    assert ident.pretrained is None
    assert ident.image_size == 32
    assert ident.embed_dim == 32
    assert ident.context_length == TINY_CONFIG["text_cfg"]["context_length"]
    assert ident.interpolation == "bicubic"
    assert ident.resize_mode == "shortest"
    assert ident.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert ident.std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert encoder.device == "cpu"
    assert encoder.precision == "fp32"


def test_identify_matches_the_encoder_and_the_seed_is_in_the_model_id(encoder: ClipEncoder) -> None:
    assert identify(tiny_spec()) == encoder.identity
    seeded = identify(tiny_spec(seed=7))
    assert seeded.model_id.endswith(":random-seed7")
    assert seeded.model_id != encoder.identity.model_id
    other_config = json.dumps({**TINY_CONFIG, "embed_dim": 16})
    resized = identify(tiny_spec(config_json=other_config))
    assert resized.embed_dim == 16
    assert resized.config_sha256 == hashlib.sha256(other_config.encode()).hexdigest()
    assert resized.model_id.split(":")[0] != encoder.identity.model_id.split(":")[0]


# --------------------------------------------------------------------------------------------------
# Seeded random weights are reproducible on the CPU


def test_same_seed_builds_bit_identical_models_and_another_seed_does_not(pictures: list[Image.Image]) -> None:
    pixels = _pixels(pictures)
    first, second, other = ClipEncoder(tiny_spec()), ClipEncoder(tiny_spec()), ClipEncoder(tiny_spec(seed=1))
    assert first.model is not second.model
    np.testing.assert_array_equal(first.encode_images(pixels), second.encode_images(pixels))
    np.testing.assert_array_equal(first.encode_texts(CAPTIONS), second.encode_texts(CAPTIONS))
    assert np.abs(first.encode_images(pixels) - other.encode_images(pixels)).max() > 1e-2
    assert np.abs(first.encode_texts(CAPTIONS) - other.encode_texts(CAPTIONS)).max() > 1e-2


# --------------------------------------------------------------------------------------------------
# Our pixel path equals open_clip's own preprocess + encode_image


def test_encode_images_equals_open_clips_own_preprocess(encoder: ClipEncoder, pictures: list[Image.Image]) -> None:
    preprocess_cfg = open_clip.transform.PreprocessCfg(**encoder.model.visual.preprocess_cfg)
    preprocess = open_clip.transform.image_transform_v2(preprocess_cfg, is_train=False)
    with torch.no_grad():
        reference = encoder.model.encode_image(torch.stack([preprocess(img) for img in pictures]))
        reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    ours = encoder.encode_images(_pixels(pictures, encoder.identity.image_size))
    assert ours.dtype == np.float32
    assert ours.shape == (len(pictures), 32)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    # Different pictures give different rows (the comparison above is not between constants).
    assert np.abs(ours[0] - ours[1]).max() > 1e-3


def test_encode_images_equals_open_clip_image_transform(encoder: ClipEncoder, pictures: list[Image.Image]) -> None:
    preprocess = open_clip.image_transform(32, is_train=False)
    with torch.no_grad():
        reference = encoder.model.encode_image(torch.stack([preprocess(img) for img in pictures]))
        reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode_images(_pixels(pictures)), reference, rtol=0, atol=1e-6)


def test_empty_batches_have_the_embedding_width(encoder: ClipEncoder) -> None:
    assert encoder.encode_images(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 32)
    assert encoder.encode_texts([]).shape == (0, 32)


# --------------------------------------------------------------------------------------------------
# Checkpoint files go through open_clip's real loading path


def test_checkpoint_round_trip(encoder: ClipEncoder, pictures: list[Image.Image], tmp_path: Path) -> None:
    path = tmp_path / "tiny-weights.pt"
    torch.save(encoder.model.state_dict(), path)
    loaded = ClipEncoder(tiny_spec(pretrained=str(path), seed=123))
    unloaded = ClipEncoder(tiny_spec(seed=123))
    pixels = _pixels(pictures)
    original = encoder.encode_images(pixels)
    np.testing.assert_allclose(loaded.encode_images(pixels), original, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(CAPTIONS), encoder.encode_texts(CAPTIONS), rtol=0, atol=1e-6)
    # Seed 123 alone gives other weights: only the checkpoint can have made them equal.
    assert np.abs(unloaded.encode_images(pixels) - original).max() > 1e-2

    ident = loaded.identity
    sha = file_sha256(str(path))
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ident.checkpoint_sha256 == sha
    assert ident.pretrained is None
    assert f"sha256-{sha[:16]}" in ident.model_id
    assert "random-seed" not in ident.model_id
    assert ident.model_id.startswith(f"{TINY_NAME}@cfg-")


# --------------------------------------------------------------------------------------------------
# Load errors name the model and the fix


def _load_error(spec: ModelSpec) -> str:
    with pytest.raises(ModelLoadError) as info:
        ClipEncoder(spec)
    with pytest.raises(ModelLoadError) as again:
        identify(spec)
    assert str(again.value) == str(info.value)
    return str(info.value)


def test_hub_tag_offline_fails_fast_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty cache folder: a machine that happens to hold these weights in its default cache stays hermetic.
    cache = tmp_path / "empty-hf-cache"
    started = time.monotonic()
    message = _load_error(ModelSpec("ViT-B-32", pretrained="openai", device="cpu", cache_dir=str(cache)))
    assert time.monotonic() - started < 30
    for needle in ("ViT-B-32", "openai", "cache_dir", str(cache), "HF_HUB_OFFLINE"):
        assert needle in message, (needle, message)


def test_unknown_model_name() -> None:
    message = _load_error(ModelSpec("no-such-clip-model-xyz", device="cpu"))
    for needle in ("no-such-clip-model-xyz", "list_models", "config_json"):
        assert needle in message, (needle, message)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.pt"
    message = _load_error(tiny_spec(pretrained=str(missing)))
    for needle in (TINY_NAME, str(missing), "does not exist"):
        assert needle in message, (needle, message)


def test_a_checkpoint_that_pickles_code_is_refused_unrun(tmp_path: Path) -> None:
    from tests.support.pickles import write_torch_payload

    marker = tmp_path / "payload-ran"
    checkpoint = write_torch_payload(tmp_path / "weights.pt", marker, around=lambda p: {"state_dict": p})
    message = _load_error(tiny_spec(pretrained=str(checkpoint)))
    assert "\n" not in message and str(checkpoint) in message and "was refused" in message, message
    assert "state_dict" in message and not marker.exists()


def test_invalid_config_json() -> None:
    message = _load_error(tiny_spec(name="clipsift-broken-config", config_json='{"embed_dim": 32,'))
    for needle in ("clipsift-broken-config", "JSON"):
        assert needle in message, (needle, message)


def test_cuda_without_a_gpu_is_a_load_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="cuda"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


# --------------------------------------------------------------------------------------------------
# The keyed per-worker cache


def test_get_model_caches_per_spec() -> None:
    first = get_model(tiny_spec())
    assert get_model(tiny_spec()) is first  # an equal spec, a different object
    other = get_model(tiny_spec(seed=1))
    assert other is not first
    assert other.identity.model_id != first.identity.model_id
    assert get_model(tiny_spec(seed=1)) is other


# --------------------------------------------------------------------------------------------------
# Text


def test_very_long_caption_is_truncated_by_the_tokenizer(encoder: ClipEncoder) -> None:
    words: list[Any] = ["a", "photo", "of", "the", "small", "green", "frog", "on", "a", "leaf"] * 500
    assert len(words) == 5000
    long_caption = " ".join(words)
    out = encoder.encode_texts([long_caption, " ".join(words[:100]), " ".join(words[:5])])
    assert out.shape == (3, 32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    # Everything past the 32-token context is cut: the first 100 words embed the same.
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-6)
    assert np.abs(out[0] - out[2]).max() > 1e-3
