"""The tiny Fashion-MNIST CLIP the embed tests use: it loads through open_clip and has learned its captions.

The first run trains it (a few minutes on 2 CPU cores) into the test cache; later runs load it in well under a second.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.support import tiny_clip
from tests.support.tiny_clip import (
    CAPTION_TEMPLATES,
    FASHION_CLASSES,
    MODEL_CONFIG,
    TRAIN_SPEC,
    TinyClip,
    encode_images,
    encode_texts,
    load_fashion_mnist,
    png_bytes,
    preprocess_images,
    spec_hash,
    trained_tiny_clip,
    zero_shot_accuracy,
)

N_PAIRS = 2000


@pytest.fixture(scope="session")
def clip() -> TinyClip:
    return trained_tiny_clip()


@pytest.fixture(scope="session")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return load_fashion_mnist("test")


def test_fashion_mnist_splits_are_idx_decoded(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = test_split
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [1000] * len(FASHION_CLASSES)
    assert 0 < images.mean() < 255


def test_missing_dataset_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tiny_clip, "FASHION_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_png_bytes_round_trip_losslessly(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images = test_split[0][:50]
    decoded = [Image.open(io.BytesIO(png_bytes(image))) for image in images]
    assert {image.mode for image in decoded} == {"L"}
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in decoded]), images)


def test_spec_hash_follows_the_spec() -> None:
    assert spec_hash() == spec_hash(replace(TRAIN_SPEC))
    assert spec_hash(replace(TRAIN_SPEC, steps=TRAIN_SPEC.steps + 1)) != spec_hash()
    assert spec_hash(replace(TRAIN_SPEC, seed=TRAIN_SPEC.seed + 1)) != spec_hash()


def test_cache_holds_an_open_clip_config_checkpoint_and_metadata(clip: TinyClip) -> None:
    assert clip.config_path.name == f"{clip.model_name}.json"
    assert clip.checkpoint_path.parent == clip.config_path.parent
    assert clip.metadata["spec_hash"] == spec_hash() and clip.config_path.parent.name.endswith(spec_hash())
    assert clip.metadata["steps"] == TRAIN_SPEC.steps and clip.metadata["seed"] == TRAIN_SPEC.seed
    open_clip.add_model_config(clip.config_path)
    assert open_clip.get_model_config(clip.model_name) == MODEL_CONFIG
    assert open_clip.get_tokenizer(clip.model_name).context_length == MODEL_CONFIG["text_cfg"]["context_length"]
    assert trained_tiny_clip() == clip  # warm: read back, not retrained


def test_reloaded_checkpoint_reproduces_the_stored_accuracy(
    clip: TinyClip, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    open_clip.add_model_config(clip.config_path)
    model = open_clip.create_model(clip.model_name, pretrained=str(clip.checkpoint_path)).eval()
    preprocess_cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    preprocess = open_clip.transform.image_transform_v2(preprocess_cfg, is_train=False)
    state = torch.load(clip.checkpoint_path, weights_only=True)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    images, labels = test_split
    tokenizer = open_clip.get_tokenizer(clip.model_name)
    accuracy = zero_shot_accuracy(model, tokenizer, preprocess_images(images, preprocess), labels)
    assert accuracy == pytest.approx(clip.metadata["zero_shot_accuracy"], abs=1e-6)


def test_zero_shot_accuracy_is_well_above_chance(clip: TinyClip) -> None:
    assert clip.metadata["n_test"] == 10_000
    assert clip.metadata["zero_shot_accuracy"] >= 0.70


def test_images_score_higher_with_their_own_caption(clip: TinyClip, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    model, preprocess, tokenizer = clip.load()
    images, labels = test_split[0][:N_PAIRS], test_split[1][:N_PAIRS]
    # What the embed job sees: PNG bytes, decoded, then open_clip's own transform.
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(png_bytes(image)))) for image in images])
    image_features = encode_images(model, pixels)
    rng = np.random.default_rng(0)
    template = rng.integers(len(CAPTION_TEMPLATES), size=N_PAIRS)
    other = (labels + rng.integers(1, len(FASHION_CLASSES), size=N_PAIRS)) % len(FASHION_CLASSES)
    captions = [t.format(name) for t in CAPTION_TEMPLATES for name in FASHION_CLASSES]
    similarity = (image_features @ encode_texts(model, tokenizer, captions).T).numpy()
    rows = np.arange(N_PAIRS)
    matched = similarity[rows, template * len(FASHION_CLASSES) + labels]
    mismatched = similarity[rows, template * len(FASHION_CLASSES) + other]
    assert (other != labels).all()
    assert matched.mean() > mismatched.mean()
    assert (matched > mismatched).mean() >= 0.80
