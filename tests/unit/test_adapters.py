"""clipsift.udfs.adapters: identity start, the class-level InfoNCE against a loop formula, training on separable
synthetic data, streaming from iterators, and the save/load round trip."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsift.udfs.adapters import (
    AdapterPair,
    adapter_loss,
    apply_image,
    apply_text,
    class_contrastive_loss,
    load_adapters,
    save_adapters,
    train_adapters,
)
from tests.support.pickles import write_torch_payload

DIM, CLASSES = 16, 4


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable image clusters, one per class, and prompts that start only loosely aligned with them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM))
    labels = rng.integers(0, CLASSES, size=n)
    images = centres[labels] + 0.5 * rng.normal(size=(n, DIM))
    prompts = 0.3 * centres + rng.normal(size=(CLASSES, DIM))
    return images.astype(np.float32), labels.astype(np.int64), prompts.astype(np.float32)


def sas(pair: AdapterPair, images: np.ndarray, labels: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    a, t = apply_image(pair, images), apply_text(pair, prompts)[labels]
    return np.sum(a * t, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(t, axis=1))


def batches_of(images: np.ndarray, labels: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(images), size)]


def test_identity_init_returns_inputs() -> None:
    x = np.random.default_rng(0).normal(size=(7, DIM)).astype(np.float32)
    pair = AdapterPair(DIM)
    np.testing.assert_array_equal(apply_image(pair, x), x)
    np.testing.assert_array_equal(apply_text(pair, x), x)
    np.testing.assert_array_equal(apply_image(pair, x[0]), x[0])
    assert apply_image(pair, x.astype(np.float64)).dtype == np.float32


def test_class_loss_matches_loop_formula_with_repeated_classes() -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.normal(size=(6, DIM)).astype(np.float32))
    prompt = torch.from_numpy(rng.normal(size=(CLASSES, DIM)).astype(np.float32))
    labels = torch.tensor([2, 0, 2, 2, 0, 3])  # class 1 absent, class 2 three times
    tau = 0.5
    s = (torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(prompt, dim=1).T / tau).double()
    i2t = np.mean([float(torch.logsumexp(s[i], 0) - s[i, labels[i]]) for i in range(6)])
    t2i = []
    for c in (0, 2, 3):
        members = [i for i in range(6) if labels[i] == c]
        t2i.append(np.mean([float(torch.logsumexp(s[:, c], 0) - s[i, c]) for i in members]))
    expected = (i2t + np.mean(t2i)) / 2
    assert float(class_contrastive_loss(image, labels, prompt, tau)) == pytest.approx(expected, rel=1e-5)


def test_training_lowers_loss_and_separates_correct_from_flipped_labels() -> None:
    images, labels, prompts = synthetic(640, seed=2)
    flipped = (labels + 1) % CLASSES
    before = AdapterPair(DIM)
    correct, wrong = sas(before, images, labels, prompts), sas(before, images, flipped, prompts)
    gap_before, wins_before = correct.mean() - wrong.mean(), (correct > wrong).mean()
    assert wins_before < 0.85  # the prompts start loosely aligned: there is something to learn
    losses: list[float] = []
    pair = train_adapters(
        batches_of(images, labels, 64), prompts, epochs=20, lr=1e-2, seed=0, on_step=lambda _, v: losses.append(v)
    )
    assert len(losses) == 200
    # Text->image has a floor of log(images per class) > 0, so compare with the start, not with zero.
    assert adapter_loss(pair, images, labels, prompts) < adapter_loss(before, images, labels, prompts) - 1.0
    assert np.mean(losses[-10:]) < losses[0] - 1.0
    correct, wrong = sas(pair, images, labels, prompts), sas(pair, images, flipped, prompts)
    assert correct.mean() - wrong.mean() > gap_before + 0.2
    assert (correct > wrong).mean() > 0.95


def test_streaming_iterator_equals_generator_and_list() -> None:
    images, labels, prompts = synthetic(400, seed=3)
    batches = batches_of(images, labels, 40)
    assert len(batches) == 10

    def generator() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for image, label in batches:
            yield image.copy(), label.copy()

    kwargs = {"lr": 1e-3, "seed": 7}
    from_iterator = train_adapters(iter(batches), prompts, **kwargs)
    from_generator = train_adapters(generator(), prompts, **kwargs)
    from_list = train_adapters(batches, prompts, **kwargs)
    for other in (from_generator, from_list):
        for a, b in zip(from_iterator.state_dict().values(), other.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(from_iterator.image.weight, torch.eye(DIM))
    two_epochs_list = train_adapters(batches, prompts, epochs=2, **kwargs)
    two_epochs_callable = train_adapters(generator, prompts, epochs=2, **kwargs)
    assert torch.equal(two_epochs_list.image.weight, two_epochs_callable.image.weight)
    capped = train_adapters(generator, prompts, epochs=5, max_steps=10, **kwargs)
    assert torch.equal(capped.text.weight, from_list.text.weight)
    with pytest.raises(ValueError, match="one epoch only"):
        train_adapters(generator(), prompts, epochs=2, **kwargs)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ((np.zeros((3, DIM), np.float32), np.array([0, 1, CLASSES])), "labels must lie"),
        ((np.zeros((3, DIM + 1), np.float32), np.array([0, 1, 2])), "image_embeddings must be"),
        ((np.zeros((3, DIM), np.float32), np.array([0.0, 1.0, 2.0])), "labels must be integers"),
        ((np.full((3, DIM), np.nan, np.float32), np.array([0, 1, 2])), "NaN"),
    ],
)
def test_bad_batches_are_rejected(batch: tuple[np.ndarray, np.ndarray], match: str) -> None:
    _, _, prompts = synthetic(1, seed=4)
    with pytest.raises(ValueError, match=match):
        train_adapters([batch], prompts)


def test_save_load_round_trip(tmp_path: Path) -> None:
    images, labels, prompts = synthetic(320, seed=5)
    pair = train_adapters(batches_of(images, labels, 64), prompts, epochs=3, lr=1e-2, seed=1)
    provenance = {
        "model": "clipsift-tiny-fmnist",
        "classes": [f"c{i}" for i in range(CLASSES)],
        "prompt_template": "a photo of a {}",
        "steps": 15,
        "seed": 1,
        "loss": 0.5,
        "training_data": {"table": "pool", "version": 3},
    }
    folder = save_adapters(pair, tmp_path / "adapters", provenance)
    loaded, back = load_adapters(folder)
    np.testing.assert_array_equal(apply_image(loaded, images), apply_image(pair, images))
    np.testing.assert_array_equal(apply_text(loaded, prompts), apply_text(pair, prompts))
    assert {k: back[k] for k in provenance} == provenance
    assert back["dim"] == DIM and len(back["weights_sha256"]) == 64

    record = json.loads((folder / "provenance.json").read_text())
    record["weights_sha256"] = "0" * 64
    (folder / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="sha256"):
        load_adapters(folder)


def test_a_weights_file_that_pickles_code_is_refused_unrun(tmp_path: Path) -> None:
    """adapters.pt replaced by a pickle with a ``__reduce__`` payload (the provenance's sha256 updated to match):
    refused in one line naming the file and why, the payload never runs; a file of other tensors says so too."""
    folder = save_adapters(AdapterPair(DIM), tmp_path / "adapters", {"model": "m"})
    marker = tmp_path / "payload-ran"
    weights = write_torch_payload(folder / "adapters.pt", marker, around=lambda p: {"image": p, "text": p})
    record = json.loads((folder / "provenance.json").read_text())
    record["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(ValueError) as info:
        load_adapters(folder)
    message = str(info.value)
    assert "\n" not in message and str(weights) in message and "was refused" in message and "weights_only" in message
    assert not marker.exists()

    torch.save({"weights": torch.zeros(2, 2)}, weights)
    record["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not hold the image and text adapters") as info:
        load_adapters(folder)
    assert "\n" not in str(info.value)
