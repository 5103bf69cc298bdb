"""Client bytes -> a checked RGB `PIL.Image`, or an error (`engine_errors.py`) naming the problem.

Run in a thread pool (decoding is CPU work). The order of checks matters:
1. size in bytes, then the format, from the header only (`Image.open` is lazy);
2. width x height against the pixel limit *before* any pixel is decoded (a 40-byte PNG
   can claim 100k x 100k: a decompression bomb);
3. decode, first frame only; a truncated file is an error, never half an image;
4. EXIF orientation, then every mode (palette, alpha, CMYK, 16-bit, grey...) to RGB.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .engine_errors import InvalidImage, TooLarge, UnsupportedImage

# Raster formats we accept. Pillow can open more (EPS runs Ghostscript, for one); an
# explicit list keeps the attack surface to the common, well-fuzzed decoders. (JPEG's
# opener also yields multi-picture "MPO" files; AVIF only where Pillow was built with it.)
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)
_DATA_URL = re.compile(r"^data:([\w.+/-]*)((?:;[\w=.+-]+)*?)(;base64)?,", re.IGNORECASE)
_BASE64_CHARS = re.compile(rb"^[A-Za-z0-9+/_-]*={0,2}$")
_BMP_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)  # the DIB header variants


@dataclass(frozen=True)
class ImageLimits:
    """What one client image may weigh: bytes, and width x height before decoding."""

    max_bytes: int
    max_pixels: int


def decode_base64(text: str, max_bytes: int, what: str = "image") -> bytes:
    """A base64 string or a `data:image/...;base64,` URL -> the raw bytes.

    Standard and URL-safe alphabets; whitespace (line-wrapped base64) is ignored. The
    length is checked before decoding so an oversized string costs no decoding.
    """
    if not isinstance(text, str):
        raise InvalidImage(f"{what}: expected a base64 string, got {type(text).__name__}")
    match = _DATA_URL.match(text[:256])
    if match:
        if not match.group(3):
            raise InvalidImage(f"{what}: data URL is not base64-encoded (';base64,' missing)")
        mime = match.group(1).lower()
        if mime and not mime.startswith("image/"):
            raise UnsupportedImage(f"{what}: data URL type {mime!r} is not an image type")
        text = text[match.end() :]
    limit = (max_bytes + 2) // 3 * 4  # base64 characters of max_bytes bytes, padding included
    too_large = TooLarge(f"{what}: larger than the {max_bytes}-byte limit per image")
    # A cheap bound before any copy (line-wrapped base64 is ~3% whitespace, CRLF-wrapped
    # ~5%), then the exact count once the whitespace is out.
    if len(text) > 2 * limit + 64:
        raise too_large
    if text and len(text) <= limit and len(text) % 4 == 0:
        # The common case, canonical standard base64, decoded in C with no copy; anything
        # else (URL-safe, wrapped, malformed) takes the careful path, which says what is wrong.
        with contextlib.suppress(binascii.Error, ValueError):
            return binascii.a2b_base64(text, strict_mode=True)
    stripped = "".join(text.split())
    raw = stripped.encode("ascii", "replace")
    if len(raw) > limit:
        raise too_large
    if not raw:
        raise InvalidImage(f"{what}: empty string")
    if not _BASE64_CHARS.match(raw):
        bad = sorted(set(re.sub(r"[A-Za-z0-9+/_=-]", "", stripped)))
        reason = (
            f"characters outside the alphabet: {''.join(bad[:16])!r}"
            if bad
            else "'=' padding inside the data or more than two '='"
        )
        raise InvalidImage(f"{what}: not valid base64 ({reason})")
    raw = raw.replace(b"-", b"+").replace(b"_", b"/")
    raw += b"=" * (-len(raw) % 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{what}: not valid base64 ({exc})") from None
    return data


def _signature(data: bytes) -> str | None:
    """The raster format whose magic number `data` starts with (a whole file or not)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def _sniff(data: bytes) -> str | None:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG is a vector format; send a raster image"
    if head.startswith((b"{", b"[")):
        return "this is JSON text, not an image"
    return None


def open_image(data: bytes, *, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    """Bytes -> a lazily opened image whose size and format have been checked."""
    if not data:
        raise InvalidImage(f"{what}: empty (0 bytes)")
    if len(data) > max_bytes:
        raise TooLarge(f"{what}: {len(data)} bytes, over the {max_bytes}-byte limit per image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"{what}: {exc}") from None
    except UnidentifiedImageError:
        # A file of an accepted format cut short (or mangled) before its header ends is
        # broken, not unsupported: a compressed TIFF, for one, keeps its header at the end.
        fmt = _signature(data)
        if fmt in FORMATS:
            raise InvalidImage(
                f"{what}: a {fmt} file whose header is corrupt or truncated ({len(data)} bytes)"
            ) from None
        reason = _sniff(data) or "not an image in a supported format"
        raise UnsupportedImage(f"{what}: {reason} (accepted: {', '.join(FORMATS)})") from None
    except Exception as exc:  # a corrupt header can raise nearly anything inside Pillow
        fmt = _signature(data) or "image"
        raise InvalidImage(f"{what}: the {fmt} header is corrupt or truncated ({exc})") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidImage(f"{what}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise TooLarge(
            f"{what}: {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit "
            "(checked before decoding)"
        )
    return img


def decode(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    min_side: int = 0,
    what: str = "image",
) -> Image.Image:
    """Bytes -> an RGB image (EXIF orientation applied, first frame of an animation).

    min_side: the smallest shorter side the caller needs; JPEGs much larger than that are
    decoded at 1/2, 1/4 or 1/8 scale directly (libjpeg's DCT scaling), which is how
    multi-megapixel photos stay cheap.
    """
    img = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, what=what)
    fmt = img.format
    try:
        img.seek(0)
        if min_side and fmt in ("JPEG", "MPO"):
            img.draft("RGB", (min_side, min_side))
        img.load()
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        raise InvalidImage(f"{what}: the {fmt} data is corrupt or truncated ({detail})") from None
    # A malformed EXIF block: keep the stored orientation rather than refuse the image.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img) or img
    try:
        return to_rgb(img)
    except ValueError as exc:
        raise UnsupportedImage(f"{what}: {fmt} image mode {img.mode!r}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited over white; 16-bit and 32-bit
    grey are scaled to 8 bits (not clipped); CMYK, YCbCr, palette and 1-bit convert."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max() > 255) else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "La":  # grey with premultiplied alpha (TIFF): Pillow has no La -> RGBA
        img, mode = img.convert("LA"), "LA"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# Longest side over shortest side past which `center_square` crops before resizing.
MAX_ASPECT = 16


def center_square(img: Image.Image) -> Image.Image:
    """The image itself, or its central square when one side is over `MAX_ASPECT` times
    the other.

    `eval_transform` resizes the shorter side and centre-crops a square, so it never looks
    outside the central square, but cropping first does not give the same pixels: the
    resized long side is rounded to whole pixels, which shifts the sampling grid (for a
    451 x 300 photo, normalised pixels differ by up to 0.17). So an ordinary image is left
    whole and its embedding is the library's own; only a strip (3 x 20000, 1 x 100000) is
    cut first, where resizing it whole would make a huge intermediate.
    """
    w, h = img.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))
