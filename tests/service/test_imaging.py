"""Odd but valid images: `service/imaging.py` on its own (every mode to RGB, alpha over
white, 16-bit scaled, first frame, EXIF orientation, base64 variants, truncation, limits),
then through a real server (each gives a finite embedding of the right size, and the
server's vectors are the model's own embedding of the preprocessed image)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import data as skdata

from mae_core import load_model
from mae_core.data import eval_transform
from service.engine import Engine
from service.engine_errors import InvalidImage, TooLarge, UnsupportedImage
from service.errors import status_of
from service.imaging import (
    MAX_ASPECT,
    center_square,
    decode,
    decode_base64,
    open_image,
    to_rgb,
)

LIMITS = dict(max_bytes=1 << 26, max_pixels=1 << 26)
DIM = 192  # mae_vit_tiny's embed_dim


# -- images -------------------------------------------------------------------------------
def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def noise(w: int, h: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def solid(
    colour: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (40, 40)
) -> Image.Image:
    return Image.new(mode, size, colour)


def gradient16(w: int = 64, h: int = 48) -> np.ndarray:
    """16-bit grey covering the full range: pixel v * 257, so its 8-bit value is exactly v."""
    v = (np.arange(w * h) % 256).reshape(h, w).astype(np.uint16)
    return v * 257


def palette_with_transparency() -> Image.Image:
    """A P image whose index 0 (black) is transparent: left half transparent, right red."""
    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    p.paste(1, (20, 0, 40, 40))
    p.info["transparency"] = 0
    return p


def animated(fmt: str, colours: list[tuple[int, int, int]], **kw: Any) -> bytes:
    frames = [solid(c, size=(40, 40)) for c in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
ANIMATIONS = {
    "gif": lambda: animated("GIF", [RED, GREEN, BLUE], duration=100, loop=0),
    "apng": lambda: animated("PNG", [RED, GREEN, BLUE], duration=100),
    "webp": lambda: animated("WEBP", [RED, GREEN, BLUE], duration=100, lossless=True),
    "tiff-pages": lambda: animated("TIFF", [RED, GREEN, BLUE]),
}

# EXIF orientation -> the transpose that shows the stored pixels upright (the TIFF/EXIF spec)
ORIENTATIONS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes(), quality=95)


def stored_pixels(data: bytes) -> Image.Image:
    """The pixels as stored in the file, orientation ignored."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


CHELSEA = Image.fromarray(skdata.chelsea())  # 451 x 300: a real photo, not square


# -- decode_base64 ------------------------------------------------------------------------
def test_base64_variants_all_decode_to_the_same_bytes() -> None:
    raw = encode(Image.fromarray(noise(24, 24)), "PNG")
    std = b64(raw)
    assert "+" in std and "/" in std and std.endswith("=")  # the variants below differ
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    wrapped = base64.encodebytes(raw).decode()  # 76-character lines
    assert "\n" in wrapped
    variants = [
        std,
        std.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
        wrapped,
        wrapped.replace("\n", "\r\n"),
        "  " + std + "\n",
        f"data:image/png;base64,{std}",
        f"data:image/png;base64,{wrapped}",
        f"DATA:IMAGE/PNG;BASE64,{std}",
        f"data:image/png;name=cat.png;base64,{urlsafe}",
        f"data:;base64,{std}",
    ]
    for text in variants:
        assert decode_base64(text, len(raw)) == raw, text[:40]


@pytest.mark.parametrize(
    ("text", "error", "word"),
    [
        (12345, InvalidImage, "base64 string"),
        ("", InvalidImage, "empty"),
        (" \n ", InvalidImage, "empty"),
        ("data:image/png;base64,", InvalidImage, "empty"),
        ("not base64!", InvalidImage, "alphabet: '!'"),
        ("base64 é ß", InvalidImage, "alphabet: 'ßé'"),
        ("abcd=efg", InvalidImage, "padding"),
        ("abcde", InvalidImage, "base64"),
        ("data:image/png,abcd", InvalidImage, ";base64,"),
        ("data:text/html;base64,PGI+", UnsupportedImage, "text/html"),
        ("A" * 2000, TooLarge, "1000-byte limit"),
    ],
)
def test_base64_refusals(text: object, error: type[Exception], word: str) -> None:
    with pytest.raises(error) as info:
        decode_base64(text, 1000, what="input[3]")  # type: ignore[arg-type]
    assert info.value.message.startswith("input[3]: ")
    assert word in info.value.message


# -- limits -------------------------------------------------------------------------------
def test_byte_and_pixel_limits_are_exact() -> None:
    data = encode(solid(RED, size=(50, 40)), "PNG")
    assert open_image(data, max_bytes=len(data), max_pixels=2000).size == (50, 40)
    with pytest.raises(TooLarge, match="bytes"):
        open_image(data, max_bytes=len(data) - 1, max_pixels=2000)
    with pytest.raises(TooLarge, match="50x40 = 2000 pixels, over the 1999-pixel limit"):
        open_image(data, max_bytes=len(data), max_pixels=1999)


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose IHDR claims width x height RGB pixels (valid chunk CRCs) over
    a few bytes of image data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding() -> None:
    """A header claiming 50 Mpx over a few bytes of data: with a permissive limit decoding
    is tried and finds the data truncated; with the default 40 M limit it is never tried."""
    bomb = png_claiming(8000, 6250)
    with Image.open(io.BytesIO(bomb)) as img:
        assert img.size == (8000, 6250)
    with pytest.raises(InvalidImage, match="truncated"):
        decode(bomb, max_bytes=1 << 26, max_pixels=10**8)
    with pytest.raises(TooLarge, match=r"8000x6250 = 50000000 pixels.*before decoding"):
        decode(bomb, max_bytes=1 << 26, max_pixels=40_000_000)
    # past Pillow's own bomb threshold (2 x 89 Mpx) Pillow refuses it at open: still a 413
    with pytest.raises(TooLarge, match="pixels"):
        decode(png_claiming(60_000, 60_000), max_bytes=1 << 26, max_pixels=10**12)


def _cuts(n: int) -> list[int]:
    return [24, 100, n // 10, n // 2, n * 9 // 10]


TRUNCATABLE = {
    "png": lambda: encode(CHELSEA, "PNG"),
    "jpeg": lambda: encode(CHELSEA, "JPEG", quality=90),
    "jpeg-progressive": lambda: encode(CHELSEA, "JPEG", quality=90, progressive=True),
    "gif": lambda: encode(CHELSEA, "GIF"),
    "webp": lambda: encode(CHELSEA, "WEBP", quality=90),
    "bmp": lambda: encode(CHELSEA, "BMP"),
    "tiff": lambda: encode(CHELSEA, "TIFF"),
    "tiff-deflate": lambda: encode(CHELSEA, "TIFF", compression="tiff_deflate"),
}


@pytest.mark.parametrize("fmt", TRUNCATABLE)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" on cut TIFFs
def test_truncated_files_are_invalid_never_unsupported_nor_half_images(fmt: str) -> None:
    full = TRUNCATABLE[fmt]()
    assert decode(full, **LIMITS).size == CHELSEA.size
    for cut in _cuts(len(full)):
        with pytest.raises(InvalidImage) as info:
            decode(full[:cut], **LIMITS, what="file[0]")
        assert "truncated" in info.value.message, (cut, info.value.message)
        assert status_of(info.value) == 400


def test_formats_outside_the_allow_list_are_unsupported() -> None:
    for fmt in ("PCX", "ICO", "TGA", "PPM"):
        with pytest.raises(UnsupportedImage, match="accepted: JPEG, PNG"):
            decode(encode(CHELSEA.resize((32, 32)), fmt), **LIMITS)


# -- every mode to RGB --------------------------------------------------------------------
def test_grey_and_bilevel() -> None:
    grey = noise(30, 20, channels=1)
    out = decode(encode(Image.fromarray(grey), "PNG"), **LIMITS)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert (rgb(out) == grey[..., None]).all()
    bits = np.indices((20, 30)).sum(0) % 2 == 0  # a checkerboard
    out = decode(encode(Image.fromarray(bits), "PNG"), **LIMITS)
    assert Image.open(io.BytesIO(encode(Image.fromarray(bits), "PNG"))).mode == "1"
    assert (rgb(out) == np.where(bits, 255, 0)[..., None]).all()


def test_palette() -> None:
    p = Image.new("P", (40, 40), 0)
    p.putpalette([10, 20, 30, 200, 100, 50])
    p.paste(1, (0, 0, 40, 10))
    for fmt in ("PNG", "GIF", "BMP"):
        out = rgb(decode(encode(p, fmt), **LIMITS))
        assert (out[:10] == (200, 100, 50)).all() and (out[10:] == (10, 20, 30)).all(), fmt


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_white(fmt: str) -> None:
    p = palette_with_transparency()
    data = encode(p, fmt, transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = rgb(decode(data, **LIMITS))
    assert (out[:, :20] == WHITE).all() and (out[:, 20:] == RED).all()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "TIFF"), ("LA", "PNG"), ("LA", "TIFF")],
)
def test_alpha_is_composited_over_white(mode: str, fmt: str) -> None:
    """Fully transparent -> white, opaque -> its colour, half transparent black -> mid grey."""
    opaque = (0, 0, 255) if mode == "RGBA" else (0, 0, 0)
    img = Image.new(mode, (3, 1))
    img.putdata(
        [(0, 0, 0, 0), (*opaque, 255), (0, 0, 0, 128)]
        if mode == "RGBA"
        else [(0, 0), (0, 255), (0, 128)]
    )
    data = encode(img, fmt, lossless=True) if fmt == "WEBP" else encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    out = rgb(decode(data, **LIMITS))[0]
    assert (out[0] == WHITE).all()
    assert (out[1] == opaque).all()
    assert (np.abs(out[2] - 127) <= 1).all(), out[2]


@pytest.mark.parametrize(("photometric", "mode"), [("minisblack", "La"), ("rgb", "RGBA")])
def test_tiff_with_premultiplied_alpha(photometric: str, mode: str) -> None:
    """TIFF's associated (premultiplied) alpha: grey opens as Pillow's "La", which Pillow
    cannot convert to RGBA directly."""
    channels = 2 if photometric == "minisblack" else 4
    pixels = np.zeros((4, 4, channels), np.uint8)
    pixels[0, 0] = 0  # fully transparent
    pixels[0, 1, :-1], pixels[0, 1, -1] = 200, 255  # opaque light grey
    pixels[0, 2, :-1], pixels[0, 2, -1] = 50, 128  # grey 100 premultiplied by alpha 1/2
    buf = io.BytesIO()
    tifffile.imwrite(buf, pixels, photometric=photometric, extrasamples=[1])  # 1: associated
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode
    out = rgb(decode(buf.getvalue(), **LIMITS))[0]
    assert (out[0] == WHITE).all() and (out[1] == 200).all()
    assert (np.abs(out[2] - 177) <= 1).all(), out[2]  # 100 * 1/2 + 255 * 1/2


def test_palette_with_alpha_in_memory() -> None:
    """PA (palette + alpha) comes from TIFF only, and Pillow cannot write it as PNG."""
    img = Image.new("PA", (3, 1))
    img.putpalette([0, 0, 0, 0, 0, 255])
    img.putdata([(0, 0), (1, 255), (0, 128)])
    out = rgb(to_rgb(img))[0]
    assert (out[0] == WHITE).all() and (out[1] == BLUE).all()
    assert (np.abs(out[2] - 127) <= 1).all(), out[2]


def test_cmyk_jpeg() -> None:
    data = encode(solid((0, 255, 255, 0), "CMYK"), "JPEG", quality=95)  # red in CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = rgb(decode(data, **LIMITS))
    assert (np.abs(out - RED) <= 3).all(), out[0, 0]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(fmt: str) -> None:
    values = gradient16()
    data = encode(Image.fromarray(values), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = rgb(decode(data, **LIMITS))
    assert (out == (values // 257)[..., None]).all()
    mid = rgb(decode(encode(Image.fromarray(np.full((8, 8), 32768, np.uint16)), fmt), **LIMITS))
    assert (mid == 128).all()  # clipping would have made it 255


@pytest.mark.parametrize(
    "size", [(1, 1), (3, 20_000), (20_000, 3), (1, 5000)], ids=["1x1", "tall", "wide", "1-wide"]
)
def test_tiny_and_extreme_sizes(size: tuple[int, int]) -> None:
    w, h = size
    pixels = noise(w, h)
    out = decode(encode(Image.fromarray(pixels), "PNG"), **LIMITS)
    assert out.size == size and (rgb(out) == pixels).all()
    square = center_square(out)
    s = min(w, h)
    assert square.size == (s, s)
    top, left = (h - s) // 2, (w - s) // 2
    assert (rgb(square) == pixels[top : top + s, left : left + s]).all()


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("BMP", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ],
)
def test_lossless_formats_keep_every_pixel(fmt: str, kw: dict[str, Any]) -> None:
    pixels = noise(37, 23)
    out = decode(encode(Image.fromarray(pixels), fmt, **kw), **LIMITS)
    assert out.mode == "RGB" and (rgb(out) == pixels).all()


@pytest.mark.parametrize("kind", ANIMATIONS)
def test_first_frame_of_an_animation(kind: str) -> None:
    data = ANIMATIONS[kind]()
    with Image.open(io.BytesIO(data)) as img:
        assert img.n_frames == 3
    out = rgb(decode(data, **LIMITS))
    assert (np.abs(out - RED) <= 1).all(), out[0, 0]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_orientation_is_applied(orientation: int) -> None:
    data = with_orientation(CHELSEA.resize((60, 40)), orientation)
    out = decode(data, **LIMITS)
    op = ORIENTATIONS[orientation]
    upright = stored_pixels(data) if op is None else stored_pixels(data).transpose(op)
    assert out.size == ((40, 60) if orientation >= 5 else (60, 40))
    assert (rgb(out) == rgb(upright)).all()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_formats(fmt: str) -> None:
    data = with_orientation(Image.fromarray(noise(60, 40)), 6, fmt)
    assert decode(data, **LIMITS).size == (40, 60)


def test_bad_orientation_keeps_the_stored_pixels() -> None:
    data = with_orientation(CHELSEA.resize((60, 40)), 9)  # not a valid orientation
    assert (rgb(decode(data, **LIMITS)) == rgb(stored_pixels(data))).all()


def test_large_jpeg_is_decoded_at_a_reduced_scale_but_never_below_min_side() -> None:
    data = encode(CHELSEA, "JPEG", quality=90)
    for min_side in (37, 100, 151, 299):
        out = decode(data, **LIMITS, min_side=min_side)
        assert min(out.size) >= min_side
        assert min(out.size) < 2 * min_side or min(out.size) == 300
        assert out.size[0] / out.size[1] == pytest.approx(451 / 300, rel=0.02)


# -- center_square ------------------------------------------------------------------------
def test_center_square_leaves_ordinary_images_whole() -> None:
    for size in [(451, 300), (300, 451), (40, 40), (16 * 30, 30)]:
        img = Image.fromarray(noise(*size))
        assert center_square(img) is img
    strip = Image.fromarray(noise(MAX_ASPECT * 30 + 1, 30))
    assert center_square(strip).size == (30, 30)


# -- through the server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(model_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=model_server.url, timeout=60) as c:
        yield c


def embed(client: httpx.Client, inputs: list[str], **options: Any) -> np.ndarray:
    """JSON route: base64 strings or data URLs -> (n, D) float64."""
    r = client.post("/v1/embeddings", json={"input": inputs, **options})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(inputs)))
    return np.array([d["embedding"] for d in data], dtype=np.float64)


def embed_files(client: httpx.Client, files: list[bytes], **fields: str) -> np.ndarray:
    """Upload route: one `file` part per image -> (n, D) float64."""
    parts = [("file", (f"{i}.img", f, "application/octet-stream")) for i, f in enumerate(files)]
    r = client.post("/v1/embeddings/upload", files=parts, data=fields)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)


ODD_IMAGES: dict[str, Callable[[], bytes]] = {
    "grey-L": lambda: encode(Image.fromarray(noise(40, 30, channels=1)), "PNG"),
    "1-bit": lambda: encode(Image.fromarray(noise(40, 30, channels=1) > 127), "PNG"),
    "palette": lambda: encode(CHELSEA.resize((60, 40)).quantize(16), "PNG"),
    "palette-transparency": lambda: encode(palette_with_transparency(), "PNG", transparency=0),
    "rgba": lambda: encode(Image.fromarray(noise(40, 30, channels=4)), "PNG"),
    "la": lambda: encode(Image.fromarray(noise(40, 30, channels=2), "LA"), "PNG"),
    "cmyk-jpeg": lambda: encode(Image.fromarray(noise(40, 30, channels=4), "CMYK"), "JPEG"),
    "16-bit-png": lambda: encode(Image.fromarray(gradient16()), "PNG"),
    "16-bit-tiff": lambda: encode(Image.fromarray(gradient16()), "TIFF"),
    "1x1": lambda: encode(solid((10, 200, 30), size=(1, 1)), "PNG"),
    "tall-3x20000": lambda: encode(Image.fromarray(noise(3, 20_000)), "PNG"),
    "wide-20000x3": lambda: encode(Image.fromarray(noise(20_000, 3)), "PNG"),
    "bmp": lambda: encode(CHELSEA.resize((60, 40)), "BMP"),
    "webp": lambda: encode(CHELSEA.resize((60, 40)), "WEBP"),
    "webp-lossless-alpha": lambda: encode(
        Image.fromarray(noise(40, 30, channels=4)), "WEBP", lossless=True
    ),
    "tiff": lambda: encode(CHELSEA.resize((60, 40)), "TIFF"),
    "animated-gif": ANIMATIONS["gif"],
    "apng": ANIMATIONS["apng"],
    "exif-rotated-jpeg": lambda: with_orientation(CHELSEA.resize((60, 40)), 6),
    "progressive-jpeg": lambda: encode(CHELSEA, "JPEG", progressive=True),
}


@pytest.mark.parametrize("kind", ODD_IMAGES)
def test_odd_images_get_a_finite_embedding_of_the_right_size(
    client: httpx.Client, kind: str
) -> None:
    data = ODD_IMAGES[kind]()
    (vector,) = embed(client, [b64(data)])
    assert vector.shape == (DIM,) and np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    (raw,) = embed_files(client, [data], normalize="false", pooling="mean")
    assert raw.shape == (DIM,) and np.isfinite(raw).all()


def _png(img: Image.Image) -> str:
    return b64(encode(img, "PNG"))


def test_transparent_pixels_embed_as_white(client: httpx.Client) -> None:
    clear = [
        _png(solid((0, 0, 0, 0), "RGBA")),
        _png(solid((0, 0), "LA")),
        b64(encode(solid((0, 0, 0, 0), "RGBA"), "WEBP", lossless=True)),
    ]
    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 0, 0])
    clear.append(b64(encode(p, "PNG", transparency=0)))
    white, black, *rest = embed(client, [_png(solid(WHITE)), _png(solid((0, 0, 0))), *clear])
    assert np.abs(white - black).max() > 1e-3  # the check below can tell them apart
    for vector in rest:
        np.testing.assert_allclose(vector, white, atol=1e-6)


def test_16_bit_mid_grey_embeds_as_8_bit_mid_grey(client: httpx.Client) -> None:
    grey16 = _png(Image.fromarray(np.full((40, 40), 32768, np.uint16)))
    grey16_tiff = b64(encode(Image.fromarray(np.full((40, 40), 32768, np.uint16)), "TIFF"))
    grey8, white, got, got_tiff = embed(
        client, [_png(solid((128, 128, 128))), _png(solid(WHITE)), grey16, grey16_tiff]
    )
    assert np.abs(grey8 - white).max() > 1e-3
    np.testing.assert_allclose(got, grey8, atol=1e-6)
    np.testing.assert_allclose(got_tiff, grey8, atol=1e-6)


@pytest.mark.parametrize("kind", ["gif", "webp"])
def test_animation_embeds_as_its_first_frame(client: httpx.Client, kind: str) -> None:
    red, green, got = embed(client, [_png(solid(RED)), _png(solid(GREEN)), b64(ANIMATIONS[kind]())])
    assert np.abs(red - green).max() > 1e-3
    np.testing.assert_allclose(got, red, atol=1e-6)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_embeds_as_the_upright_image(
    client: httpx.Client, orientation: int
) -> None:
    data = with_orientation(CHELSEA.resize((90, 60)), orientation)
    stored = stored_pixels(data)
    upright = stored.transpose(ORIENTATIONS[orientation])
    assert decode(data, **LIMITS).size == upright.size
    rotated, straight, unrotated = embed(client, [b64(data), _png(upright), _png(stored)])
    np.testing.assert_allclose(rotated, straight, atol=1e-5)
    assert np.abs(rotated - unrotated).max() > 1e-3  # orientation changes the answer


def test_base64_variants_embed_alike(client: httpx.Client) -> None:
    raw = encode(CHELSEA.resize((60, 40)), "PNG")
    std = b64(raw)
    assert "+" in std or "/" in std
    wrapped = base64.encodebytes(raw).decode()
    variants = [
        std,
        f"data:image/png;base64,{wrapped}",
        f"data:image/png;base64,{wrapped.replace(chr(10), chr(13) + chr(10))}",
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        f"data:image/png;base64,{base64.urlsafe_b64encode(raw).decode()}",
    ]
    first, *rest = embed(client, variants)
    for vector in rest:
        np.testing.assert_allclose(vector, first, atol=1e-6)


def test_upload_and_json_paths_agree(client: httpx.Client, cifar_folder: Path) -> None:
    files = [
        *(f.read_bytes() for f in sorted(cifar_folder.rglob("*.jpg"))[:2]),
        encode(CHELSEA.resize((60, 40)), "WEBP"),
        ODD_IMAGES["rgba"](),
    ]
    for options in ({}, {"pooling": "mean", "normalize": False}):
        form = {k: str(v).lower() for k, v in options.items()}
        by_json = embed(client, [b64(f) for f in files], **options)
        by_upload = embed_files(client, files, **form)
        np.testing.assert_allclose(by_upload, by_json, atol=1e-6)
        assert len({tuple(np.round(v, 4)) for v in by_json}) == len(files)  # in order, distinct


def test_base64_encoding_is_the_float_answer(client: httpx.Client) -> None:
    inputs = [_png(CHELSEA.resize((60, 40))), _png(solid(RED))]
    for normalize in (True, False):
        floats = embed(client, inputs, normalize=normalize)
        r = client.post(
            "/v1/embeddings",
            json={"input": inputs, "normalize": normalize, "encoding_format": "base64"},
        )
        assert r.status_code == 200, r.text
        for item, expected in zip(r.json()["data"], floats, strict=True):
            vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
            assert vector.shape == (DIM,)
            np.testing.assert_array_equal(vector, expected.astype(np.float32))


def test_normalize_and_pooling(client: httpx.Client) -> None:
    inputs = [_png(CHELSEA.resize((60, 40))), _png(Image.fromarray(noise(40, 40)))]
    for pooling in ("cls", "mean"):
        unit = embed(client, inputs, pooling=pooling)
        raw = embed(client, inputs, pooling=pooling, normalize=False)
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
        norms = np.linalg.norm(raw, axis=1)
        assert (np.abs(norms - 1.0) > 1e-2).all(), norms
        np.testing.assert_allclose(unit, raw / norms[:, None], atol=1e-6)
    cls = embed(client, inputs, pooling="cls")
    mean = embed(client, inputs, pooling="mean")
    assert (np.abs(cls - mean).max(axis=1) > 1e-2).all()


@pytest.fixture(scope="module")
def reference(small_model_dir: Path) -> tuple[Any, Engine]:
    model = load_model(small_model_dir)
    assert not model.training
    return model, Engine(str(small_model_dir), device="cpu")


def _model_embed(model: Any, batch: torch.Tensor, pooling: str) -> np.ndarray:
    with torch.inference_mode():
        return model.embed(batch, pooling=pooling).double().numpy()


def test_server_equals_the_model_on_cifar_jpegs(
    client: httpx.Client, reference, cifar_folder: Path
) -> None:
    """Independent of the service's code: Pillow's decode, `eval_transform`, `model.embed`."""
    model, _ = reference
    files = sorted(cifar_folder.rglob("*.jpg"))[::37][:8]
    batch = torch.stack([eval_transform(Image.open(f).convert("RGB"), model.config) for f in files])
    for pooling in ("cls", "mean"):
        served = embed_files(
            client, [f.read_bytes() for f in files], pooling=pooling, normalize="false"
        )
        np.testing.assert_allclose(served, _model_embed(model, batch, pooling), atol=1e-5)


PHOTOS = {
    "chelsea-451x300": lambda: skdata.chelsea(),
    "coffee-600x400": lambda: skdata.coffee(),
    "astronaut-512x512": lambda: skdata.astronaut(),
    "rocket-427x640": lambda: skdata.rocket(),
    "odd-301x200": lambda: noise(301, 200, seed=3),
}


@pytest.mark.parametrize("photo", PHOTOS)
def test_server_equals_the_model_on_real_photos(
    client: httpx.Client, reference, photo: str
) -> None:
    """Non-square photos: the server's vector is `model.embed(engine.preprocess(image))`,
    and that preprocessing is the library's `eval_transform` of the whole image."""
    model, engine = reference
    data = encode(Image.fromarray(PHOTOS[photo]()), "PNG")
    img = decode(data, **LIMITS)
    x = engine.preprocess(img)
    assert torch.equal(x, eval_transform(img, model.config))
    for pooling in ("cls", "mean"):
        (served,) = embed_files(client, [data], pooling=pooling, normalize="false")
        np.testing.assert_allclose(served, _model_embed(model, x[None], pooling)[0], atol=1e-5)
