"""CLIP-powered data selection on real labelled images with noisy labels (ALGORITHMS.md §4; docs/clipselect-fmnist.md).

6,000 Fashion-MNIST training images, 20 % of their labels flipped to another class, embedded by the tiny CLIP the
tests train; adapters trained on the noisy labels; SAS and SDS (K = 50); top-50 % selection with λ = 0.1. The
selection must find the flipped labels (AUROC of low SAS), keep few of them, and give a classifier trained on it a
better test accuracy than one trained on a random subset of the same size.

No Spark: everything runs in-process on numpy/torch, in well under a minute once the tiny CLIP is cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from clipsift.udfs.adapters import AdapterPair, apply_image, apply_text, train_adapters
from clipsift.udfs.kernels.clipselect import (
    diversity_within_label,
    minmax,
    select_top_k,
    selection_scores,
    semantic_alignment,
)
from tests.support.tiny_clip import (
    FASHION_CLASSES,
    encode_images,
    encode_texts,
    load_fashion_mnist,
    preprocess_images,
    trained_tiny_clip,
)

N_POOL, N_TEST, NOISE, SEED = 6_000, 2_000, 0.2, 0
PROMPT = "a photo of a {}"
EPOCHS, BATCH, ADAPTER_LR, TEMPERATURE = 30, 256, 1e-4, 0.07
K, RATIO, LAMBDA = 50, 0.5, 0.1
# One-hidden-layer MLP, full-batch Adam long enough to fit its training set, so label noise hurts it. Logistic
# regression is reported too: with noise spread evenly over the other classes it barely notices 20 % noise.
MLP_HIDDEN, MLP_STEPS, LOGREG_STEPS, CLASSIFIER_LR = 128, 500, 300, 1e-2


@dataclass(frozen=True)
class Pool:
    """The embedded pool (noisy labels), the test split and the class prompts, all tiny-CLIP embeddings."""

    images: np.ndarray
    labels: np.ndarray
    noisy: np.ndarray
    flipped: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    prompts: np.ndarray


@dataclass(frozen=True)
class Outcome:
    auroc: float
    auroc_frozen: float
    auroc_sds: float
    flipped_selected: float
    flipped_random: float
    mlp: dict[str, float]
    logreg: dict[str, float]

    def line(self) -> str:
        def accs(d: dict[str, float]) -> str:
            return " ".join(f"{k}={v:.4f}" for k, v in d.items())

        return (
            f"clipselect-fmnist: auroc_sas={self.auroc:.4f} auroc_sas_frozen={self.auroc_frozen:.4f} "
            f"auroc_high_sds={self.auroc_sds:.4f} "
            f"flipped_share selected={self.flipped_selected:.4f} random={self.flipped_random:.4f} | "
            f"mlp_acc {accs(self.mlp)} | logreg_acc {accs(self.logreg)}"
        )


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def fit_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, hidden: int, steps: int
) -> float:
    """Test accuracy of a classifier on standardised frozen embeddings: an MLP, or logistic regression if hidden=0."""
    torch.manual_seed(SEED)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    mean, std = x.mean(0), x.std(0)
    dim = x.shape[1]
    layers = (
        [torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)]
        if hidden
        else [torch.nn.Linear(dim, 10)]
    )
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=CLASSIFIER_LR)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = model((torch.from_numpy(test_x) - mean) / std).argmax(1).numpy()
    return float((predicted == test_y).mean())


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices on a shared 2-core machine: one thread is as fast and does not spin
    try:
        model, preprocess, tokenizer = trained_tiny_clip().load()
        images, labels = load_fashion_mnist("train")
        test_images, test_labels = load_fashion_mnist("test")
        rng = np.random.default_rng(SEED)
        rows = rng.choice(len(images), size=N_POOL, replace=False)
        labels = labels[rows]
        flipped = np.zeros(N_POOL, dtype=bool)
        flipped[rng.choice(N_POOL, size=int(NOISE * N_POOL), replace=False)] = True
        noisy = labels.copy()
        noisy[flipped] = (labels[flipped] + rng.integers(1, len(FASHION_CLASSES), size=flipped.sum())) % len(
            FASHION_CLASSES
        )
        yield Pool(
            images=encode_images(model, preprocess_images(images[rows], preprocess)).numpy(),
            labels=labels,
            noisy=noisy,
            flipped=flipped,
            test_images=encode_images(model, preprocess_images(test_images[:N_TEST], preprocess)).numpy(),
            test_labels=test_labels[:N_TEST],
            prompts=encode_texts(model, tokenizer, [PROMPT.format(c) for c in FASHION_CLASSES]).numpy(),
        )
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def outcome(pool: Pool) -> Iterator[Outcome]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _experiment(pool)
    finally:
        torch.set_num_threads(threads)


def _experiment(pool: Pool) -> Outcome:
    epochs = iter(range(EPOCHS))

    def epoch_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of mini-batches in a fresh seeded order, streamed: the pool is never copied whole."""
        order = np.random.default_rng([SEED, next(epochs)]).permutation(N_POOL)
        for start in range(0, N_POOL, BATCH):
            rows = order[start : start + BATCH]
            yield pool.images[rows], pool.noisy[rows]

    pair = train_adapters(epoch_batches, pool.prompts, epochs=EPOCHS, lr=ADAPTER_LR, temperature=TEMPERATURE, seed=SEED)
    adapted = apply_image(pair, pool.images)
    sas = semantic_alignment(adapted, apply_text(pair, pool.prompts), pool.noisy)
    sds = diversity_within_label(adapted, pool.noisy, K)
    selected = select_top_k(selection_scores(minmax(sas), minmax(sds), LAMBDA), RATIO)
    random = np.zeros(N_POOL, dtype=bool)
    random[np.random.default_rng(SEED + 1).choice(N_POOL, size=int(selected.sum()), replace=False)] = True
    frozen = AdapterPair(pool.images.shape[1])
    sas_frozen = semantic_alignment(apply_image(frozen, pool.images), pool.prompts, pool.noisy)

    everything = np.ones(N_POOL, dtype=bool)
    # (rows, labels) per training set; the clean one is a reference only: real noisy data has no such labels.
    subsets = {
        "selected": (selected, pool.noisy),
        "random": (random, pool.noisy),
        "full_noisy": (everything, pool.noisy),
        "full_clean": (everything, pool.labels),
    }
    test = (pool.test_images, pool.test_labels)
    return Outcome(
        auroc=auroc(-sas, pool.flipped),
        auroc_frozen=auroc(-sas_frozen, pool.flipped),
        auroc_sds=auroc(sds, pool.flipped),  # a flipped row sits far from its assigned class: SDS favours it
        flipped_selected=float(pool.flipped[selected].mean()),
        flipped_random=float(pool.flipped[random].mean()),
        mlp={
            k: fit_accuracy(pool.images[m], y[m], *test, hidden=MLP_HIDDEN, steps=MLP_STEPS)
            for k, (m, y) in subsets.items()
        },
        logreg={
            k: fit_accuracy(pool.images[m], y[m], *test, hidden=0, steps=LOGREG_STEPS) for k, (m, y) in subsets.items()
        },
    )


def test_report(outcome: Outcome) -> None:
    print(outcome.line())  # read with `pytest -s`; recorded in docs/clipselect-fmnist.md
    assert np.isfinite([outcome.auroc, *outcome.mlp.values(), *outcome.logreg.values()]).all()


def test_low_sas_finds_flipped_labels(outcome: Outcome) -> None:
    assert outcome.auroc > 0.95  # measured 0.99


def test_selection_keeps_few_flipped_labels(outcome: Outcome) -> None:
    assert 0.15 < outcome.flipped_random < 0.25
    assert outcome.flipped_selected < 0.25 * outcome.flipped_random  # measured about 0.001 against 0.19


def test_classifier_on_selection_beats_random_subset_and_full_noisy_set(outcome: Outcome) -> None:
    mlp = outcome.mlp
    assert mlp["selected"] > mlp["random"] + 0.05  # measured about +0.10
    assert mlp["selected"] > mlp["full_noisy"] + 0.005  # measured about +0.02
