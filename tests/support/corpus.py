"""Test data for image and caption decoding, built in code or read from Debian packages.

- :func:`broken_image_corpus`: broken and valid-but-odd image bytes with the status
  :func:`clipsift.udfs.decode.decode_image` must give them, generated with Pillow and numpy.
- :func:`tuxpaint_stamps`, :func:`tuxpaint_translations`: real (image, caption) pairs from
  ``tuxpaint-stamps-default`` (about 800 PNG stamps, captions in ~70 languages).
- :func:`skimage_photos`: the sample photos of ``python3-skimage``.

The package readers raise :class:`FileNotFoundError` naming the package to install.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

from clipsift.udfs.decode import (
    IMAGE_CORRUPT,
    IMAGE_EMPTY,
    IMAGE_NOT_AN_IMAGE,
    IMAGE_NULL,
    IMAGE_OK,
    IMAGE_TOO_MANY_PIXELS,
    IMAGE_TRUNCATED,
)

TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
SKIMAGE_DATA_DIR = Path("/usr/lib/python3/dist-packages/skimage/data")
# skimage's deliberately truncated test file is not a photo (the broken corpus has its own).
_SKIMAGE_NOT_PHOTOS = frozenset({"truncated.jpg"})

#: Colours of the two frames of the corpus's animated GIF/PNG/WebP.
FRAME0_RGB = (255, 0, 0)
FRAME1_RGB = (0, 0, 255)
#: The EXIF-rotated JPEG is stored this size (width, height) with orientation 6 (rotate 90° clockwise).
EXIF_STORED_SIZE = (40, 20)


def _encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    """Bytes of ``img`` saved in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth RGB test picture with some noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit all-black PNG of ``width x height``: kilobytes on disk, ``width*height`` pixels decoded.

    Written chunk by chunk (streamed zlib), so building it never allocates the pixels either.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed zero bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _corrupt_idat(png: bytes, *, crc_only: bool) -> bytes:
    """``png`` with its first IDAT's CRC flipped, or with 20 bytes of its zlib stream zeroed."""
    at = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[at - 4 : at])
    out = bytearray(png)
    if crc_only:
        out[at + 4 + length] ^= 0xFF
    else:
        out[at + 4 + 10 : at + 4 + 30] = bytes(20)
    return bytes(out)


def _exif_rotated_jpeg() -> bytes:
    """A JPEG stored ``EXIF_STORED_SIZE`` (left half black, right half white) with EXIF orientation 6."""
    w, h = EXIF_STORED_SIZE
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, w // 2 :] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90° clockwise
    return _encode(Image.fromarray(arr, "RGB"), "JPEG", exif=exif.tobytes(), quality=95)


def _broken_exif_jpeg() -> bytes:
    """A JPEG whose APP1 EXIF block is garbage after a valid ``Exif`` header."""
    return _encode(_photo(32, 24), "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff" + bytes(40))


def _two_frames(fmt: str) -> bytes:
    """An animated image of two solid 16x16 frames, :data:`FRAME0_RGB` then :data:`FRAME1_RGB`."""
    frames = [Image.new("RGB", (16, 16), FRAME0_RGB), Image.new("RGB", (16, 16), FRAME1_RGB)]
    options: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    if fmt == "WEBP":
        options["lossless"] = True
    return _encode(frames[0], fmt, **options)


def gradient16() -> np.ndarray:
    """``(8, 256)`` uint16 horizontal ramp from 0 to 65535 (the 16-bit grayscale corpus image)."""
    return np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))


def rgba_half_transparent() -> np.ndarray:
    """``(8, 8, 4)`` RGBA: left half fully transparent black, right half opaque red."""
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[:, 4:] = (255, 0, 0, 255)
    return arr


def broken_image_corpus() -> list[tuple[str, bytes | None, str]]:
    """Broken and valid-but-odd image bytes, each with the status ``decode_image`` must give.

    Everything is generated here (deterministic seeds, no files). WebP entries appear only when
    Pillow has WebP support.

    Returns:
        ``(name, data, expected_status)`` rows with unique names.
    """
    photo = _photo()
    jpeg = _encode(photo, "JPEG", quality=90)
    png = _encode(photo, "PNG")
    gif = _encode(photo.convert("P"), "GIF")
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    gif_header = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0x81, 0, 0) + bytes(12)  # screen + palette, no frame
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (4, 0, 8, 8))
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    rows: list[tuple[str, bytes | None, str]] = [
        ("null", None, IMAGE_NULL),
        ("empty", b"", IMAGE_EMPTY),
        ("random_bytes", np.random.default_rng(1234).bytes(4096), IMAGE_NOT_AN_IMAGE),
        ("text_file", b"uid,url,caption\n0001,http://example.com/a.jpg,a cat\n" * 20, IMAGE_NOT_AN_IMAGE),
        ("html_page", html, IMAGE_NOT_AN_IMAGE),
        ("png_signature_only", png[:8], IMAGE_NOT_AN_IMAGE),
        ("png_bad_ihdr_crc", png[:29] + bytes([png[29] ^ 0xFF]) + png[30:], IMAGE_NOT_AN_IMAGE),
        ("gif_header_only", gif_header, IMAGE_NOT_AN_IMAGE),
        ("eps_refused", eps, IMAGE_NOT_AN_IMAGE),  # Pillow would hand it to Ghostscript
        ("jpeg_truncated_half", jpeg[: len(jpeg) // 2], IMAGE_TRUNCATED),
        ("jpeg_header_only", jpeg[:200], IMAGE_TRUNCATED),
        ("png_truncated_half", png[: len(png) // 2], IMAGE_TRUNCATED),
        ("gif_truncated", gif[: len(gif) * 2 // 3], IMAGE_TRUNCATED),
        ("bmp_truncated", _encode(photo, "BMP")[:2000], IMAGE_TRUNCATED),
        ("tiff_truncated", _encode(photo, "TIFF")[:2000], IMAGE_TRUNCATED),
        ("png_bad_zlib", _corrupt_idat(png, crc_only=False), IMAGE_CORRUPT),
        # Pillow does not verify IDAT CRCs: the pixels decode.
        ("png_bad_idat_crc", _corrupt_idat(png, crc_only=True), IMAGE_OK),
        ("bomb_png_20000x20000", bomb_png(20_000, 20_000), IMAGE_TOO_MANY_PIXELS),  # over Pillow's own limit
        ("bomb_png_8000x8000", bomb_png(8_000, 8_000), IMAGE_TOO_MANY_PIXELS),  # over ours only (50M)
        ("png_rgb", png, IMAGE_OK),
        ("jpeg_rgb", jpeg, IMAGE_OK),
        ("jpeg_progressive", _encode(photo, "JPEG", progressive=True, quality=85), IMAGE_OK),
        ("jpeg_grayscale", _encode(photo.convert("L"), "JPEG"), IMAGE_OK),
        ("jpeg_cmyk", _encode(cmyk, "JPEG"), IMAGE_OK),
        ("jpeg_exif_rotated", _exif_rotated_jpeg(), IMAGE_OK),
        ("jpeg_broken_exif", _broken_exif_jpeg(), IMAGE_OK),
        ("png_palette_transparent", _encode(palette, "PNG", transparency=0), IMAGE_OK),
        ("png_rgba", _encode(Image.fromarray(rgba_half_transparent(), "RGBA"), "PNG"), IMAGE_OK),
        ("png_la", _encode(photo.convert("LA"), "PNG"), IMAGE_OK),
        ("png_gray16", _encode(Image.fromarray(gradient16()), "PNG"), IMAGE_OK),
        ("png_1bit", _encode(photo.convert("1"), "PNG"), IMAGE_OK),
        ("png_1x1", _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), IMAGE_OK),
        ("png_3000x10", _encode(_photo(3000, 10), "PNG"), IMAGE_OK),
        ("gif_animated", _two_frames("GIF"), IMAGE_OK),
        ("apng_animated", _two_frames("PNG"), IMAGE_OK),
        ("gif_static", gif, IMAGE_OK),
        ("bmp", _encode(photo, "BMP"), IMAGE_OK),
        (
            "tiff_float",
            _encode(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), "TIFF"),
            IMAGE_OK,
        ),
        ("tiff_lab", _encode(Image.new("LAB", (8, 8), (128, 100, 150)), "TIFF"), IMAGE_OK),
    ]
    if features.check("webp"):
        rows += [
            ("webp", _encode(photo, "WEBP", quality=80), IMAGE_OK),
            ("webp_animated", _two_frames("WEBP"), IMAGE_OK),
            ("webp_truncated", _encode(photo, "WEBP", quality=80)[:100], IMAGE_CORRUPT),
        ]
    return rows


def _require(folder: Path, package: str) -> None:
    """Raise FileNotFoundError naming the Debian package when ``folder`` is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: install it with `apt-get install {package}`")


def _stamp_texts(root: Path, limit: int | None) -> list[tuple[str, Path, list[str]]]:
    """``(key, png_path, text_lines)`` of stamps that have a description, sorted by path."""
    _require(root, "tuxpaint-stamps-default")
    out: list[tuple[str, Path, list[str]]] = []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        lines = txt.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            continue
        out.append((png.relative_to(root).with_suffix("").as_posix(), png, lines))
        if limit is not None and len(out) >= limit:
            break
    return out


def tuxpaint_stamps(limit: int | None = None, *, root: Path = TUXPAINT_STAMPS_DIR) -> list[tuple[str, bytes, str]]:
    """Real (image, English caption) pairs: the stamps of Debian's ``tuxpaint-stamps-default``.

    Each ``x.png`` has an ``x.txt`` whose first line is the English caption; stamps without one are
    skipped. Most stamps are RGBA or LA with transparent backgrounds, a few palette.

    Args:
        limit: Return at most this many (the first by path).
        root: The stamps folder.

    Returns:
        ``(key, png_bytes, caption)`` sorted by path; ``key`` is the relative path without suffix,
        e.g. ``"animals/amphibians/frog"``.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    return [(key, png.read_bytes(), lines[0].strip()) for key, png, lines in _stamp_texts(root, limit)]


def tuxpaint_translations(
    limit: int | None = None, *, langs: Collection[str] | None = None, root: Path = TUXPAINT_STAMPS_DIR
) -> list[tuple[str, str, str]]:
    """The translated captions of the tuxpaint stamps (lines ``lang.utf8=text`` after the first).

    Args:
        limit: Read at most this many stamps (the first by path).
        langs: Keep only these language codes (e.g. ``{"de", "ja", "zh_CN", "sr@latin"}``).
        root: The stamps folder.

    Returns:
        ``(key, lang, caption)`` in stamp then file order, empty translations skipped.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    out: list[tuple[str, str, str]] = []
    for key, _, lines in _stamp_texts(root, limit):
        for line in lines[1:]:
            tag, sep, text = line.partition("=")
            lang = tag.removesuffix(".utf8")
            if not sep or lang == tag or not text.strip() or (langs is not None and lang not in langs):
                continue
            out.append((key, lang, text.strip()))
    return out


def skimage_photos(*, root: Path = SKIMAGE_DATA_DIR) -> list[tuple[str, bytes]]:
    """The sample pictures (PNG and JPEG) of Debian's ``python3-skimage``: photos and a few test charts.

    ``truncated.jpg`` (a deliberately broken file) is left out; every other file decodes.

    Args:
        root: skimage's ``data`` folder.

    Returns:
        ``(file_name, raw_bytes)`` sorted by name, e.g. ``astronaut.png``, ``hubble_deep_field.jpg``.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    _require(root, "python3-skimage")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"} and p.is_file())
    return [(p.name, p.read_bytes()) for p in files if p.name not in _SKIMAGE_NOT_PHOTOS]
