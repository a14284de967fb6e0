"""The proxy-training loop of ``clipsift eval`` (:mod:`clipsift.udfs.proxy`), without Spark, on real images.

The property that must hold at any scale: a student trained on Fashion-MNIST pairs whose captions were all
swapped (a seeded permutation: no caption describes its image) scores at chance, and one trained on the clean
pairs, for the same samples seen, clearly above it. Each student trains for a few seconds on two cores.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipsift.jobs.config import ConfigError, EvalConfig
from clipsift.udfs.decode import prepare_image
from clipsift.udfs.proxy import (
    PIXELS_ARROW,
    ArmSummary,
    Student,
    TrainSettings,
    Vocab,
    differs,
    pixels_array,
    pixels_fn,
    register_config,
    retrieval_recall,
    student_image_size,
    summarize,
    train_student,
    zero_shot_accuracy,
)
from tests.support.tiny_clip import FASHION_CLASSES, load_fashion_mnist, png_bytes

SIZE = 32  # the default student's image side
N_TRAIN, N_TEST, N_RETRIEVAL = 2000, 1000, 200
SETTINGS = TrainSettings(steps=100, batch_size=64, lr=2e-3, warmup_steps=10, threads=2, device="cpu")
TEMPLATE = "a photo of a {}"
CHANCE = 1 / len(FASHION_CLASSES)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return load_fashion_mnist(split)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _pixels(images: np.ndarray) -> np.ndarray:
    return np.stack([prepare_image(Image.fromarray(image, mode="L"), SIZE) for image in images])


@pytest.fixture(scope="module")
def fashion() -> dict[str, np.ndarray]:
    images, labels = _fashion("train")
    test_images, test_labels = _fashion("test")
    return {
        "train": _pixels(images[:N_TRAIN]),
        "train_labels": labels[:N_TRAIN],
        "test": _pixels(test_images[:N_TEST]),
        "test_labels": test_labels[:N_TEST],
    }


def _captions(labels: np.ndarray) -> list[str]:
    return [TEMPLATE.format(FASHION_CLASSES[label]) for label in labels]


@pytest.fixture(scope="module")
def students(fashion: dict[str, np.ndarray]) -> dict[str, Student]:
    """Two students of the same budget and seed: one on the clean pairs, one on the same captions swapped."""
    captions = _captions(fashion["train_labels"])
    swapped = [captions[i] for i in np.random.default_rng(7).permutation(len(captions))]
    return {
        "clean": train_student(fashion["train"], captions, SETTINGS, seed=0),
        "swapped": train_student(fashion["train"], swapped, SETTINGS, seed=0),
    }


def test_swapped_captions_score_at_chance_clean_clearly_above(
    fashion: dict[str, np.ndarray], students: dict[str, Student]
) -> None:
    accuracy = {
        name: zero_shot_accuracy(student, fashion["test"], fashion["test_labels"], FASHION_CLASSES, [TEMPLATE])
        for name, student in students.items()
    }
    texts = _captions(fashion["test_labels"][:N_RETRIEVAL])
    recall = {name: retrieval_recall(s, fashion["test"][:N_RETRIEVAL], texts) for name, s in students.items()}
    print(f"proxy: zero-shot {accuracy} retrieval {recall}")
    # Chance is 0.1 on ten balanced classes; 1,000 test images put the binomial spread near 0.01.
    assert abs(accuracy["swapped"][1] - CHANCE) < 0.06
    assert accuracy["clean"][1] > CHANCE + 0.3
    assert accuracy["clean"][1] - accuracy["swapped"][1] > 0.25
    # Text -> image retrieval among 200 held-out pairs: chance R@5 is 5 / 200.
    assert recall["swapped"]["t2i_r5"] < 0.08
    assert recall["clean"]["t2i_r5"] > recall["swapped"]["t2i_r5"] + 0.05
    # With no signal, open_clip's ClipLoss stays at log(batch size); clean pairs bring it well below.
    assert np.mean(students["swapped"].losses[-10:]) > 0.95 * math.log(SETTINGS.batch_size)
    assert np.mean(students["clean"].losses[-10:]) < 0.8 * math.log(SETTINGS.batch_size)


def test_budget_is_steps_times_batch_and_vocabulary_is_shrunk(students: dict[str, Student]) -> None:
    for student in students.values():
        assert len(student.losses) == SETTINGS.steps
        assert all(math.isfinite(loss) for loss in student.losses)
        assert student.device == "cpu"
        # Ten class names, the template's words, padding, unknown, start and end of text: a few dozen rows.
        assert student.vocab_size < 40
        assert student.model.token_embedding.weight.shape[0] == student.vocab_size
    assert SETTINGS.samples_seen == 6400


def test_retrieval_recall_matches_a_brute_force_ranking(
    fashion: dict[str, np.ndarray], students: dict[str, Student]
) -> None:
    student = students["clean"]
    pixels = fashion["test"][:50]
    labels = fashion["test_labels"][:50]
    texts = [f"{TEMPLATE.format(FASHION_CLASSES[label])} number {i}" for i, label in enumerate(labels)]
    got = retrieval_recall(student, pixels, texts, ks=(1, 5))
    sim = (student.encode_images(pixels) @ student.encode_texts(texts).T).numpy()
    for k in (1, 5):
        i2t = np.mean([sum(sim[i, j] > sim[i, i] for j in range(50)) < k for i in range(50)])
        t2i = np.mean([sum(sim[j, i] > sim[i, i] for j in range(50)) < k for i in range(50)])
        assert got[f"i2t_r{k}"] == pytest.approx(i2t)
        assert got[f"t2i_r{k}"] == pytest.approx(t2i)


def test_same_seed_same_student_other_seed_other_student(fashion: dict[str, np.ndarray]) -> None:
    settings = replace(SETTINGS, steps=4, batch_size=16, warmup_steps=1)
    captions = _captions(fashion["train_labels"][:40])
    a = train_student(fashion["train"][:40], captions, settings, seed=3)
    b = train_student(fashion["train"][:40], captions, settings, seed=3)
    c = train_student(fashion["train"][:40], captions, settings, seed=4)
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_a_small_set_is_cycled_to_the_full_budget(fashion: dict[str, np.ndarray]) -> None:
    settings = replace(SETTINGS, steps=3, batch_size=16, warmup_steps=1)
    student = train_student(fashion["train"][:5], _captions(fashion["train_labels"][:5]), settings, seed=0)
    assert len(student.losses) == 3


def test_a_custom_open_clip_config_is_trained_at_its_own_image_size(fashion: dict[str, np.ndarray]) -> None:
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    register_config("test-proxy-custom", config)
    assert student_image_size("test-proxy-custom") == 28
    images, labels = _fashion("train")
    pixels = np.repeat(images[:32, :, :, None], 3, axis=3)
    settings = replace(SETTINGS, steps=2, batch_size=8, warmup_steps=1)
    student = train_student(pixels, _captions(labels[:32]), settings, seed=0, model_name="test-proxy-custom")
    assert student.image_size == 28 and student.model.text_projection.shape[-1] == 32
    assert student.encode_texts(["a photo of a bag"]).shape == (1, 32)
    assert torch.allclose(student.encode_images(pixels[:3]).norm(dim=-1), torch.ones(3))


def test_bad_inputs_are_refused(fashion: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        train_student(fashion["train"][:2], ["a"], SETTINGS, seed=0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        train_student(fashion["train"][:1], ["a"], SETTINGS, seed=0)
    with pytest.raises(ValueError, match="the model takes"):
        train_student(np.zeros((4, 28, 28, 3), np.uint8), ["a", "b", "c", "d"], SETTINGS, seed=0)


def test_vocab_keeps_padding_and_end_of_text_last() -> None:
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [49406, 9, 49407, 0, 0, 0]])
    vocab = Vocab.from_tokens(tokens)
    encoded = vocab.encode(tokens)
    assert vocab.size == 7  # padding, unknown, and 5 known ids
    assert encoded.tolist() == [[5, 3, 4, 6, 0, 0], [5, 2, 6, 0, 0, 0]]
    assert torch.equal(encoded.argmax(dim=-1), tokens.argmax(dim=-1))  # open_clip pools at argmax
    unknown = vocab.encode(torch.tensor([[49406, 777, 49407, 0]]))
    assert unknown.tolist() == [[5, 1, 6, 0]]


def test_pixels_fn_decodes_bytes_and_paths_and_names_bad_rows(tmp_path: object) -> None:
    images, _labels = _fashion("test")
    png = png_bytes(images[0])
    path = f"{tmp_path}/one.png"
    with open(path, "wb") as f:
        f.write(png_bytes(images[1]))
    batch = pa.RecordBatch.from_pydict(
        {
            "uid": ["a", "b", "c"],
            "caption": [b"a shoe", b"a bag", None],
            "image": [png, None, b"not an image"],
            "image_path": [None, path, None],
        }
    )
    (out,) = list(pixels_fn(SIZE)(iter([batch])))
    assert out.schema == PIXELS_ARROW
    rows = out.to_pydict()
    assert rows["uid"] == ["a", "b", "c"]
    assert rows["caption"][:2] == ["a shoe", "a bag"]
    decoded = pixels_array(rows["pixels"][:2], SIZE)
    assert np.array_equal(decoded[0], _pixels(images[:1])[0])
    assert np.array_equal(decoded[1], _pixels(images[1:2])[0])
    assert rows["error"][:2] == [None, None]
    assert rows["pixels"][2] is None and rows["error"][2].startswith("not_an_image")
    assert Image.open(io.BytesIO(png)).size == (28, 28)


def test_summary_mean_spread_and_verdict() -> None:
    rows = [
        {"arm": "a", "m": 0.50}, {"arm": "a", "m": 0.52}, {"arm": "b", "m": 0.30}, {"arm": "b", "m": 0.34},
        {"arm": "c", "m": 0.51}, {"arm": "c", "m": 0.49}, {"arm": "d", "m": 0.9},
    ]  # fmt: skip
    summary = {s.arm: s for s in summarize(rows, metrics=("m",))}
    assert summary["a"].mean["m"] == pytest.approx(0.51)
    assert summary["a"].std["m"] == pytest.approx(np.std([0.50, 0.52], ddof=1))
    assert summary["d"].std["m"] == 0.0
    assert differs(summary["a"], summary["b"], "m") is True
    assert differs(summary["a"], summary["c"], "m") is False
    assert differs(summary["a"], summary["d"], "m") is None
    assert isinstance(summary["a"], ArmSummary)


# --------------------------------------------------------------------------------------------------
# The job's config (no Spark)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "eval.yaml"


def test_the_example_config_loads_and_names_views_as_select_does() -> None:
    cfg = EvalConfig.from_yaml(EXAMPLE)
    assert cfg.view_of(cfg.selections[0]) == "`main`.`clipsift`.`sel_negclip_normsim`"
    assert cfg.view_of(cfg.selections[2]) == "main.clipsift.some_other_view"
    assert cfg.train.samples_seen == cfg.train.steps * cfg.train.batch_size
    assert isinstance(cfg.train, TrainSettings)


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("train.seeds=[]", "train.seeds", "at least one seed"),
        ("train.seeds=[1, 1]", "train.seeds", "listed twice"),
        ("train.batch_size=1", "train.batch_size", "at least 2 pairs"),
        ("train.device=tpu", "train.device", "not one of auto"),
        ("train.warmup_steps=1000", "train.warmup_steps", "0..steps"),
        ("selections=[{name: pool}]", "selections[0].name", "adds itself"),
        ("selections=[{name: a}, {name: a}]", "selections[1].name", "used twice"),
        ("zero_shot.templates=['no slot']", "zero_shot.templates[0]", "once"),
        ("zero_shot.image_path_col=path", "zero_shot", "exactly one of 'image_col'"),
        ("retrieval.holdout=1", "retrieval.holdout", "at least 2"),
        ("student.config_json=/no/such.json", "student.config_json", "does not exist"),
        ("output={path: /x, format: parquet}", "output.format", "always Delta"),
    ],
)
def test_a_bad_key_is_one_config_error_naming_it(override: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        EvalConfig.from_yaml(EXAMPLE, [override])
    assert info.value.key == key and says in info.value.message
