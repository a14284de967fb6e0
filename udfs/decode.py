"""Raw web bytes to model-ready pixels and captions, with a status instead of an exception.

:func:`decode_image` turns the bytes of one downloaded image into a fully loaded 8-bit RGB
``PIL.Image`` (frame 0, EXIF orientation applied, alpha composited onto white), or says why it
cannot: every failure is one of :data:`IMAGE_STATUSES` plus a short message. :func:`prepare_image`
resizes and crops an RGB image exactly as open_clip's inference transform does, returning a
``(size, size, 3)`` uint8 array. :func:`decode_caption` normalises a caption (UTF-8, whitespace,
control characters, bounded length) with the same status convention (:data:`TEXT_STATUSES`).

Pure Pillow and numpy: no pyspark, no torch, so it runs in any Python worker.
"""

from __future__ import annotations

import functools
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_OK = "ok"
IMAGE_NULL = "null_image"
IMAGE_EMPTY = "empty_image"
IMAGE_NOT_AN_IMAGE = "not_an_image"
IMAGE_TOO_MANY_PIXELS = "too_many_pixels"
IMAGE_TRUNCATED = "truncated_image"
IMAGE_CORRUPT = "corrupt_image"
#: Every status :func:`decode_image` returns.
IMAGE_STATUSES = (
    IMAGE_OK,
    IMAGE_NULL,
    IMAGE_EMPTY,
    IMAGE_NOT_AN_IMAGE,
    IMAGE_TOO_MANY_PIXELS,
    IMAGE_TRUNCATED,
    IMAGE_CORRUPT,
)

TEXT_OK = "ok"
TEXT_NULL = "null_caption"
TEXT_EMPTY = "empty_caption"
TEXT_INVALID_UTF8 = "invalid_utf8"
#: Every status :func:`decode_caption` returns.
TEXT_STATUSES = (TEXT_OK, TEXT_NULL, TEXT_EMPTY, TEXT_INVALID_UTF8)

INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("shortest", "squash", "longest")

_MAX_ERROR_CHARS = 300
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Pillow's EPS plugin runs Ghostscript on the bytes: never on untrusted web data.
_REFUSED_FORMATS = frozenset({"EPS"})
_HIGH_BIT_GRAY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_CONVERTIBLE = frozenset({"1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
# Above this many pixels the exact "shortest" resize (full long side, then crop) is replaced by a
# resize of the crop box only: open_clip would allocate ``size² x aspect`` pixels (gigabytes for a
# 1 x 5000 spacer image), the box resize allocates ``size²``, and differs by at most a few levels.
_MAX_INTERMEDIATE_PIXELS = 1 << 25
_CC_CHARS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
_CONTROL_TO_SPACE = str.maketrans(dict.fromkeys(_CC_CHARS, " "))
# Leading whitespace, control characters and byte order marks (a UTF-8 BOM decodes to U+FEFF).
_LEADING_JUNK = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ufeff]*")


class _UnsupportedModeError(Exception):
    """A decoded image mode that has no defined conversion to 8-bit RGB."""


def _error(prefix: str, exc: BaseException) -> str:
    """``prefix: message (ExceptionType)``, cut to the message budget."""
    kind = type(exc).__name__
    text = " ".join(str(exc).split())
    budget = _MAX_ERROR_CHARS - len(prefix) - len(kind) - 5
    if len(text) > budget:
        text = text[: max(budget - 3, 0)] + "..."
    return f"{prefix}: {text} ({kind})"


@functools.cache
def _open_formats() -> tuple[str, ...]:
    """Every format Pillow can open, less the refused ones (plugins registered on first use)."""
    Image.init()
    return tuple(f for f in Image.ID if f not in _REFUSED_FORMATS)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite an RGBA image onto white, rounding as img2dataset does.

    img2dataset computes ``rint(alpha / 255 * rgb + 255 - alpha)`` in float64. The numerator
    ``rgb * alpha + 255 * (255 - alpha)`` is an integer that is never a tie (255 is odd), so the
    rounded integer division below is equal for all 65536 (value, alpha) pairs, at a quarter of the cost.
    """
    arr = np.asarray(rgba)
    alpha = arr[:, :, 3:4].astype(np.uint16)
    mixed = arr[:, :, :3] * alpha  # <= 65025, and + 255 * (255 - alpha) + 127 stays below 2**16
    mixed += 255 * (255 - alpha) + 127
    return Image.fromarray((mixed // 255).astype(np.uint8), "RGB")


def _gray_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to 8 bits by its value range."""
    arr = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(values.max()) if values.size else 0.0
        scaled = values * 255.0 if top <= 1.0 else values
        gray = np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
    else:
        values16 = arr.astype(np.int64)
        top16 = int(values16.max()) if values16.size else 0
        if img.mode == "I" and top16 <= 255:
            gray = np.clip(values16, 0, 255).astype(np.uint8)
        else:
            # 65535 -> 255 exactly; rounded integer division by 257.
            gray = ((np.clip(values16, 0, 65535) + 128) // 257).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB (alpha onto white, high bit depths by value range).

    Raises:
        _UnsupportedModeError: for a mode with no defined conversion.
    """
    mode = img.mode
    if mode in _HIGH_BIT_GRAY:
        return _gray_to_rgb(img)
    if mode in _ALPHA_MODES or ((mode in _CONVERTIBLE or mode == "RGB") and img.has_transparency_data):
        return _composite_on_white(img if mode == "RGBA" else img.convert("RGBA"))
    if mode == "RGB":
        return img
    if mode in _CONVERTIBLE:
        return img.convert("RGB")
    raise _UnsupportedModeError(f"unsupported image mode {mode!r}")


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as it is."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # any failure inside broken metadata: keep the pixels, drop the rotation
        return img
    return upright if upright is not None else img


def decode_image(data: bytes | None, *, max_pixels: int = 50_000_000) -> tuple[Image.Image | None, str, str | None]:
    """Decode the bytes of one image into a fully loaded 8-bit RGB image, never raising for bad bytes.

    Takes frame 0 of animated images, applies the EXIF orientation (ignoring broken EXIF), scales
    16/32-bit grayscale by its value range and composites anything with alpha onto white. The pixel
    count is checked from the header before any pixel is decoded.

    Args:
        data: The raw bytes (``bytearray``/``memoryview`` accepted), or None.
        max_pixels: Largest ``width * height`` decoded; larger images get ``too_many_pixels``.
            Pillow's own hard limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``) still applies above ours.

    Returns:
        ``(image, status, error)``: an RGB image with no reference to ``data``, ``"ok"`` and None;
        or None, one of :data:`IMAGE_STATUSES` and a short message naming the exception type.

    Raises:
        ValueError: if ``max_pixels`` is not positive.
        TypeError: if ``data`` is not bytes-like or None.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if data is None:
        return None, IMAGE_NULL, "image bytes are null"
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes or None, got {type(data).__name__}")
    if len(data) == 0:
        return None, IMAGE_EMPTY, "image bytes are empty"
    _quiet_pillow()
    return _decode(bytes(data), max_pixels)


def _quiet_pillow() -> None:
    """Once per process: no DecompressionBombWarning (we apply our own pixel limit) and no Pillow
    corrupt-metadata UserWarnings (they would flood worker logs). Installed once, not per call:
    ``warnings.catch_warnings`` swaps process-wide state and is not safe on the decode threads."""
    global _QUIETED
    if not _QUIETED:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\..*)?$")
        _QUIETED = True


_QUIETED = False


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image | None, str, str | None]:
    """Body of :func:`decode_image` for non-empty bytes."""
    try:
        src = Image.open(io.BytesIO(data), formats=_open_formats())
    except UnidentifiedImageError:
        return (
            None,
            IMAGE_NOT_AN_IMAGE,
            f"Pillow cannot identify an image in {len(data)} bytes (UnidentifiedImageError)",
        )
    except Image.DecompressionBombError as exc:
        return None, IMAGE_TOO_MANY_PIXELS, _error("image too large", exc)
    except MemoryError:
        raise
    except Exception as exc:  # broken header: any exception type a plugin raises
        return None, _failure_status(exc), _error("cannot open image", exc)
    with src:
        width, height = src.size
        if width * height > max_pixels:
            return (
                None,
                IMAGE_TOO_MANY_PIXELS,
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            )
        try:
            src.load()
            upright = _exif_upright(src)
            rgb = _to_rgb(upright)
            if rgb is src:
                rgb = src.copy()
            rgb.load()
        except Image.DecompressionBombError as exc:
            return None, IMAGE_TOO_MANY_PIXELS, _error("image too large", exc)
        except _UnsupportedModeError as exc:
            return None, IMAGE_CORRUPT, _error("cannot convert image", exc)
        except MemoryError:
            raise
        except Exception as exc:  # decoder errors come as OSError, SyntaxError, ValueError, struct.error, ...
            return None, _failure_status(exc), _error("cannot decode image", exc)
    return rgb, IMAGE_OK, None


def _failure_status(exc: Exception) -> str:
    """``truncated_image`` for data that ends early, ``corrupt_image`` for anything else."""
    if isinstance(exc, EOFError) or (isinstance(exc, OSError) and "truncated" in str(exc).lower()):
        return IMAGE_TRUNCATED
    return IMAGE_CORRUPT


def _center_crop_or_pad(arr: np.ndarray, size: int) -> np.ndarray:
    """torchvision/open_clip ``center_crop_or_pad`` on an HWC array: pad with 0, then crop.

    Padding puts the odd pixel right/bottom; crop offsets use Python's ``round`` (half to even).
    """
    h, w = arr.shape[:2]
    if size > h or size > w:
        pad_top = (size - h) // 2 if size > h else 0
        pad_left = (size - w) // 2 if size > w else 0
        padded = np.zeros((max(h, size), max(w, size), 3), dtype=np.uint8)
        padded[pad_top : pad_top + h, pad_left : pad_left + w] = arr
        arr = padded
        h, w = arr.shape[:2]
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return arr[top : top + size, left : left + size]


def _resize(img: Image.Image, width: int, height: int, resample: Image.Resampling) -> Image.Image:
    """torchvision's PIL resize: untouched when the size already matches."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), resample)


def prepare_image(
    img: Image.Image, size: int, *, interpolation: str = "bicubic", resize_mode: str = "shortest"
) -> np.ndarray:
    """Resize and crop/pad an image exactly as ``open_clip.image_transform(size, is_train=False)`` does.

    The result equals open_clip's PIL pipeline before ``ToTensor``/``Normalize``, bit for bit:

    - ``shortest``: torchvision ``Resize(size)`` (short side to ``size``, long side
      ``int(size * long / short)``), then ``CenterCrop(size)`` at ``round((h - size) / 2)``.
    - ``squash``: ``Resize((size, size))``.
    - ``longest``: open_clip ``ResizeKeepRatio(longest=1)`` (each side ``round(side / ratio)``),
      then ``CenterCropOrPad(size, fill=0)``: black bars, the odd pixel right/bottom.

    Two departures, both where open_clip itself fails: a side that ``longest`` rounds to 0 is kept
    at 1 pixel (open_clip raises), and a ``shortest`` resize whose full long side would exceed
    ``2**25`` pixels (aspect ratio above ~670 at 224) resizes only the crop box, within a few levels.

    Args:
        img: The image; non-RGB modes are converted as in :func:`decode_image` first.
        size: Output side in pixels.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (Pillow's antialiased filters, as torchvision).
        resize_mode: ``"shortest"``, ``"squash"`` or ``"longest"``.

    Returns:
        ``(size, size, 3)`` uint8 HWC array, ready for ``ToTensor``/``Normalize``.

    Raises:
        ValueError: for an unknown ``interpolation`` or ``resize_mode``, a size below 1, or an image
            mode with no RGB conversion.
    """
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    resample = _RESAMPLE[interpolation]
    try:
        rgb = _to_rgb(img)
    except _UnsupportedModeError as exc:
        raise ValueError(str(exc)) from None
    w, h = rgb.size
    if resize_mode == "squash":
        out = np.asarray(_resize(rgb, size, size, resample))
    elif resize_mode == "longest":
        # open_clip: ratio = max(h/size, w/size) * 1 + min(...) * 0; side = round(side * 1.0 / ratio)
        ratio = max(h / size, w / size)
        new_h, new_w = max(round(h / ratio), 1), max(round(w / ratio), 1)
        out = _center_crop_or_pad(np.asarray(_resize(rgb, new_w, new_h, resample)), size)
    else:
        # torchvision _compute_resized_output_size: the long side truncates, int(size * long / short)
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if new_w * new_h <= _MAX_INTERMEDIATE_PIXELS:
            out = _center_crop_or_pad(np.asarray(_resize(rgb, new_w, new_h, resample)), size)
        else:
            top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
            sx, sy = w / new_w, h / new_h
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
            out = np.asarray(rgb.resize((size, size), resample, box=box))
    # A copy: writable for torch, and no view keeping a large intermediate alive.
    result: np.ndarray = np.array(out, dtype=np.uint8, order="C", copy=True)
    return result


def decode_caption(value: str | bytes | None, *, max_chars: int = 4096) -> tuple[str | None, str, str | None]:
    """Normalise one caption: strict UTF-8, control characters to spaces, whitespace collapsed, bounded.

    Cost is linear in the input and, past the UTF-8 check of bytes, bounded by ``max_chars``: only a
    prefix of ``4 * max_chars`` characters (after leading whitespace) is normalised, so a whitespace
    run longer than ``3 * max_chars`` can end the caption early. A long caption is not a failure: it
    is cut to ``max_chars`` characters (the CLIP tokenizer keeps 77 tokens anyway).

    Args:
        value: The caption as text or UTF-8 bytes, or None. A leading byte order mark is dropped.
        max_chars: Most characters kept.

    Returns:
        ``(caption, status, error)``: the normalised caption, ``"ok"`` and None; or None, one of
        :data:`TEXT_STATUSES` and a short message (for bad UTF-8, the byte offset).

    Raises:
        ValueError: if ``max_chars`` is not positive.
        TypeError: if ``value`` is neither text, bytes-like nor None.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    if value is None:
        return None, TEXT_NULL, "caption is null"
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            text = bytes(value).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            return None, TEXT_INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}: {exc.reason} (UnicodeDecodeError)"
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"value must be str, bytes or None, got {type(value).__name__}")
    junk = _LEADING_JUNK.match(text)
    start = junk.end() if junk else 0
    head = text[start : start + 4 * max_chars]
    caption = " ".join(head.translate(_CONTROL_TO_SPACE).split())[:max_chars].rstrip()
    if not caption:
        return None, TEXT_EMPTY, "caption is empty or only whitespace"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as exc:  # a str holding lone surrogates cannot be written as UTF-8
        return None, TEXT_INVALID_UTF8, f"caption has no UTF-8 form at character {exc.start}: {exc.reason}"
    return caption, TEXT_OK, None
