"""Emoji benchmark: clipsift's own teacher, scores, selections and ``clipsift eval`` on image–name pairs that
ship in packages, with planted noise and a style shift between the pool and the evaluation (issue 15, item 3).

    python -m tests.benchmarks.bench_eval_emoji --fetch-only --cache .cache/emoji   # npm pack + Debian checks
    python -m tests.benchmarks.bench_eval_emoji --cache .cache/emoji --out bench-output/emoji [--seeds 0 1]
    python -m tests.benchmarks.bench_eval_emoji --cache .cache/emoji --style-distances   # why not Noto (below)

Data (nothing from a model hub; :func:`fetch` gets it):

* ``emoji-datasource-google@16.0.0`` and ``emoji-datasource-twitter@16.0.0`` (npm, ``npm pack``): ``emoji.json``
  (names, categories, skin-tone variations) and each vendor's 64-pixel PNGs, read straight out of the ``.tgz``.
  A concept is an emoji or one of its skin-tone variations (3,781 outside the ``Component`` category), named
  ``"{unicode name}"`` or ``"{unicode name}, {tone} skin tone"``.
* the evaluation style: Debian's ``ruby-gemojione`` 3.3.0 (EmojiOne's 64-pixel PNGs; 1,764 of the concepts), or
  with ``--eval-style noto`` Debian's ``fonts-noto-color-emoji`` rendered with Pillow (CBDT bitmaps at 109 px,
  ``embedded_color``). Noto is not the default: the Google images of ``emoji-datasource-google`` *are* Noto Color
  Emoji's artwork (``--style-distances``: median absolute pixel difference to the Google image of the same emoji
  11.9 of 255 for Noto, 37.3 for Twitter, 40.6 for EmojiOne, 49.4 for another Google emoji; RGB at 32 x 32), so a
  Noto evaluation measures almost no style shift.

The benchmark:

1. **Pool** (the Google style): every concept captioned ``"an emoji of {name}"``; then, in disjoint seeded
   shares of the concepts, captions **swapped** among themselves (``--swapped`` 0.3, a cyclic shift of a seeded
   order: no swapped row keeps its own caption) and **generic** captions (``--generic`` 0.1: "an emoji",
   "a picture", "an image", "an icon"); and **near-duplicates** (``--near-dup`` 0.1 of the concepts, added as new
   rows): copies of clean rows' images shifted by 1–3 pixels and re-tinted by up to ±12 % per channel, with the
   original's caption. Every row records its planted kind (``clean``, ``swapped``, ``generic``, ``near_dup``).
2. **Teacher**: a tiny open_clip CLIP (the eval student's architecture, full token table) trained from scratch by
   clipsift's proxy trainer (:func:`clipsift.udfs.proxy.train_student`) on the Twitter style's clean pairs, saved
   as a custom model config JSON + a state_dict checkpoint (cached in ``--cache``).
3. ``clipsift embed`` (that config + checkpoint, ``model.pretrained: <file>``) embeds the pool and the evaluation
   style's **train split** (half of its concepts, grouped by base emoji, seeded); the latter's image embeddings
   are the NormSim target.
4. ``clipsift score``: CLIPScore, negCLIPLoss (τ = the teacher's own temperature), NormSim₂/∞ (target: the eval
   style's train split), NormSim₂-D, k-means + semantic dedup, label-free CLIP-powered selection (SAS/SDS).
5. ``clipsift select``: every arm the **same size**, int(N·``--fraction``) rows: ``clip`` (CLIPScore top),
   ``negclip`` (negCLIPLoss top), ``negclip_nsinf`` (negCLIPLoss top ``--first-fraction`` then NormSim∞ down to the
   fraction), ``normsim2d`` (NormSim₂-D from the CLIPScore top ``--first-fraction``), ``clipselect`` (SAS/SDS,
   λ 0.1), ``dedup_clip`` (CLIPScore top within the dedup survivors); and ``dedup`` (the survivors themselves, a
   larger view: only counted, not trained).
6. ``clipsift eval``: a student per arm and seed at equal samples seen, plus the job's own ``random_*`` arm of the
   same size (one set of rows: trained once) and the whole ``pool``; zero-shot classification of the eval
   style's **test split** into the words of the names (``flag``, ``face``, ``hand``, ...: an image whose base name
   holds exactly one class word, at most ``--zs-cap`` per class) and image↔text retrieval on 500 of its pairs.

Printed and written to ``--out``: the planted kinds each selection kept, each score's AUROC against each kind,
the eval table (mean ± spread over seeds), per-arm wall time and samples seen, and each phase's wall time
(``bench_eval_emoji.json``, ``bench_eval_emoji.md``). Nothing fails on a surprising result. The published run:
``docs/eval-emoji.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

NPM_VERSION = "16.0.0"
VENDORS = ("google", "twitter")
GEMOJIONE_PNG = Path("/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png")
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEBIAN_PACKAGES = {"gemojione": ("ruby-gemojione", GEMOJIONE_PNG), "noto": ("fonts-noto-color-emoji", NOTO_FONT)}
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
GENERIC_CAPTIONS = ("an emoji", "a picture", "an image", "an icon")
KINDS = ("clean", "swapped", "generic", "near_dup")
#: Candidate zero-shot classes: words of the emoji names (a class is kept when the test split has enough images
#: whose base name holds it and no other candidate).
CLASS_WORDS = (
    "flag", "face", "hand", "person", "sign", "man", "woman", "arrow", "baby", "heart", "moon", "square",
    "circle", "ball", "water", "star", "clock", "cat", "boy", "girl", "tree", "car", "book", "dog", "fish",
)  # fmt: skip
ZS_TEMPLATES = ("an emoji of {}", "an emoji of a {}")
TEACHER_NAME = "clipsift-emoji-teacher"
TEACHER_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Concept:
    """One emoji or skin-tone variation: its codepoints, names and the image file name the npm packages use."""

    key: str
    """``unified`` codepoints, e.g. ``1F44D-1F3FD``."""
    base: str
    """The base emoji's codepoints (skin-tone variations share it)."""
    name: str
    category: str
    subcategory: str
    image: str


# ----------------------------------------------------------------------------------------------------- data


def fetch(cache: Path, eval_style: str = "gemojione") -> dict[str, Path]:
    """The npm tarballs in ``cache`` (``npm pack`` when missing) and the evaluation style's Debian package.

    Raises:
        FileNotFoundError: npm is missing, or the Debian package is not installed (the message says how).
    """
    cache.mkdir(parents=True, exist_ok=True)
    paths = {vendor: cache / f"emoji-datasource-{vendor}-{NPM_VERSION}.tgz" for vendor in VENDORS}
    missing = [f"emoji-datasource-{vendor}@{NPM_VERSION}" for vendor, path in paths.items() if not path.is_file()]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError(f"npm not found: install it, or run `npm pack {' '.join(missing)}` in {cache}")
        subprocess.run([npm, "pack", "--silent", *missing], cwd=cache, check=True, stdout=subprocess.DEVNULL)
    package, marker = DEBIAN_PACKAGES[eval_style]
    if not marker.exists():
        raise FileNotFoundError(f"{marker} not found: `apt-get install {package}` (Debian)")
    return {**paths, eval_style: marker}


def read_npm(tarballs: dict[str, Path]) -> tuple[list[Concept], dict[str, dict[str, bytes]]]:
    """The concepts (emoji and skin-tone variations, ``Component`` left out, drawn by both vendors) and, per
    vendor, the 64-pixel PNG bytes by image file name."""
    images: dict[str, dict[str, bytes]] = {}
    emoji: list[dict[str, Any]] = []
    for vendor in VENDORS:
        prefix = f"package/img/{vendor}/64/"
        images[vendor] = {}
        with tarfile.open(tarballs[vendor], "r:gz") as tar:
            for member in tar:
                if member.name == "package/emoji.json" and not emoji:
                    emoji = json.load(_member(tar, member))
                elif member.name.startswith(prefix) and member.isfile():
                    images[vendor][member.name[len(prefix) :]] = _member(tar, member).read()
    concepts = [c for c in _concepts(emoji) if all(c.image in images[v] for v in VENDORS)]
    return concepts, images


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    f = tar.extractfile(member)
    if f is None:
        raise ValueError(f"{member.name} is not a regular file")
    return f


def _concepts(emoji: Sequence[dict[str, Any]]) -> Iterator[Concept]:
    for e in sorted(emoji, key=lambda e: int(e["sort_order"])):
        if e["category"] == "Component":
            continue
        name = str(e["name"]).lower()
        yield Concept(e["unified"], e["unified"], name, e["category"], e["subcategory"], e["image"])
        for tones, variation in sorted((e.get("skin_variations") or {}).items()):
            names = [SKIN_TONES[t] for t in tones.split("-")]
            tone = f"{names[0]} skin tone" if len(set(names)) == 1 else f"{' and '.join(names)} skin tones"
            key = variation["unified"]
            yield Concept(key, e["unified"], f"{name}, {tone}", e["category"], e["subcategory"], variation["image"])


def eval_images(concepts: Sequence[Concept], style: str) -> dict[str, bytes]:
    """The evaluation style's PNG (RGBA, 64 x 64) per concept key, for the concepts it draws."""
    if style == "gemojione":
        files = {p.name for p in GEMOJIONE_PNG.glob("*.png")}
        out = {}
        for c in concepts:
            for name in (c.key.upper(), "-".join(h for h in c.key.upper().split("-") if h != "FE0F")):
                if f"{name}.png" in files:
                    out[c.key] = (GEMOJIONE_PNG / f"{name}.png").read_bytes()
                    break
        return out
    from PIL import ImageFont

    font = ImageFont.truetype(str(NOTO_FONT), 109)
    rendered = {c.key: _noto_png(c.key, font) for c in concepts}
    return {k: v for k, v in rendered.items() if v is not None}


def _noto_png(key: str, font: Any) -> bytes | None:
    """One emoji drawn with Noto Color Emoji's bitmaps (136 x 128 at size 109), centred on a transparent square
    and resized to 64 x 64; None when the font draws nothing (an emoji newer than the font)."""
    from PIL import Image, ImageDraw

    text = "".join(chr(int(h, 16)) for h in key.split("-"))
    canvas = Image.new("RGBA", (136, 136), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 4), text, font=font, embedded_color=True)
    if canvas.getbbox() is None:
        return None
    return _png(canvas.resize((64, 64), Image.Resampling.LANCZOS))


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def near_duplicate(png: bytes, rng: np.random.Generator) -> bytes:
    """A copy of an image shifted by 1–3 pixels in x and y and re-tinted by up to ±12 % per channel (alpha kept)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGBA")
    dx, dy = (int(rng.integers(1, 4)) * int(rng.choice((-1, 1))) for _ in range(2))
    shifted = Image.new("RGBA", image.size, (0, 0, 0, 0))
    shifted.paste(image, (dx, dy))
    pixels = np.asarray(shifted, dtype=np.float32).copy()
    pixels[..., :3] *= rng.uniform(0.88, 1.12, size=3)
    return _png(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGBA"))


@dataclass(frozen=True)
class PoolRow:
    uid: str
    caption: str
    png: bytes
    planted: str
    concept: str
    duplicate_of: str | None


def build_pool(
    concepts: Sequence[Concept],
    pngs: dict[str, bytes],
    *,
    swapped: float,
    generic: float,
    near_dup: float,
    seed: int,
) -> list[PoolRow]:
    """The pool of one style with planted noise (module docstring, step 1)."""
    rng = np.random.default_rng(seed)
    n = len(concepts)
    clean = [f"an emoji of {c.name}" for c in concepts]
    captions = list(clean)
    kinds = ["clean"] * n
    order = rng.permutation(n)
    n_swapped, n_generic = int(swapped * n), int(generic * n)
    swap = order[:n_swapped]
    for i, j in zip(swap, np.roll(swap, 1), strict=True):  # a cyclic shift: no row keeps its own caption
        captions[i] = clean[j]
        kinds[i] = "swapped" if clean[j] != clean[i] else "clean"
    for i in order[n_swapped : n_swapped + n_generic]:
        captions[i] = str(rng.choice(GENERIC_CAPTIONS))
        kinds[i] = "generic"
    rows = [PoolRow(f"g{i:05d}", captions[i], pngs[c.image], kinds[i], c.key, None) for i, c in enumerate(concepts)]
    clean_rows = [i for i in order[n_swapped + n_generic :] if kinds[i] == "clean"]
    for j, i in enumerate(sorted(rng.choice(clean_rows, size=int(near_dup * n), replace=False))):
        rows.append(
            PoolRow(f"d{j:05d}", captions[i], near_duplicate(pngs[concepts[i].image], rng), "near_dup",
                    concepts[i].key, rows[i].uid)
        )  # fmt: skip
    return rows


def split_eval(concepts: Sequence[Concept], images: dict[str, bytes], seed: int) -> tuple[list[Concept], list[Concept]]:
    """The eval style's concepts split in halves by base emoji (a base's skin tones stay together): (train, test)."""
    drawn = [c for c in concepts if c.key in images]
    bases = sorted({c.base for c in drawn})
    rng = np.random.default_rng(seed + 1000)
    train_bases = set(np.asarray(bases)[rng.permutation(len(bases))[: len(bases) // 2]].tolist())
    return [c for c in drawn if c.base in train_bases], [c for c in drawn if c.base not in train_bases]


def zero_shot_set(
    test: Sequence[Concept], cap: int, min_images: int, seed: int
) -> tuple[list[tuple[Concept, str]], list[str]]:
    """(concept, class word) for test concepts whose base name holds exactly one class word, at most ``cap`` per
    class (seeded), for the classes with at least ``min_images``; and the classes, in :data:`CLASS_WORDS` order."""
    by_class: dict[str, list[Concept]] = {}
    for c in test:
        words = set(re.findall(r"[a-z]+", c.name.split(",")[0])) & set(CLASS_WORDS)
        if len(words) == 1:
            by_class.setdefault(words.pop(), []).append(c)
    rng = np.random.default_rng(seed + 2000)
    classes = [w for w in CLASS_WORDS if len(by_class.get(w, ())) >= min_images]
    chosen = []
    for w in classes:
        members = by_class[w]
        for i in sorted(rng.permutation(len(members))[:cap]):
            chosen.append((members[i], w))
    return chosen, classes


def style_distances(
    concepts: Sequence[Concept], images: dict[str, dict[str, bytes]], every: int = 10
) -> dict[str, Any]:
    """Median absolute pixel difference (0–255, RGB on white at 32 x 32, clipsift's resize) between the Google
    image of every ``every``-th concept and the same concept in each other style, and a different Google emoji
    (the next concept) as the scale of "another image". Why the evaluation style is EmojiOne, not Noto."""
    from clipsift.udfs.decode import decode_image, prepare_image

    def pixels(png: bytes) -> np.ndarray:
        return np.asarray(prepare_image(_decoded(png, decode_image), 32), dtype=np.float32)

    sample = list(concepts[::every])
    styles = {"twitter": {c.key: images["twitter"][c.image] for c in sample}}
    styles.update(
        {style: eval_images(sample, style) for style, (_, marker) in DEBIAN_PACKAGES.items() if marker.exists()}
    )
    google = {c.key: pixels(images["google"][c.image]) for c in sample}
    out: dict[str, Any] = {}
    for style, drawn in styles.items():
        diffs = [np.abs(google[key] - pixels(png)).mean() for key, png in drawn.items()]
        out[f"google vs {style}"] = {"median": round(float(np.median(diffs)), 1), "concepts": len(diffs)}
    others = [np.abs(google[a.key] - google[b.key]).mean() for a, b in itertools.pairwise(sample)]
    out["google vs another google emoji"] = {"median": round(float(np.median(others)), 1), "concepts": len(others)}
    return out


# ----------------------------------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class TeacherSpec:
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 60
    seed: int = 0
    threads: int = 2


def train_teacher(
    concepts: Sequence[Concept], pngs: dict[str, bytes], spec: TeacherSpec, cache: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """The teacher's config JSON, checkpoint and metadata, trained on ``(pngs[c.image], "an emoji of {name}")``
    with clipsift's proxy trainer (full token table, so open_clip's tokenizer reads it as it is), or found in the
    cache."""
    captions = [f"an emoji of {c.name}" for c in concepts]
    digest = hashlib.sha256(
        json.dumps([TEACHER_CONFIG, asdict(spec), captions, NPM_VERSION], sort_keys=True).encode()
    ).hexdigest()[:16]
    folder = cache / f"teacher-{digest}"
    config_path, checkpoint, meta_path = (folder / f"{TEACHER_NAME}.json", folder / "teacher.pt",
                                          folder / "metadata.json")  # fmt: skip
    if meta_path.is_file():
        return config_path, checkpoint, {**json.loads(meta_path.read_text()), "cached": True}
    import torch

    from clipsift.udfs.decode import decode_image, prepare_image
    from clipsift.udfs.proxy import TrainSettings, register_config, train_student

    register_config(TEACHER_NAME, TEACHER_CONFIG)
    size = int(TEACHER_CONFIG["vision_cfg"]["image_size"])
    pixels = np.stack([np.asarray(prepare_image(_decoded(pngs[c.image], decode_image), size)) for c in concepts])
    settings = TrainSettings(
        steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup_steps=spec.warmup_steps,
        threads=spec.threads, device="cpu", shrink_vocab=False,
    )  # fmt: skip
    student = train_student(pixels, captions, settings, seed=spec.seed, model_name=TEACHER_NAME)
    staging = Path(tempfile.mkdtemp(prefix=".teacher-", dir=cache))
    (staging / f"{TEACHER_NAME}.json").write_text(json.dumps(TEACHER_CONFIG, indent=1))
    torch.save(student.model.state_dict(), staging / "teacher.pt")
    meta = {
        "train_seconds": round(student.seconds, 1),
        "final_loss": student.losses[-1],
        "logit_scale": float(student.model.logit_scale.detach().exp()),
        "pairs": len(captions),
        "spec": asdict(spec),
    }
    (staging / "metadata.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return config_path, checkpoint, {**meta, "cached": False}


def _decoded(png: bytes, decode_image: Callable[..., Any]) -> Any:
    image, status, error = decode_image(png, max_pixels=10_000_000)
    if image is None:
        raise ValueError(f"an emoji PNG does not decode: {status} {error}")
    return image


# ----------------------------------------------------------------------------------------------------- jobs


@contextmanager
def phase(timings: dict[str, float], name: str) -> Iterator[None]:
    begun = time.perf_counter()
    print(f"[bench-eval-emoji] {name} ...", flush=True)
    yield
    timings[name] = round(time.perf_counter() - begun, 1)
    print(f"[bench-eval-emoji] {name}: {timings[name]:.1f}s", flush=True)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive outscores a random negative), ties half; NaN scores rank lowest."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    pos, neg = s[positive], s[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/emoji"), help="npm tarballs and the teacher")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fetch-only", action="store_true")
    parser.add_argument("--style-distances", action="store_true", help="print how far each style is from Google")
    parser.add_argument("--eval-style", choices=("gemojione", "noto"), default="gemojione")
    parser.add_argument("--swapped", type=float, default=0.3)
    parser.add_argument("--generic", type=float, default=0.1)
    parser.add_argument("--near-dup", type=float, default=0.1)
    parser.add_argument("--fraction", type=float, default=0.5, help="every arm's share of the pool")
    parser.add_argument("--first-fraction", type=float, default=0.7, help="negCLIPLoss / CLIPScore pre-filter")
    parser.add_argument("--dedup-threshold", type=float, default=0.95)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--zs-cap", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    timings: dict[str, float] = {}
    with phase(timings, "fetch"):
        paths = fetch(args.cache, args.eval_style)
    if args.fetch_only:
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
        return 0
    if args.style_distances:
        concepts, images = read_npm(paths)
        print(json.dumps(style_distances(concepts, images), indent=1))
        return 0
    # Passive OpenMP waiting: on a shared 2-core machine spinning torch threads slow everything down; set before
    # torch is imported here and before Spark's Python workers inherit the environment.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-eval-emoji-"))).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    with phase(timings, "read and build the data"):
        concepts, images = read_npm(paths)
        styled = eval_images(concepts, args.eval_style)
        pool = build_pool(
            concepts, images["google"], swapped=args.swapped, generic=args.generic, near_dup=args.near_dup,
            seed=args.data_seed,
        )  # fmt: skip
        target, test = split_eval(concepts, styled, args.data_seed)
        zs, classes = zero_shot_set(test, args.zs_cap, 5, args.data_seed)
    with phase(timings, "train the teacher (Twitter style)"):
        teacher_json, teacher_ckpt, teacher = train_teacher(
            concepts, images["twitter"], TeacherSpec(steps=args.teacher_steps, threads=args.threads), args.cache
        )

    from clipsift.jobs import embed as embed_job
    from clipsift.jobs import eval as eval_job
    from clipsift.jobs import score as score_job
    from clipsift.jobs import select as select_job
    from clipsift.jobs.config import EmbedConfig, EvalConfig, ScoreConfig, SelectConfig, from_dict
    from clipsift.jobs.session import get_spark

    base_of = {c.key: c.base for c in concepts}
    with phase(timings, "spark: start, write the tables"):
        spark = get_spark(
            "bench-eval-emoji",
            {
                "spark.master": "local[2]",
                "spark.sql.shuffle.partitions": "2",
                "spark.ui.enabled": "false",
                "spark.sql.warehouse.dir": str(out / "warehouse"),
                "spark.driver.memory": "3g",
            },
            local_catalog=None,
        )

        def write(name: str, rows: list[tuple[Any, ...]], ddl: str) -> str:
            path = str(out / name)
            spark.createDataFrame(rows, ddl).write.format("delta").mode("overwrite").save(path)
            return path

        pool_path = write(
            "pool",
            [(r.uid, r.caption, r.png, r.planted, r.concept, base_of[r.concept], r.duplicate_of) for r in pool],
            "uid string, caption string, png binary, planted string, concept string, base string, duplicate_of string",
        )
        target_path = write(
            "eval_train", [(f"t{i:05d}", f"an emoji of {c.name}", styled[c.key]) for i, c in enumerate(target)],
            "uid string, caption string, png binary",
        )  # fmt: skip
        retrieval_path = write(
            "eval_test", [(f"e{i:05d}", f"an emoji of {c.name}", styled[c.key]) for i, c in enumerate(test)],
            "uid string, caption string, png binary",
        )  # fmt: skip
        zs_path = write("zero_shot", [(styled[c.key], w) for c, w in zs], "image binary, label string")

    model = {"name": TEACHER_NAME, "config_json": str(teacher_json), "pretrained": str(teacher_ckpt),
             "device": "cpu", "threads": 1}  # fmt: skip
    embedded = {}
    with phase(timings, "clipsift embed (pool + eval train split)"):
        for name, source in (("pool", pool_path), ("eval_train", target_path)):
            cfg = from_dict(
                EmbedConfig,
                {
                    "input": {"kind": "table", "path": source, "image_col": "png"},
                    "model": model,
                    "output": {"path": str(out / f"embeddings_{name}")},
                    "embed": {"image_batch_size": 256, "text_batch_size": 512, "decode_threads": 1},
                },
            )
            done = embed_job.run(spark, cfg)
            embedded[name] = {"rows": done.embedded, "by_status": done.by_status, "model_id": done.model_id,
                              "seconds": round(done.seconds, 1)}  # fmt: skip
        target_emb = np.stack(
            [np.asarray(r["image_emb"], dtype=np.float32) for r in spark.read.format("delta")
             .load(str(out / "embeddings_eval_train")).where("status = 'ok'").select("image_emb").collect()]
        )  # fmt: skip
        np.save(out / "eval_train_image_emb.npy", target_emb)

    scores_path = str(out / "scores")
    with phase(timings, "clipsift score"):
        score_cfg = from_dict(
            ScoreConfig,
            {
                "input": {"kind": "table", "path": str(out / "embeddings_pool"), "shard_col": "source"},
                "output": {"path": scores_path},
                # B: a quarter of the pool (four equal batches per round); τ: the teacher's own temperature.
                "negclip": {"batch_size": -(-len(pool) // 4), "rounds": 10, "tau": 1 / teacher["logit_scale"]},
                "normsim": {"targets": [{"name": "eval_train", "path": str(out / "eval_train_image_emb.npy")}]},
                "normsim2_dynamic": {
                    "enabled": True, "candidate_fraction": args.first_fraction, "final_fraction": args.fraction,
                    "iterations": 20,
                },
                "baselines": {"dedup_threshold": args.dedup_threshold,
                              "kmeans": {"clusters": 40, "iterations": 20, "seed": 0}},
                "clipselect": {"enabled": True, "k": 20},
            },
        )  # fmt: skip
        scored = score_job.run(spark, score_cfg)

    scores = spark.read.format("delta").load(scores_path).where(f"run_id = '{scored.run_id}' AND status = 'ok'")
    n_ok = scores.count()
    n_arm = int(n_ok * args.fraction)
    n_dedup = scores.where("dedup_kept").count()
    within = min(1.0, (n_arm + 0.5) / n_dedup)  # int(n_dedup * within) == n_arm when dedup keeps enough rows
    trained = ["clip", "negclip", "negclip_nsinf", "normsim2d", "clipselect", "dedup_clip"]
    with phase(timings, "clipsift select"):
        f, f1 = args.fraction, args.first_fraction
        select_cfg = from_dict(
            SelectConfig,
            {
                "scores": {"path": scores_path},
                "run_id": scored.run_id,
                "view_prefix": "emoji_",
                "selections": [
                    {"name": "clip", "rule": "top_fraction", "column": "clip_score", "fraction": f},
                    {"name": "negclip", "rule": "top_fraction", "column": "negclip_loss", "fraction": f},
                    {"name": "negclip_nsinf", "rule": "sequential", "column": "negclip_loss", "fraction": f1,
                     "then_column": "normsim_inf_eval_train", "then_fraction": f},
                    {"name": "normsim2d", "rule": "threshold", "column": "normsim2d_survived", "min": 20},
                    {"name": "clipselect", "rule": "clipselect", "fraction": f},
                    {"name": "dedup", "rule": "flag", "column": "dedup_kept"},
                    {"name": "dedup_clip", "rule": "top_fraction", "column": "clip_score", "fraction": within,
                     "within": "dedup"},
                ],
            },
        )  # fmt: skip
        selected = {s.name: s.rows for s in select_job.run(spark, select_cfg)}

    with phase(timings, "planted kinds kept, AUROC per score"):
        kept = planted_kept(spark, pool_path, ["dedup", *trained])
        aucs = score_aurocs(spark, pool_path, scores)
        dedup = dedup_facts(spark, pool_path, str(out / "embeddings_pool"), scores_path + "_duplicates",
                            scored.run_id, args.dedup_threshold)  # fmt: skip

    with phase(timings, "clipsift eval"):
        eval_cfg = from_dict(
            EvalConfig,
            {
                "scores": {"path": scores_path},
                "pool": {"kind": "table", "path": pool_path, "image_col": "png"},
                "selections": [{"name": name} for name in trained],
                "view_prefix": "emoji_",
                "zero_shot": {"path": zs_path, "image_col": "image", "label_col": "label", "classes": classes,
                              "templates": list(ZS_TEMPLATES), "max_images": len(zs)},
                "retrieval": {"holdout": 500,
                              "input": {"kind": "table", "path": retrieval_path, "image_col": "png"}},
                "train": {"steps": args.steps, "batch_size": args.batch_size,
                          "warmup_steps": max(1, args.steps // 10), "seeds": args.seeds, "threads": args.threads},
            },
        )  # fmt: skip
        result = eval_job.run(spark, eval_cfg)
    print(eval_job._summary(result))

    counts = {k: sum(r.planted == k for r in pool) for k in KINDS}
    zs_counts = {w: sum(label == w for _, label in zs) for w in classes}
    facts = {
        "command": " ".join(["python -m tests.benchmarks.bench_eval_emoji", *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "packages": {k: {"path": str(v), "sha256": _sha256(v) if v.is_file() else None} for k, v in paths.items()},
        "pool": {"rows": len(pool), "concepts": len(concepts), "planted": counts, "ok": n_ok, "arm_rows": n_arm,
                 "dedup_kept": n_dedup},
        "eval_style": {"style": args.eval_style, "drawn": len(styled), "train_split": len(target),
                       "test_split": len(test), "zero_shot_images": len(zs), "classes": zs_counts,
                       "retrieval_pairs": min(500, len(test))},
        "teacher": teacher,
        "embedded": embedded,
        "score_run": scored.run_id,
        "selected": selected,
        "kept": kept,
        "auroc": aucs,
        "dedup": dedup,
        "eval_run": result.run_id,
        "eval": [{k: v for k, v in r.items() if k not in ("config", "created_at", "student_config")}
                 for r in result.rows],
        "timings": timings,
    }  # fmt: skip
    (out / "bench_eval_emoji.json").write_text(json.dumps(facts, indent=1, default=str))
    report = markdown(facts, result.summary)
    (out / "bench_eval_emoji.md").write_text(report)
    print(report)
    return 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def planted_kept(spark: Any, pool_path: str, views: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per view: rows kept of each planted kind, and near-duplicate pairs whose original and copy are both kept
    (one small aggregate per view over the 4k-row pool)."""
    from pyspark.sql import functions as F

    pool = spark.read.format("delta").load(pool_path).select("uid", "planted", "duplicate_of")
    out: dict[str, dict[str, int]] = {}
    for view in views:
        uids = spark.table(f"`emoji_{view}`").select("uid").distinct()
        rows = pool.join(uids, "uid", "left_semi")
        counts = {r["planted"]: int(r["count"]) for r in rows.groupBy("planted").count().collect()}
        pairs = rows.where(F.col("duplicate_of").isNotNull()).join(
            uids.withColumnRenamed("uid", "duplicate_of"), "duplicate_of", "left_semi"
        )
        out[view] = {**{k: counts.get(k, 0) for k in KINDS}, "rows": sum(counts.values()), "dup_pairs": pairs.count()}
    return out


def dedup_facts(
    spark: Any, pool_path: str, embeddings_path: str, duplicates_path: str, run_id: str, threshold: float
) -> dict[str, Any]:
    """What semantic dedup saw: the teacher's image cosine between each planted copy and its original, each clean
    row's nearest other row, and which rows the dedup dropped (by planted kind; beside a row of the same concept, of
    the same base emoji in another skin tone, or of another emoji). The benchmark's pool is 4k x 64 floats: the
    embeddings are collected here (never in clipsift's jobs)."""
    from pyspark.sql import functions as F

    pool = spark.read.format("delta").load(pool_path).select("uid", "planted", "concept", "base", "duplicate_of")
    emb = spark.read.format("delta").load(embeddings_path).where("status = 'ok'").select("uid", "image_emb")
    frame = pool.join(emb, "uid").toPandas()
    index = {u: i for i, u in enumerate(frame["uid"])}
    vectors = np.stack(frame["image_emb"].to_numpy()).astype(np.float32)
    copies = frame[frame["planted"] == "near_dup"]
    originals = zip(copies["uid"], copies["duplicate_of"], strict=True)
    pair = np.array([vectors[index[u]] @ vectors[index[o]] for u, o in originals])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity[(frame["planted"] == "clean").to_numpy()].max(axis=1)
    dropped = spark.read.format("delta").load(duplicates_path).where(F.col("run_id") == run_id)
    kept = pool.select(F.col("uid").alias("kept_uid"), F.col("concept").alias("kept_concept"),
                       F.col("base").alias("kept_base"))  # fmt: skip
    drops = dropped.join(pool, "uid").join(kept, "kept_uid")
    beside = (
        F.when(F.col("concept") == F.col("kept_concept"), "same concept")
        .when(F.col("base") == F.col("kept_base"), "same emoji, other skin tone")
        .otherwise("another emoji")
    )
    by = {(r["planted"], r["beside"]): int(r["count"]) for r in drops.groupBy("planted", beside.alias("beside"))
          .count().collect()}  # fmt: skip
    return {
        "threshold": threshold,
        "copy_cosine_median": round(float(np.median(pair)), 3),
        "copy_cosine_p10": round(float(np.percentile(pair, 10)), 3),
        "copies_at_threshold": round(float((pair >= threshold).mean()), 3),
        "clean_nearest_median": round(float(np.median(nearest)), 3),
        "clean_nearest_at_threshold": round(float((nearest >= threshold).mean()), 3),
        "dropped": {f"{kind} / {where}": n for (kind, where), n in sorted(by.items())},
    }


def score_aurocs(spark: Any, pool_path: str, scores: Any) -> dict[str, dict[str, float]]:
    """AUROC of each score for telling clean rows from each noisy kind (near_dup: the copy against clean rows).
    The benchmark's pool is 4k rows: its score columns are collected here (never in clipsift's jobs)."""
    columns = ["clip_score", "negclip_loss", "normsim_inf_eval_train", "normsim_2_eval_train", "sas", "sds"]
    pool = spark.read.format("delta").load(pool_path).select("uid", "planted")
    frame = scores.select("uid", *columns).join(pool, "uid").toPandas()
    clean = frame["planted"].to_numpy() == "clean"
    out: dict[str, dict[str, float]] = {}
    for column in columns:
        values = frame[column].to_numpy(dtype=np.float64)
        out[column] = {}
        for kind in KINDS[1:]:
            mask = clean | (frame["planted"].to_numpy() == kind)
            out[column][kind] = round(auroc(values[mask], clean[mask]), 3)
    return out


def markdown(facts: dict[str, Any], summary: Sequence[Any]) -> str:
    """The tables of docs/eval-emoji.md."""
    lines = []
    kept = facts["kept"]
    planted = facts["pool"]["planted"]
    rows = facts["pool"]["rows"]
    lines.append("| selection | rows | clean | swapped | generic | near_dup | near-dup pairs both kept |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    lines.append(f"| pool | {rows:,} | " + " | ".join(f"{planted[k]:,}" for k in KINDS)
                 + f" | {planted['near_dup']:,} |")  # fmt: skip
    arm = facts["pool"]["arm_rows"]
    lines.append(f"| random (expected) | {arm:,} | "
                 + " | ".join(f"{planted[k] * arm / rows:,.0f}" for k in KINDS) + " | — |")  # fmt: skip
    for view, k in kept.items():
        lines.append(f"| `{view}` | {k['rows']:,} | " + " | ".join(f"{k[kind]:,}" for kind in KINDS)
                     + f" | {k['dup_pairs']:,} |")  # fmt: skip
    lines.append("")
    lines.append("| score | AUROC clean vs swapped | clean vs generic | clean vs near_dup |")
    lines.append("|---|---:|---:|---:|")
    for column, by_kind in facts["auroc"].items():
        lines.append(f"| `{column}` | " + " | ".join(f"{by_kind[k]:.3f}" for k in KINDS[1:]) + " |")
    lines.append("")
    d = facts["dedup"]
    lines.append(
        f"Dedup (threshold {d['threshold']}): teacher image cosine of a planted copy and its original, median "
        f"{d['copy_cosine_median']:.3f} (10th percentile {d['copy_cosine_p10']:.3f}; {d['copies_at_threshold']:.1%} "
        f"at the threshold); a clean row's nearest other row, median {d['clean_nearest_median']:.3f} "
        f"({d['clean_nearest_at_threshold']:.1%} at the threshold)."
    )
    lines.append("")
    lines.append("| rows dedup dropped (kind / the kept row of its group) | rows |")
    lines.append("|---|---:|")
    lines.extend(f"| {key} | {n:,} |" for key, n in d["dropped"].items())
    lines.append("")
    zs = facts["eval_style"]
    lines.append(
        f"Zero-shot: {zs['zero_shot_images']} {zs['style']} images, {len(zs['classes'])} classes (chance "
        f"{1 / len(zs['classes']):.3f}; the largest class is {max(zs['classes'].values()) / zs['zero_shot_images']:.3f}"
        f" of the images); retrieval: {zs['retrieval_pairs']} {zs['style']} pairs (chance R@1 "
        f"{1 / zs['retrieval_pairs']:.3f})."
    )
    lines.append("")
    first = {r["arm"]: r for r in facts["eval"]}
    seconds: dict[str, list[float]] = {}
    for r in facts["eval"]:
        seconds.setdefault(r["arm"], []).append(r["wall_seconds"])
    lines.append("| arm | rows | samples seen | zero-shot top-1 | zero-shot top-5 | i2t R@1 | t2i R@1 | i2t R@5 "
                 "| t2i R@5 | s per seed |")  # fmt: skip
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    trained_rows: dict[tuple[float, ...], str] = {}
    for s in summary:
        row = first[s.arm]
        # A reused arm (the job trains one set of rows once per seed) repeats its twin's rows, timings included.
        key = tuple(r["train_seconds"] for r in facts["eval"] if r["arm"] == s.arm)
        twin = trained_rows.setdefault(key, s.arm)
        if twin != s.arm and s.arm.startswith("random_") and twin.startswith("random_"):
            continue  # every random arm has the arms' common size: one row for them all
        metrics = " | ".join(
            f"{s.mean[m]:.3f} ± {s.std[m]:.3f}"
            for m in ("zero_shot_top1", "zero_shot_top5", "i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5")
        )
        wall = f"(= `{twin}`)" if twin != s.arm else f"{np.mean(seconds[s.arm]):.0f}"
        lines.append(f"| `{s.arm}` | {row['size']:,} | {row['samples_seen']:,} | {metrics} | {wall} |")
    lines.append("")
    lines.append("| phase | seconds |")
    lines.append("|---|---:|")
    lines.extend(f"| {name} | {sec:.0f} |" for name, sec in facts["timings"].items())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
