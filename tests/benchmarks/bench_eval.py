"""``clipsift eval``'s proxy training at its default budget: wall time per arm, and whether it tells arms apart.

    python -m tests.benchmarks.bench_eval [--pool 10000] [--noise 0.5] [--seeds 0 1] [--steps 300] [--out DIR]

No Spark: the students of :mod:`clipsift.udfs.proxy` on Fashion-MNIST pairs ("a photo of a {class}") where a
``noise`` share of the captions were swapped among themselves (a seeded permutation of those rows' captions), so
the pool holds clean and mismatched pairs. Arms, as the eval job builds them, all at ``steps x batch_size``
samples seen: ``clean`` (an oracle selection: the pairs that were not swapped), ``random_clean`` (a seeded random
subset of the pool of the same size), ``pool`` (every pair) and ``swapped`` (only the mismatched pairs). Each arm
is trained once per seed and scored by zero-shot top-1 on 2,000 t10k images (10 classes, chance 0.1) and
text->image R@5 on 500 t10k pairs. Prints one line per arm (mean ± sample std over the seeds, train seconds per
seed) and writes ``bench_eval.json`` into ``--out``. Nothing fails on a slow or surprising result.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsift.udfs.decode import prepare_image
from clipsift.udfs.proxy import TrainSettings, Vocab, retrieval_recall, summarize, train_student, zero_shot_accuracy
from tests.support.tiny_clip import FASHION_CLASSES, load_fashion_mnist

TEMPLATE = "a photo of a {}"


def _pixels(images: np.ndarray) -> np.ndarray:
    return np.stack([prepare_image(Image.fromarray(image, mode="L"), 32) for image in images])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=TrainSettings().steps)
    parser.add_argument("--batch-size", type=int, default=TrainSettings().batch_size)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    pixels, labels = _pixels(images[: args.pool]), labels[: args.pool]
    zs_pixels, zs_labels = _pixels(test_images[:2000]), test_labels[:2000]
    ret_pixels = zs_pixels[:500]
    ret_texts = [TEMPLATE.format(FASHION_CLASSES[label]) for label in zs_labels[:500]]

    rng = np.random.default_rng(0)
    captions = np.array([TEMPLATE.format(FASHION_CLASSES[label]) for label in labels], dtype=object)
    noisy = rng.permutation(args.pool)[: int(args.noise * args.pool)]
    captions[noisy] = captions[rng.permutation(noisy)]
    swapped = np.zeros(args.pool, dtype=bool)
    swapped[noisy] = captions[noisy] != np.array([TEMPLATE.format(FASHION_CLASSES[lab]) for lab in labels[noisy]])
    clean = np.flatnonzero(~swapped)
    arms = {
        "clean": clean,
        "random_clean": np.sort(rng.permutation(args.pool)[: len(clean)]),
        "pool": np.arange(args.pool),
        "swapped": np.flatnonzero(swapped),
    }
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, threads=args.threads, device="auto")
    import open_clip

    from clipsift.udfs.proxy import STUDENT_NAME, TINY_STUDENT, register_config

    register_config(STUDENT_NAME, TINY_STUDENT)
    tokenizer = open_clip.get_tokenizer(STUDENT_NAME)
    prompts = [TEMPLATE.format(name) for name in FASHION_CLASSES]
    vocab = Vocab.from_tokens(tokenizer(list(captions) + ret_texts + prompts))

    rows: list[dict[str, Any]] = []
    for arm, index in arms.items():
        for seed in args.seeds:
            began = time.perf_counter()
            student = train_student(pixels[index], list(captions[index]), settings, seed=seed, vocab=vocab)
            top = zero_shot_accuracy(student, zs_pixels, zs_labels, FASHION_CLASSES, [TEMPLATE])
            recall = retrieval_recall(student, ret_pixels, ret_texts)
            rows.append(
                {
                    "arm": arm, "seed": seed, "size": len(index), "samples_seen": settings.samples_seen,
                    "zero_shot_top1": top[1], "t2i_r5": recall["t2i_r5"], "train_seconds": student.seconds,
                    "wall_seconds": time.perf_counter() - began, "device": student.device,
                }
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    for s in summarize(rows, metrics=("zero_shot_top1", "t2i_r5", "train_seconds")):
        print(
            f"{s.arm:>13}: size {next(r['size'] for r in rows if r['arm'] == s.arm):>6}, "
            f"{settings.samples_seen} samples seen, {s.seeds} seeds: "
            f"zero-shot top-1 {s.mean['zero_shot_top1']:.3f} ± {s.std['zero_shot_top1']:.3f}, "
            f"t2i R@5 {s.mean['t2i_r5']:.3f} ± {s.std['t2i_r5']:.3f}, "
            f"train {s.mean['train_seconds']:.1f} s per seed"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_eval.json").write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
