"""Deterministic synthetic DataComp-style pool for the demo, tests and benchmarks.

Writes, per shard ``i``, ``{i:05d}.parquet`` and ``{i:05d}.npz`` (same stem, same row order), the
layout of DataComp's metadata (ALGORITHMS.md §5.1):

* parquet columns: ``uid`` (32 lowercase hex chars, ``md5(f"{seed}-{row}")``), ``url``, ``text``,
  ``original_width`` / ``original_height`` (int64), ``clip_b32_similarity_score`` and
  ``clip_l14_similarity_score`` (float32 cosines of the row's own image and caption vectors) and
  ``synthetic_kind`` (what the generator planted, see below).
* npz arrays: ``b32_img`` / ``b32_txt`` (float32, ``(n, dim)``, unit L2 norm) and, with
  ``with_l14=True``, ``l14_img`` / ``l14_txt`` (float32, ``(n, dim_l14)``). Without the l14 arrays
  ``clip_l14_similarity_score`` repeats the b32 cosine, so the column is never null.

Geometry (one independent copy per model, b32 and l14): ``n_concepts`` random unit concept vectors
(orthogonal to the two modality offsets); an image is ``normalize(c + e_img + m_img)``, a caption
``normalize(c' + e_txt + m_txt)``, with isotropic Gaussian noise of fixed norm (independent of the
dimension) and shared modality offsets ``m_img``, ``m_txt`` that are partly aligned. This gives the
CLIP "modality gap": every image-caption pair has a positive baseline cosine, and matched pairs sit
about 0.18 above it. ``synthetic_kind`` values:

* ``clean``: caption of the image's concept.
* ``mismatched``: caption of another, random concept.
* ``generic``: the caption vector is one of ``n_generic_captions`` shared vectors
  ``normalize(w * normalize(mean of half the concepts) + m_txt + small noise)`` with texts such as
  "image", "photo", "click here"; they sit near the centre of the caption cloud, so they have a
  high cosine with *every* image: plain CLIPScore ranks them as high as clean pairs, while
  negCLIPLoss (ALGORITHMS.md §1.3) demotes them.
* ``duplicate``: an exact copy (image and caption vectors, text, width, height) of another
  non-duplicate row of the same shard, with a new uid and url.

Achieved statistics (default spec: 100,000 rows, 4 shards, dim 512, seed 0; cosine of each row's
own image and caption):

==========  =============  =============
kind        b32 mean (sd)  l14 mean (sd)
==========  =============  =============
clean       0.300 (0.037)  0.300 (0.030)
mismatched  0.120 (0.040)  0.120 (0.033)
generic     0.319 (0.029)  0.319 (0.023)
==========  =============  =============

Image-image cosine 0.58 within a concept and 0.40 across; caption-caption 0.13 across. The means
do not depend on the dimension, the spreads scale like ``1/sqrt(dim)`` (dim 64: sd about 0.11).
On one 8,192-row batch (tau 0.01) the CLIPScore top 30% keeps 56% of the generic rows, the
negCLIPLoss top 30% keeps 7%. Generation takes about 3.5 s (8 s with l14) on 2 CPU cores, shard
by shard (peak RSS about 0.35 GB).

Equal texts go with equal caption vectors and vice versa: every clean or mismatched caption carries
its row number, so a text repeats only for generic captions and for duplicated rows (with their
originals).

Everything is a function of the spec: each shard draws from its own ``numpy`` generator seeded by
``(seed, stream, shard)``, so the same spec gives byte-identical npz files (fixed zip timestamps)
and identical parquet contents. Shards are generated one at a time. ``generate_target`` draws
target-set image embeddings with the same concept vectors and offsets.

Command line: ``python -m clipsift.jobs.demo.synth --out DIR`` writes ``DIR/shards/*`` and ``DIR/target.npy``
(and ``DIR/target_l14.npy`` with ``--with-l14``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

__all__ = [
    "KINDS",
    "SynthSpec",
    "concept_vectors",
    "generate_pool",
    "generate_target",
    "main",
]

Arch = Literal["b32", "l14"]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]

KINDS: tuple[str, ...] = ("clean", "mismatched", "generic", "duplicate")
"""The values of the ``synthetic_kind`` column."""

# Geometry, tuned for CLIP ViT-B/32-like cosines (see the module docstring). Norms of the
# unnormalised components; the concept vector has norm 1.
_IMG_NOISE = 1.52  # sqrt(2.31)
_TXT_NOISE = 1.974  # sqrt(3.895)
_IMG_OFFSET = 1.5
_TXT_OFFSET = 0.813
_OFFSET_ALIGNMENT = 0.547  # cosine between the image and the text modality offsets
_GENERIC_CONCEPT_WEIGHT = 0.35
_GENERIC_NOISE = 0.2

_GENERIC_TEXTS: tuple[str, ...] = (
    "image",
    "photo",
    "click here",
    "stock photo",
    "untitled",
    "picture",
    "img",
    "view image",
    "thumbnail",
    "no description",
)
_COLORS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "orange",
    "purple",
    "grey",
    "brown",
)
_THINGS: tuple[str, ...] = (
    "thing",
    "box",
    "chair",
    "tree",
    "car",
    "lamp",
    "book",
    "bicycle",
    "cup",
    "wall",
    "window",
    "dog",
    "table",
    "bottle",
    "flower",
)
_TEMPLATES: tuple[str, ...] = (
    "a photo of concept {k} with a {color} {thing}",
    "concept {k} next to a {color} {thing}",
    "close-up of concept {k} on a {color} {thing}",
    "a picture showing concept {k} and a {color} {thing}",
    "concept {k} in front of a {color} {thing}",
)

# Stream identifiers for the seeded generators.
_STREAM_CONCEPTS = 1
_STREAM_GEOMETRY = 2
_STREAM_LAYOUT = 3
_STREAM_NOISE = 4
_STREAM_TARGET = 5
_ARCH_ID: dict[str, int] = {"b32": 0, "l14": 1}

_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("original_width", pa.int64(), nullable=False),
        pa.field("original_height", pa.int64(), nullable=False),
        pa.field("clip_b32_similarity_score", pa.float32(), nullable=False),
        pa.field("clip_l14_similarity_score", pa.float32(), nullable=False),
        pa.field("synthetic_kind", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. Every output is a deterministic function of these fields.

    Attributes:
        n_rows: Rows in the pool, over all shards.
        n_shards: Number of parquet/npz pairs; rows are split in contiguous order, sizes differ by
            at most one.
        dim: Dimension of the b32 vectors.
        n_concepts: Number of latent concepts (random unit vectors).
        seed: Seed of everything, uids included.
        mismatched_fraction: Share of rows whose caption belongs to another concept.
        generic_fraction: Share of rows whose caption is one of the shared generic captions.
        n_generic_captions: How many distinct generic captions exist.
        duplicate_fraction: Share of rows that exactly copy another row of their shard.
        with_l14: Also write ``l14_img``/``l14_txt`` and a real l14 score column.
        dim_l14: Dimension of the l14 vectors.
    """

    n_rows: int = 100_000
    n_shards: int = 4
    dim: int = 512
    n_concepts: int = 200
    seed: int = 0
    mismatched_fraction: float = 0.15
    generic_fraction: float = 0.02
    n_generic_captions: int = 5
    duplicate_fraction: float = 0.01
    with_l14: bool = False
    dim_l14: int = 768

    def __post_init__(self) -> None:
        if self.n_shards < 1 or self.n_rows < self.n_shards:
            raise ValueError(f"need 1 <= n_shards <= n_rows, got {self.n_shards=}, {self.n_rows=}")
        if self.dim < 4 or self.dim_l14 < 4:
            raise ValueError(f"dimensions must be >= 4, got {self.dim=}, {self.dim_l14=}")
        if self.n_concepts < 2:
            raise ValueError(f"n_concepts must be >= 2, got {self.n_concepts}")
        if self.n_generic_captions < 1:
            raise ValueError(f"n_generic_captions must be >= 1, got {self.n_generic_captions}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        fractions = (self.mismatched_fraction, self.generic_fraction, self.duplicate_fraction)
        if any(not 0.0 <= f <= 1.0 for f in fractions) or sum(fractions) > 1.0:
            raise ValueError(f"fractions must lie in [0, 1] and sum to <= 1, got {fractions}")


@dataclass(frozen=True)
class _Geometry:
    """The fixed vectors of one model: concepts, modality offsets, generic captions."""

    concepts: F32  # (n_concepts, d), unit norm
    img_offset: F32  # (d,)
    txt_offset: F32  # (d,)
    generic: F32  # (n_generic_captions, d), unit norm


@dataclass(frozen=True)
class _Layout:
    """Model-independent content of one shard."""

    kind_code: I64  # index into KINDS
    concept: I64  # image concept
    caption_concept: I64  # concept of the caption (differs for mismatched rows)
    generic_idx: I64  # generic caption index, -1 where not generic
    source: I64  # row within the shard whose content this row shows (itself, or the original)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _normalize(x: F32) -> F32:
    squares: F32 = np.einsum("ij,ij->i", x, x, dtype=np.float32)
    norms = np.sqrt(squares)
    return (x / norms[:, None]).astype(np.float32, copy=False)


def _dims(spec: SynthSpec, arch: Arch) -> int:
    return spec.dim if arch == "b32" else spec.dim_l14


def _geometry(spec: SynthSpec, arch: Arch) -> _Geometry:
    d = _dims(spec, arch)
    arch_id = _ARCH_ID[arch]
    geo = _rng(spec.seed, _STREAM_GEOMETRY, arch_id)
    # Two orthonormal directions span the modality offsets.
    basis, _ = np.linalg.qr(geo.standard_normal((d, 2)))
    u_img, u_other = basis[:, 0], basis[:, 1]
    img_offset = _IMG_OFFSET * u_img
    txt_offset = _TXT_OFFSET * (_OFFSET_ALIGNMENT * u_img + math.sqrt(1.0 - _OFFSET_ALIGNMENT**2) * u_other)
    raw = _rng(spec.seed, _STREAM_CONCEPTS, arch_id).standard_normal((spec.n_concepts, d))
    raw -= (raw @ basis) @ basis.T  # keep concepts off the offset plane: stabler small-dim stats
    concepts = raw / np.linalg.norm(raw, axis=1, keepdims=True)

    generic = np.empty((spec.n_generic_captions, d))
    half = max(1, spec.n_concepts // 2)
    for j in range(spec.n_generic_captions):
        members = geo.choice(spec.n_concepts, size=half, replace=False)
        centre = concepts[members].mean(axis=0)
        centre /= np.linalg.norm(centre)
        noise = geo.standard_normal(d) * (_GENERIC_NOISE / math.sqrt(d))
        generic[j] = _GENERIC_CONCEPT_WEIGHT * centre + txt_offset + noise
    generic /= np.linalg.norm(generic, axis=1, keepdims=True)
    return _Geometry(
        concepts=concepts.astype(np.float32),
        img_offset=img_offset.astype(np.float32),
        txt_offset=txt_offset.astype(np.float32),
        generic=generic.astype(np.float32),
    )


def concept_vectors(spec: SynthSpec) -> np.ndarray:
    """The b32 concept vectors shared by `generate_pool` and `generate_target`.

    Args:
        spec: The pool specification; only ``seed``, ``n_concepts`` and ``dim`` matter.

    Returns:
        float32 array of shape ``(spec.n_concepts, spec.dim)`` with unit-norm rows.
    """
    return _geometry(spec, "b32").concepts


def _shard_bounds(spec: SynthSpec) -> list[tuple[int, int]]:
    base, extra = divmod(spec.n_rows, spec.n_shards)
    bounds, start = [], 0
    for i in range(spec.n_shards):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def _images(rng: np.random.Generator, geo: _Geometry, concept: I64) -> F32:
    d = geo.concepts.shape[1]
    noise = rng.standard_normal((concept.size, d), dtype=np.float32)
    noise *= np.float32(_IMG_NOISE / math.sqrt(d))
    noise += geo.concepts[concept]
    noise += geo.img_offset
    return _normalize(noise)


def _captions(rng: np.random.Generator, geo: _Geometry, concept: I64) -> F32:
    d = geo.concepts.shape[1]
    noise = rng.standard_normal((concept.size, d), dtype=np.float32)
    noise *= np.float32(_TXT_NOISE / math.sqrt(d))
    noise += geo.concepts[concept]
    noise += geo.txt_offset
    return _normalize(noise)


def _layout(spec: SynthSpec, shard: int, n: int) -> tuple[_Layout, np.random.Generator]:
    rng = _rng(spec.seed, _STREAM_LAYOUT, shard)
    n_dup = min(round(spec.duplicate_fraction * n), n - 1)
    n_gen = min(round(spec.generic_fraction * n), n - n_dup)
    n_mis = min(round(spec.mismatched_fraction * n), n - n_dup - n_gen)
    order = rng.permutation(n)
    kind_code = np.zeros(n, dtype=np.int64)
    kind_code[order[:n_dup]] = KINDS.index("duplicate")
    kind_code[order[n_dup : n_dup + n_gen]] = KINDS.index("generic")
    kind_code[order[n_dup + n_gen : n_dup + n_gen + n_mis]] = KINDS.index("mismatched")

    concept = rng.integers(0, spec.n_concepts, size=n)
    shift = rng.integers(1, spec.n_concepts, size=n)
    mismatched = kind_code == KINDS.index("mismatched")
    caption_concept = np.where(mismatched, (concept + shift) % spec.n_concepts, concept)

    generic_idx = np.full(n, -1, dtype=np.int64)
    is_generic = kind_code == KINDS.index("generic")
    generic_idx[is_generic] = rng.integers(0, spec.n_generic_captions, size=int(is_generic.sum()))

    source = np.arange(n, dtype=np.int64)
    is_dup = kind_code == KINDS.index("duplicate")
    originals = np.flatnonzero(~is_dup)
    source[is_dup] = rng.choice(originals, size=int(is_dup.sum()), replace=True)
    # A duplicate shows its original's concept and caption too.
    for arr in (concept, caption_concept, generic_idx):
        arr[is_dup] = arr[source[is_dup]]
    layout = _Layout(kind_code, concept, caption_concept, generic_idx, source)
    return layout, rng


def _embed(spec: SynthSpec, arch: Arch, geo: _Geometry, shard: int, layout: _Layout) -> tuple[F32, F32]:
    rng = _rng(spec.seed, _STREAM_NOISE, _ARCH_ID[arch], shard)
    img = _images(rng, geo, layout.concept)
    txt = _captions(rng, geo, layout.caption_concept)
    is_generic = layout.generic_idx >= 0
    txt[is_generic] = geo.generic[layout.generic_idx[is_generic]]
    img = img[layout.source]
    txt = txt[layout.source]
    return img, txt


def _rowwise_cosine(img: F32, txt: F32) -> F32:
    dots: NDArray[np.float64] = np.einsum("ij,ij->i", img, txt, dtype=np.float64)
    return dots.astype(np.float32)


def _sizes(rng: np.random.Generator, n: int) -> tuple[I64, I64]:
    """Widths/heights: mostly 200-1024 with aspect <= 2; 3% tiny, 3% extreme aspect ratios."""
    u = rng.random(n)
    w = rng.integers(200, 1025, size=n)
    ratio = np.exp(rng.uniform(-math.log(2.0), math.log(2.0), size=n))
    h = np.clip(np.rint(w * ratio), 200, 1024).astype(np.int64)
    tiny = u < 0.03
    w[tiny] = rng.integers(16, 200, size=int(tiny.sum()))
    h[tiny] = rng.integers(16, 400, size=int(tiny.sum()))
    extreme = (u >= 0.03) & (u < 0.06)
    n_ext = int(extreme.sum())
    long_side = rng.integers(600, 2049, size=n_ext)
    short_side = np.maximum(1, np.rint(long_side / rng.uniform(3.2, 8.0, size=n_ext))).astype(np.int64)
    wide = rng.random(n_ext) < 0.5
    w[extreme] = np.where(wide, long_side, short_side)
    h[extreme] = np.where(wide, short_side, long_side)
    return w, h


def _uid(seed: int, row: int) -> str:
    return hashlib.md5(f"{seed}-{row}".encode()).hexdigest()


def _generic_text(j: int) -> str:
    base = _GENERIC_TEXTS[j % len(_GENERIC_TEXTS)]
    return base if j < len(_GENERIC_TEXTS) else f"{base} {j // len(_GENERIC_TEXTS)}"


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like ``np.savez`` but with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _write_shard(
    spec: SynthSpec,
    shard: int,
    bounds: tuple[int, int],
    geos: Mapping[str, _Geometry],
    out_dir: Path,
) -> Path:
    start, stop = bounds
    n = stop - start
    layout, rng = _layout(spec, shard, n)
    template = rng.integers(0, len(_TEMPLATES), size=n)
    color = rng.integers(0, len(_COLORS), size=n)
    thing = rng.integers(0, len(_THINGS), size=n)
    width, height = _sizes(rng, n)

    rows = range(start, stop)
    uids = [_uid(spec.seed, r) for r in rows]
    texts = []
    for i in range(n):
        src = int(layout.source[i])
        g = int(layout.generic_idx[src])
        if g >= 0:
            texts.append(_generic_text(g))
        else:
            caption = _TEMPLATES[template[src]].format(
                k=int(layout.caption_concept[src]),
                color=_COLORS[color[src]],
                thing=_THINGS[thing[src]],
            )
            texts.append(f"{caption}, item {start + src}")
    urls = [
        f"https://img{r % 8}.example.com/c{int(layout.concept[i])}/{uid[:16]}.jpg"
        for i, (r, uid) in enumerate(zip(rows, uids, strict=True))
    ]
    width, height = width[layout.source], height[layout.source]

    arrays: dict[str, np.ndarray] = {}
    b32_img, b32_txt = _embed(spec, "b32", geos["b32"], shard, layout)
    arrays["b32_img"], arrays["b32_txt"] = b32_img, b32_txt
    b32_score = _rowwise_cosine(b32_img, b32_txt)
    l14_score = b32_score
    if spec.with_l14:
        l14_img, l14_txt = _embed(spec, "l14", geos["l14"], shard, layout)
        arrays["l14_img"], arrays["l14_txt"] = l14_img, l14_txt
        l14_score = _rowwise_cosine(l14_img, l14_txt)

    stem = f"{shard:05d}"
    _write_npz(out_dir / f"{stem}.npz", arrays)
    table = pa.Table.from_arrays(
        [
            pa.array(uids, pa.string()),
            pa.array(urls, pa.string()),
            pa.array(texts, pa.string()),
            pa.array(width, pa.int64()),
            pa.array(height, pa.int64()),
            pa.array(b32_score, pa.float32()),
            pa.array(l14_score, pa.float32()),
            pa.array([KINDS[k] for k in layout.kind_code], pa.string()),
        ],
        schema=_SCHEMA,
    )
    path = out_dir / f"{stem}.parquet"
    pq.write_table(table, path)
    return path


def generate_pool(out_dir: str | Path, spec: SynthSpec = SynthSpec()) -> list[Path]:
    """Write a synthetic DataComp-style pool, one shard at a time.

    Args:
        out_dir: Directory to write into (created if missing). Existing shard files with the same
            names are overwritten.
        spec: What to generate.

    Returns:
        The parquet paths ``out_dir/{i:05d}.parquet``, in shard order; each has an ``.npz`` with
        the same stem and row order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geos = {"b32": _geometry(spec, "b32")}
    if spec.with_l14:
        geos["l14"] = _geometry(spec, "l14")
    return [_write_shard(spec, shard, bounds, geos, out) for shard, bounds in enumerate(_shard_bounds(spec))]


def generate_target(
    out_path: str | Path,
    *,
    n_rows: int,
    spec: SynthSpec = SynthSpec(),
    concepts: Sequence[int] | None = None,
    seed: int = 1,
    arch: Arch = "b32",
) -> Path:
    """Write image embeddings of a target distribution concentrated on a few concepts.

    The images are drawn like the pool's images (same concept vectors and image offset for the
    same ``spec.seed``), with concepts uniform over ``concepts``, so NormSim against them favours
    pool rows of those concepts.

    Args:
        out_path: Path of the ``.npy`` file to write (parent directories are created).
        n_rows: Number of target embeddings.
        spec: The pool's specification (``seed``, ``n_concepts``, ``dim``/``dim_l14`` matter).
        concepts: Concept ids to draw from; default the first 10% (at least one).
        seed: Seed of the target draw, independent of the pool's rows.
        arch: ``"b32"`` for ``(n_rows, spec.dim)`` vectors, ``"l14"`` for ``spec.dim_l14``.

    Returns:
        ``out_path`` as a `Path`; the file holds float32 unit-norm rows.

    Raises:
        ValueError: If ``n_rows`` < 1, or ``concepts`` is empty or out of range.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    chosen = (
        np.arange(max(1, spec.n_concepts // 10), dtype=np.int64)
        if concepts is None
        else np.asarray(list(concepts), dtype=np.int64)
    )
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= spec.n_concepts:
        raise ValueError(f"concepts must be non-empty ids in [0, {spec.n_concepts})")
    geo = _geometry(spec, arch)
    rng = _rng(spec.seed, _STREAM_TARGET, _ARCH_ID[arch], seed)
    concept = chosen[rng.integers(0, chosen.size, size=n_rows)]
    images = _images(rng, geo, concept)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, images)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write ``OUT/shards/*`` and ``OUT/target.npy``; print a one-line summary.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        Process exit status (0).
    """
    defaults = SynthSpec()
    parser = argparse.ArgumentParser(
        prog="python -m clipsift.jobs.demo.synth", description="Write a synthetic DataComp-style pool."
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--rows", type=int, default=defaults.n_rows, help="pool rows")
    parser.add_argument("--shards", type=int, default=defaults.n_shards, help="number of shards")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="b32 embedding dimension")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of everything")
    parser.add_argument("--target-rows", type=int, default=2000, help="target embeddings to write (0: none)")
    parser.add_argument("--with-l14", action="store_true", help="also write 768-d l14 arrays (and target_l14.npy)")
    args = parser.parse_args(argv)
    spec = SynthSpec(
        n_rows=args.rows,
        n_shards=args.shards,
        dim=args.dim,
        seed=args.seed,
        with_l14=args.with_l14,
    )
    t0 = time.perf_counter()
    shards_dir = args.out / "shards"
    paths = generate_pool(shards_dir, spec)
    target_note = "no target"
    if args.target_rows > 0:
        target = generate_target(args.out / "target.npy", n_rows=args.target_rows, spec=spec)
        target_note = f"target {args.target_rows} rows -> {target}"
        if spec.with_l14:
            generate_target(args.out / "target_l14.npy", n_rows=args.target_rows, spec=spec, arch="l14")
    print(
        f"synth: {spec.n_rows} rows in {len(paths)} shards -> {shards_dir} "
        f"(dim {spec.dim}, l14 {'yes' if spec.with_l14 else 'no'}, seed {spec.seed}); "
        f"{target_note}; {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
