"""Unit tests for ``clipsift.udfs.decode``: image and caption decoding, and the open_clip-exact resize (no Spark).

Image bytes come from ``tests.support.corpus`` (generated broken and odd files, tuxpaint stamps,
skimage photos). ``prepare_image`` is compared bit for bit with open_clip's own inference transform
where torch and open_clip are installed.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

import clipsift.udfs.decode as decode_mod
from clipsift.udfs.decode import (
    IMAGE_CORRUPT,
    IMAGE_OK,
    IMAGE_STATUSES,
    IMAGE_TOO_MANY_PIXELS,
    IMAGE_TRUNCATED,
    TEXT_EMPTY,
    TEXT_INVALID_UTF8,
    TEXT_NULL,
    TEXT_OK,
    TEXT_STATUSES,
    decode_caption,
    decode_image,
    prepare_image,
)
from tests.support.corpus import (
    EXIF_STORED_SIZE,
    FRAME0_RGB,
    bomb_png,
    broken_image_corpus,
    gradient16,
    rgba_half_transparent,
    skimage_photos,
    tuxpaint_stamps,
    tuxpaint_translations,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = broken_image_corpus()
CORPUS_BYTES = {name: data for name, data, _ in CORPUS if data is not None}
OK_BYTES = [data for _, data, status in CORPUS if status == IMAGE_OK and data is not None]


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _decoded(name: str) -> np.ndarray:
    img, status, error = decode_image(CORPUS_BYTES[name])
    assert status == IMAGE_OK, error
    assert img is not None
    return np.asarray(img)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# decode_image: the corpus
# --------------------------------------------------------------------------------------------


def test_decode_module_imports_neither_spark_nor_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = (
        "import sys, clipsift.udfs.decode; "
        "print([m for m in ('pyspark', 'torch', 'torchvision') if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_corpus_covers_every_status_with_unique_names() -> None:
    names = [name for name, _, _ in CORPUS]
    assert len(names) == len(set(names))
    assert {status for _, _, status in CORPUS} == set(IMAGE_STATUSES)


@pytest.mark.parametrize(("name", "data", "expected"), CORPUS, ids=[name for name, _, _ in CORPUS])
def test_corpus_entry_gets_its_status(name: str, data: bytes | None, expected: str) -> None:
    img, status, error = decode_image(data)
    assert status == expected, error
    if status == IMAGE_OK:
        assert error is None
        assert img is not None and img.mode == "RGB"
        assert not isinstance(img, ImageFile.ImageFile), "a lazy ImageFile still reads from the BytesIO"
        assert np.asarray(img).shape == (img.height, img.width, 3)
    else:
        assert img is None
        assert isinstance(error, str) and 0 < len(error) <= 300
        if status in (IMAGE_TRUNCATED, IMAGE_CORRUPT):
            assert error.endswith("Error)"), error  # the exception type closes the message


def test_alpha_is_composited_onto_white() -> None:
    rgba = _decoded("png_rgba")
    assert (rgba[:, :4] == 255).all()  # fully transparent black -> white
    assert (rgba[:, 4:] == (255, 0, 0)).all()
    palette = _decoded("png_palette_transparent")
    assert (palette[:, :4] == 255).all() and (palette[:, 4:] == (0, 255, 0)).all()


def test_partial_alpha_matches_img2dataset_for_every_value_and_alpha() -> None:
    value, alpha = np.meshgrid(np.arange(256), np.arange(256))
    arr = np.stack([value, 255 - value, value // 2, alpha], axis=-1).astype(np.uint8)
    img, status, _ = decode_image(_encode(Image.fromarray(arr, "RGBA")))
    assert status == IMAGE_OK and img is not None
    # img2dataset resizer.py: img = alpha / 255 * img[..., :3] + 255 - alpha; np.rint(img.clip(0, 255))
    a = arr[:, :, 3:4]
    expected = np.rint((a / 255 * arr[..., :3] + 255 - a).clip(min=0, max=255)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_gray_alpha_is_composited_onto_white() -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (0, 255))
    img, status, _ = decode_image(_encode(la))
    assert status == IMAGE_OK and img is not None
    assert np.asarray(img).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_gray16_keeps_its_contrast() -> None:
    assert Image.open(io.BytesIO(CORPUS_BYTES["png_gray16"])).mode == "I;16"
    row = _decoded("png_gray16")[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    assert len(np.unique(row)) >= 200
    np.testing.assert_array_equal(row, np.rint(gradient16()[0] / 257.0).astype(int))


RAMP16 = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(1, 256)
HIGH_BIT_CASES: dict[str, tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] = {
    "I;16": (RAMP16, lambda r: np.rint(r / 257.0)),
    "I;16B": (RAMP16.astype(">u2"), lambda r: np.rint(r / 257.0)),
    "I_16bit_values": (RAMP16.astype(np.int32), lambda r: np.rint(r / 257.0)),
    "I_8bit_values": ((RAMP16 // 257).astype(np.int32), lambda r: r),
    "F_unit_range": ((RAMP16 / 65535.0).astype(np.float32), lambda r: np.rint(r * 255.0)),
    "F_byte_range": ((RAMP16 / 257.0).astype(np.float32), lambda r: np.rint(r)),
}


@pytest.mark.parametrize("case", sorted(HIGH_BIT_CASES))
def test_high_bit_depth_gray_is_scaled_by_value_range(case: str) -> None:
    values, expected = HIGH_BIT_CASES[case]
    img, status, error = decode_image(_encode(Image.fromarray(values), "TIFF"))
    assert status == IMAGE_OK, error
    assert img is not None
    got = np.asarray(img)[0, :, 0].astype(np.float64)
    np.testing.assert_allclose(got, np.clip(expected(values[0].astype(np.float64)), 0, 255), atol=1)
    assert got[0] == 0 and got[-1] == 255


def test_exif_orientation_is_applied() -> None:
    arr = _decoded("jpeg_exif_rotated")
    w, h = EXIF_STORED_SIZE
    assert arr.shape == (w, h, 3)  # 90° rotation swaps width and height
    assert arr[: w // 2 - 4].max() < 40 and arr[w // 2 + 4 :].min() > 215  # stored left (black) is now on top


def test_broken_exif_keeps_the_unrotated_image(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Image.Image:
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    img, status, error = decode_image(CORPUS_BYTES["jpeg_exif_rotated"])
    assert status == IMAGE_OK, error
    assert img is not None and img.size == EXIF_STORED_SIZE
    assert not isinstance(img, ImageFile.ImageFile), "the un-rotated image must still be a detached copy"


@pytest.mark.parametrize("name", [n for n in ("gif_animated", "apng_animated", "webp_animated") if n in CORPUS_BYTES])
def test_animated_image_gives_frame_zero(name: str) -> None:
    arr = _decoded(name)
    assert (arr == FRAME0_RGB).all()


def test_bomb_is_rejected_from_the_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        loads.append(f"{self.format} {self.size}")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    for name in ("bomb_png_20000x20000", "bomb_png_8000x8000"):
        img, status, error = decode_image(CORPUS_BYTES[name])
        assert (img, status) == (None, IMAGE_TOO_MANY_PIXELS), error
    assert loads == []
    _, status, _ = decode_image(bomb_png(64, 64))
    assert status == IMAGE_OK and loads and set(loads) == {"PNG (64, 64)"}  # the spy does see real decodes


def test_max_pixels_is_an_inclusive_limit() -> None:
    data = _encode(Image.new("RGB", (100, 100)))
    assert decode_image(data, max_pixels=10_000)[1] == IMAGE_OK
    img, status, error = decode_image(data, max_pixels=9_999)
    assert (img, status) == (None, IMAGE_TOO_MANY_PIXELS)
    assert error is not None and "100x100" in error and "9999" in error
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(data, max_pixels=0)


def test_unsupported_mode_is_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_mod, "_CONVERTIBLE", frozenset())
    img, status, error = decode_image(CORPUS_BYTES["jpeg_grayscale"])
    assert (img, status) == (None, IMAGE_CORRUPT)
    assert error is not None and "'L'" in error


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError("image file is truncated (3 bytes not processed)"), IMAGE_TRUNCATED),
        (OSError("Truncated File Read"), IMAGE_TRUNCATED),
        (EOFError("no more data"), IMAGE_TRUNCATED),
        (OSError("broken data stream when reading image file"), IMAGE_CORRUPT),
        (SyntaxError("not a PNG file"), IMAGE_CORRUPT),
        (ValueError("tile cannot extend outside image"), IMAGE_CORRUPT),
        (struct.error("unpack requires a buffer of 4 bytes"), IMAGE_CORRUPT),
        (IndexError("list index out of range"), IMAGE_CORRUPT),
        (Image.DecompressionBombError("Image size (1 pixels) exceeds limit"), IMAGE_TOO_MANY_PIXELS),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_decoder_exceptions_map_to_statuses(monkeypatch: pytest.MonkeyPatch, exc: Exception, expected: str) -> None:
    def failing_load(self: ImageFile.ImageFile) -> Any:
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    img, status, error = decode_image(CORPUS_BYTES["png_rgb"])
    assert (img, status) == (None, expected)
    assert error is not None and type(exc).__name__ in error and len(error) <= 300


def test_long_exception_messages_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_load(self: ImageFile.ImageFile) -> Any:
        raise ValueError("x" * 10_000)

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    _, status, error = decode_image(CORPUS_BYTES["png_rgb"])
    assert status == IMAGE_CORRUPT and error is not None
    assert len(error) <= 300 and error.endswith("(ValueError)")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_decode_image_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    img, status, error = decode_image(data, max_pixels=1_000_000)
    assert status in IMAGE_STATUSES
    assert (img is not None) == (status == IMAGE_OK) == (error is None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(OK_BYTES),
    cut=st.floats(0.0, 1.0),
    at=st.floats(0.0, 1.0),
    junk=st.binary(min_size=1, max_size=16),
)
def test_decode_image_never_raises_on_damaged_images(source: bytes, cut: float, at: float, junk: bytes) -> None:
    pos = int(at * len(source))
    damaged = (source[:pos] + junk + source[pos + len(junk) :])[: max(1, int(cut * len(source)) + 1)]
    img, status, _ = decode_image(damaged, max_pixels=1_000_000)
    assert status in IMAGE_STATUSES
    assert img is None or img.mode == "RGB"


def test_decode_image_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        decode_image("not bytes")  # type: ignore[arg-type]
    for wrapped in (bytearray(CORPUS_BYTES["png_1x1"]), memoryview(CORPUS_BYTES["png_1x1"])):
        assert decode_image(cast(bytes, wrapped))[1] == IMAGE_OK  # Arrow buffers are bytes-like too


# --------------------------------------------------------------------------------------------
# real data from Debian packages
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stamps() -> list[tuple[str, bytes, str]]:
    try:
        return tuxpaint_stamps()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    try:
        return dict(skimage_photos())
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_tuxpaint_stamps_all_decode_with_captions(stamps: list[tuple[str, bytes, str]]) -> None:
    assert len(stamps) > 700
    keys = [key for key, _, _ in stamps]
    assert keys == sorted(keys, key=lambda k: f"{k}.png") and len(set(keys)) == len(keys)  # sorted by path
    modes = set()
    for key, data, caption in stamps:
        modes.add(Image.open(io.BytesIO(data)).mode)
        img, status, error = decode_image(data)
        assert status == IMAGE_OK, f"{key}: {error}"
        assert img is not None and img.mode == "RGB"
        text, text_status, _ = decode_caption(caption)
        assert text_status == TEXT_OK and text == caption, key
    assert {"RGBA", "LA", "P"} <= modes
    assert dict((k, c) for k, _, c in stamps)["animals/amphibians/frog-1"] == "A frog."


def test_tuxpaint_translations_round_trip(stamps: list[tuple[str, bytes, str]]) -> None:
    rows = tuxpaint_translations(limit=20)
    assert ("animals/amphibians/frog-1", "ja", "カエル") in rows
    assert {lang for _, lang, _ in rows} >= {"de", "ru", "zh_CN", "sr@latin", "hi"}
    for key, lang, caption in rows:
        text, status, _ = decode_caption(caption.encode("utf-8"))
        # e.g. drake.txt's Latvian line holds U+0093, a cp1252 quote decoded as a C1 control
        visible = "".join(" " if unicodedata.category(c) == "Cc" else c for c in caption)
        assert status == TEXT_OK and text == " ".join(visible.split()), (key, lang)
    assert {lang for _, lang, _ in tuxpaint_translations(limit=5, langs={"fr"})} == {"fr"}


def test_skimage_photos_all_decode(photos: dict[str, bytes]) -> None:
    assert {"astronaut.png", "chelsea.png", "coffee.png", "camera.png", "hubble_deep_field.jpg"} <= set(photos)
    assert list(photos) == sorted(photos) and "truncated.jpg" not in photos
    for name, data in photos.items():
        _, status, error = decode_image(data)
        assert status == IMAGE_OK, f"{name}: {error}"


def test_package_readers_name_the_package_when_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install tuxpaint-stamps-default"):
        tuxpaint_stamps(root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="apt-get install tuxpaint-stamps-default"):
        tuxpaint_translations(root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="apt-get install python3-skimage"):
        skimage_photos(root=tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# prepare_image: bit-identical to open_clip's inference transform
# --------------------------------------------------------------------------------------------

PHOTO_NAMES = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg")
STAMP_KEYS = ("animals/amphibians/frog-1", "animals/mammals/bovines/goat")
# (width, height): 225x224 and 229x224 crop at offsets 0.5 -> 0 and 2.5 -> 2 (round half to even);
# 448x225 "longest" scales 225 to 112.5 -> 112.
ODD_SIZES = ((1, 1), (3000, 10), (10, 600), (224, 224), (225, 223), (225, 224), (229, 224), (448, 225), (31, 33))
MODES = ("shortest", "squash", "longest")
INTERPOLATIONS = ("bicubic", "bilinear")


@pytest.fixture(scope="module")
def open_clip_module() -> Any:
    return pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def reference_images(photos: dict[str, bytes], stamps: list[tuple[str, bytes, str]]) -> dict[str, Image.Image]:
    images: dict[str, Image.Image] = {}
    stamp_bytes = {key: data for key, data, _ in stamps}
    for name, data in [*((n, photos[n]) for n in PHOTO_NAMES), *((k, stamp_bytes[k]) for k in STAMP_KEYS)]:
        img, _, error = decode_image(data)
        assert img is not None, error
        images[name] = img
    for i, (w, h) in enumerate(ODD_SIZES):
        images[f"noise_{w}x{h}"] = _noise(w, h, seed=i)
    return images


def _open_clip_transform(open_clip: Any, size: int, interpolation: str, resize_mode: str) -> Any:
    cfg = open_clip.transform.PreprocessCfg(size=size, interpolation=interpolation, resize_mode=resize_mode)
    return open_clip.transform.image_transform_v2(cfg, is_train=False)


def _assert_matches_open_clip(open_clip: Any, img: Image.Image, size: int, interpolation: str, mode: str) -> None:
    from torchvision.transforms import Normalize, ToTensor

    transform = _open_clip_transform(open_clip, size, interpolation, mode)
    ours = prepare_image(img, size, interpolation=interpolation, resize_mode=mode)
    assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
    # open_clip's Compose, one step at a time: the PIL geometry steps first, for a readable pixel
    # diff, then MaybeConvertMode/MaybeToTensor/Normalize (the rest of ``transform(img)``).
    theirs = img
    for step in transform.transforms[:-3]:
        theirs = step(theirs)
    np.testing.assert_array_equal(ours, np.asarray(theirs))
    expected: Any = theirs
    for step in transform.transforms[-3:]:
        expected = step(expected)
    normalize = transform.transforms[-1]
    assert isinstance(normalize, Normalize)
    got = normalize(ToTensor()(ours))
    assert got.shape == expected.shape and bool((got == expected).all())


def _longest_side_rounds_to_zero(w: int, h: int, size: int) -> bool:
    ratio = max(w / size, h / size)
    return min(round(w / ratio), round(h / ratio)) == 0


@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("resize_mode", MODES)
def test_prepare_image_is_bit_identical_to_open_clip(
    open_clip_module: Any, reference_images: dict[str, Image.Image], size: int, interpolation: str, resize_mode: str
) -> None:
    checked = 0
    for name, img in reference_images.items():
        if resize_mode == "longest" and _longest_side_rounds_to_zero(*img.size, size):
            continue  # open_clip raises there; see test_longest_keeps_one_pixel_where_open_clip_fails
        try:
            _assert_matches_open_clip(open_clip_module, img, size, interpolation, resize_mode)
        except AssertionError as exc:
            raise AssertionError(f"{name} {img.size}: {exc}") from None
        checked += 1
    assert checked >= len(reference_images) - 2


def test_prepare_image_defaults_are_open_clips_defaults(
    open_clip_module: Any, reference_images: dict[str, Image.Image]
) -> None:
    from torchvision.transforms import Normalize, ToTensor

    transform = open_clip_module.image_transform(224, is_train=False)
    normalize = transform.transforms[-1]
    assert isinstance(normalize, Normalize)
    for name in ("chelsea.png", "noise_225x224", "noise_3000x10"):
        img = reference_images[name]
        assert bool((normalize(ToTensor()(prepare_image(img, 224))) == transform(img)).all()), name


def test_longest_keeps_one_pixel_where_open_clip_fails(open_clip_module: Any) -> None:
    img = _noise(3000, 10)
    with pytest.raises(ValueError, match="height and width must be > 0"):
        _open_clip_transform(open_clip_module, 32, "bicubic", "longest")(img)
    out = prepare_image(img, 32, resize_mode="longest")
    assert out.shape == (32, 32, 3)
    nonblack_rows = np.flatnonzero(out.any(axis=(1, 2)))
    assert nonblack_rows.tolist() == [15]  # a 32x1 strip, padded 15 above and 16 below


def test_prepare_image_converts_non_rgb_like_decode_image() -> None:
    rgba = Image.fromarray(rgba_half_transparent(), "RGBA")
    decoded, status, _ = decode_image(_encode(rgba))
    assert status == IMAGE_OK and decoded is not None
    np.testing.assert_array_equal(prepare_image(rgba, 16), prepare_image(decoded, 16))
    assert (prepare_image(rgba, 8, resize_mode="squash")[:, :4] == 255).all()


def test_prepare_image_rejects_bad_arguments() -> None:
    img = _noise(8, 8)
    with pytest.raises(ValueError, match="interpolation"):
        prepare_image(img, 8, interpolation="nearest")
    with pytest.raises(ValueError, match="resize_mode"):
        prepare_image(img, 8, resize_mode="crop")
    with pytest.raises(ValueError, match="size"):
        prepare_image(img, 0)
    with pytest.raises(ValueError, match="'La'"):
        prepare_image(Image.new("La", (4, 4)), 8)


def test_extreme_aspect_ratio_never_builds_the_huge_intermediate(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        sizes.append(tuple(size))  # type: ignore[arg-type]
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = prepare_image(_noise(5000, 1), 224)  # exact open_clip: a 1_120_000 x 224 intermediate
    assert out.shape == (224, 224, 3)
    assert sizes and max(w * h for w, h in sizes) <= decode_mod._MAX_INTERMEDIATE_PIXELS


def test_crop_box_fallback_stays_within_two_levels_of_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    img = _noise(1500, 40, seed=5)
    exact = prepare_image(img, 224)
    monkeypatch.setattr(decode_mod, "_MAX_INTERMEDIATE_PIXELS", 1000)
    approx = prepare_image(img, 224)
    assert approx.shape == exact.shape
    assert np.abs(approx.astype(int) - exact.astype(int)).max() <= 2


# --------------------------------------------------------------------------------------------
# decode_caption
# --------------------------------------------------------------------------------------------


def test_null_and_blank_captions() -> None:
    assert decode_caption(None) == (None, TEXT_NULL, "caption is null")
    for blank in ("", "   ", "\t\n\r ", b"", b"  \n", "\x00\x00", "\u3000\u2028\xa0", b"\xef\xbb\xbf "):
        text, status, error = decode_caption(blank)
        assert (text, status) == (None, TEXT_EMPTY), repr(blank)
        assert error


@pytest.mark.parametrize(
    ("raw", "offset"),
    [(b"\xff\xfe caption", 0), (b"ok \xe2\x82", 3), (b"\xef\xbb\xbfab\xff", 5), (b"caf\xe9", 3)],
)
def test_invalid_utf8_reports_the_byte_offset(raw: bytes, offset: int) -> None:
    text, status, error = decode_caption(raw)
    assert (text, status) == (None, TEXT_INVALID_UTF8)
    assert error is not None and f"byte {offset}:" in error


def test_bom_is_dropped() -> None:
    assert decode_caption(b"\xef\xbb\xbfA cat") == ("A cat", TEXT_OK, None)
    assert decode_caption("\ufeffA cat") == ("A cat", TEXT_OK, None)


def test_whitespace_and_control_characters_become_single_spaces() -> None:
    assert decode_caption("  a \t\n b  ")[0] == "a b"
    assert decode_caption("a\x00b\x07c\x7fd\x85e\x9bf")[0] == "a b c d e f"
    assert decode_caption("\x1b[31mred\x1b[0m")[0] == "[31mred [0m"
    assert decode_caption("\u3000a\u2028b\xa0c\r\n")[0] == "a b c"


@pytest.mark.parametrize(
    "caption",
    [
        "カエルが池で泳いでいる",
        "قطة سوداء على الأريكة",
        "एक भारतीय हिरण",
        "Лягушка на листе",
        "กบ.",
        "ᓂᕐᓕᓇᐅᔭᖅ",
        "Slleq̓wqín̓ e\u0301",
        "🐸 frog 🇯🇵",
    ],
)
def test_non_latin_scripts_round_trip(caption: str) -> None:
    assert decode_caption(caption) == (caption, TEXT_OK, None)
    assert decode_caption(caption.encode("utf-8")) == (caption, TEXT_OK, None)


def test_long_captions_are_cut_not_failed() -> None:
    assert decode_caption("ab cd", max_chars=3)[0] == "ab"  # the cut never leaves a trailing space
    text, status, error = decode_caption("a" * 5000, max_chars=4096)
    assert status == TEXT_OK and error is None and text == "a" * 4096


@pytest.mark.parametrize(
    "make",
    [
        lambda: "word " * 1_000_000,
        lambda: ("word " * 1_000_000).encode("utf-8"),
        lambda: " " * 5_000_000 + "x",
        lambda: "\u3000" * 5_000_000 + "x",
        lambda: "\x00" * 5_000_000 + "x",
        lambda: "x" * 5_000_000,
    ],
    ids=["words", "words_bytes", "spaces_then_x", "ideographic_spaces_then_x", "nuls_then_x", "one_long_word"],
)
def test_five_megabyte_caption_is_cut_to_max_chars(make: Callable[[], str | bytes]) -> None:
    value = make()
    text, status, _ = decode_caption(value, max_chars=4096)
    assert status == TEXT_OK and text is not None
    assert len(text) == 4096 or text == "x"


def test_caption_cost_is_bounded_by_max_chars_not_input_size() -> None:
    value = "word " * 10_000_000  # 50 M characters; a pass over all of them would show as a slow suite
    text, status, _ = decode_caption(value, max_chars=100)
    assert status == TEXT_OK and text == ("word " * 20).strip()


def test_lone_surrogates_are_invalid_utf8() -> None:
    text, status, error = decode_caption("a\ud800b")
    assert (text, status) == (None, TEXT_INVALID_UTF8) and error


def test_decode_caption_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="str, bytes or None"):
        decode_caption(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        decode_caption("a", max_chars=0)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.none(), st.text(), st.binary()), max_chars=st.integers(1, 64))
def test_decode_caption_properties(value: str | bytes | None, max_chars: int) -> None:
    text, status, error = decode_caption(value, max_chars=max_chars)
    assert status in TEXT_STATUSES
    assert (text is not None) == (status == TEXT_OK) == (error is None)
    if text is not None:
        assert 0 < len(text) <= max_chars
        assert text == text.strip() and "  " not in text
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)
        assert decode_caption(text, max_chars=max_chars) == (text, TEXT_OK, None)  # idempotent
