"""The image decoder fuzzed with mutated real images (hypothesis): every input either
decodes to an RGB image or raises one of the engine's image errors (a 4xx), never any
other exception. Real photos in every accepted format, each mutated by flipped bytes, a
cut, inserted bytes or a spliced header."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.engine_errors import InvalidImage, TooLarge, UnsupportedImage
from service.imaging import decode

skdata = pytest.importorskip("skimage.data")

EXAMPLES = int(os.environ.get("MAE_FUZZ_EXAMPLES", "200"))
PHOTO = Image.fromarray(skdata.chelsea()).resize((96, 64))


def _encoded(fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img = PHOTO.convert("P") if fmt == "GIF" else PHOTO
    img.save(buf, fmt, **kw)
    return buf.getvalue()


ORIGINALS = {
    "jpeg": _encoded("JPEG", quality=85),
    "jpeg-progressive": _encoded("JPEG", quality=85, progressive=True),
    "png": _encoded("PNG"),
    "webp": _encoded("WEBP", quality=80),
    "gif": _encoded("GIF"),
    "tiff": _encoded("TIFF", compression="tiff_deflate"),
    "bmp": _encoded("BMP"),
}


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "splice", "zero"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "splice":  # another format's header on this body
            other = draw(st.sampled_from(list(ORIGINALS.values())))
            data[: min(len(data), 64)] = other[:64]
        else:
            data[at : at + draw(st.integers(1, 256))] = b"\x00" * 16
    return bytes(data)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
@pytest.mark.parametrize("fmt", sorted(ORIGINALS))
def test_a_mutated_image_decodes_or_is_a_4xx(fmt: str) -> None:
    assert decode(ORIGINALS[fmt], max_bytes=1 << 20, max_pixels=1 << 22).mode == "RGB"

    @FUZZ
    @given(data=mutated(ORIGINALS[fmt]))
    def check(data: bytes) -> None:
        try:
            img = decode(data, max_bytes=1 << 20, max_pixels=1 << 22, min_side=32)
        except (InvalidImage, UnsupportedImage, TooLarge):
            return
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1

    check()
