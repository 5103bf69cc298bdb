"""Bad input through a real server: every case gets the right 4xx with a JSON error body
`{"error": {"code", "message"}}` that names the problem, and the server lives on (after
each case `/health` answers 200 and a valid embedding request still works).

Three servers of the small model: default limits (`model_server`), low limits (pixels,
body bytes, images per request) and API keys. Each is started once for its tests.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from .conftest import model_settings, serve
from .test_imaging import b64, encode, png_claiming

EMB, UPLOAD, RECON = "/v1/embeddings", "/v1/embeddings/upload", "/v1/reconstructions"
BOUNDARY = "mae-test-boundary-7d1f"


# -- inputs -------------------------------------------------------------------------------
CHELSEA = Image.fromarray(skdata.chelsea())  # a real photo, 451 x 300
GOOD_PNG = encode(CHELSEA.resize((48, 32)), "PNG")  # 1536 pixels: under every limit here
CHELSEA_JPEG = encode(CHELSEA, "JPEG", quality=90)
CHELSEA_PNG = encode(CHELSEA, "PNG")
CHELSEA_TIFF = encode(CHELSEA, "TIFF", compression="tiff_deflate")


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<rect width="64" height="64" fill="red"/></svg>'
)


def multipart(*parts: tuple[str, bytes | str, str | None]) -> dict[str, Any]:
    """A multipart/form-data body by hand: (name, value, filename); filename None makes a
    text field, a filename a file part."""
    body = b""
    for name, value, filename in parts:
        raw = value.encode() if isinstance(value, str) else value
        disposition = f'form-data; name="{name}"'
        head = f"Content-Disposition: {disposition}"
        if filename is not None:
            head = f'Content-Disposition: {disposition}; filename="{filename}"\r\n'
            head += "Content-Type: application/octet-stream"
        body += f"--{BOUNDARY}\r\n{head}\r\n\r\n".encode() + raw + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return {
        "content": body,
        "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    }


def post_json(path: str, body: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"method": "POST", "url": path, "json": body}


def post_raw(path: str, content: bytes, ctype: str | None) -> Callable[[], dict[str, Any]]:
    headers = {"content-type": ctype} if ctype else {}
    return lambda: {"method": "POST", "url": path, "content": content, "headers": headers}


def post_form(path: str, *parts: tuple[str, bytes | str, str | None]) -> Callable[[], dict]:
    return lambda: {"method": "POST", "url": path, **multipart(*parts)}


def images(*blobs: bytes) -> dict[str, Any]:
    return {"input": [b64(b) for b in blobs]}


# -- checks -------------------------------------------------------------------------------
def assert_error(r: httpx.Response, status: int, code: str, word: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert error["code"] == code, error
    assert word.lower() in error["message"].lower(), error
    return error


def assert_alive(client: httpx.Client, headers: dict[str, str] | None = None) -> None:
    """The process still serves: /health is 200 and a good image gets a finite vector."""
    assert client.get("/health").status_code == 200
    r = client.post(EMB, json=images(GOOD_PNG), headers=headers)
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert len(item["embedding"]) == 192
    assert all(math.isfinite(x) for x in item["embedding"])


@pytest.fixture(scope="module")
def client(model_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=model_server.url, timeout=60) as c:
        yield c


# -- the default server -------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    id: str
    request: Callable[[], dict[str, Any]]
    status: int
    code: str
    word: str


NESTED = 100_000
_DIGITS = b64(GOOD_PNG).rstrip("=")
# 4k + 1 data characters then "=": no padding makes that whole
WRONG_PADDING = _DIGITS[: len(_DIGITS) - (len(_DIGITS) - 1) % 4] + "="
RANDOM_BYTES = np.random.default_rng(0).bytes(4096)
RECON_FIELDS = ("file", "mask_ratio", "seed", "model")
UPLOAD_FIELDS = ("file", "model", "pooling", "normalize", "encoding_format")
J, F = "application/json", f"multipart/form-data; boundary={BOUNDARY}"
GOOD = images(GOOD_PNG)

# fmt: off
CASES = [
    # bodies that are not a request at all
    Bad("empty-body", post_raw(EMB, b"", J), 400, "empty_body", "empty"),
    Bad("blank-body", post_raw(EMB, b" \n\t ", J), 400, "empty_body", "empty"),
    Bad("malformed-json", post_raw(EMB, b'{"input": [', J), 400, "invalid_json", "JSON"),
    Bad("invalid-utf8-json", post_raw(EMB, b'{"input": ["\xff\xfe"]}', J), 400, "invalid_json", "JSON"),
    Bad("json-not-an-object", post_raw(EMB, b"null", J), 422, "invalid_request", "object"),
    Bad("nested-json-list", post_raw(EMB, b"[" * NESTED + b"]" * NESTED, J), 400, "invalid_json", "recursion"),
    Bad("nested-json-in-input", post_raw(EMB, b'{"input": ' + b"[" * NESTED + b"]" * NESTED + b"}", J), 400, "invalid_json", "recursion"),
    # wrong Content-Type
    Bad("text-plain-to-json-route", post_raw(EMB, json.dumps(GOOD).encode(), "text/plain"), 415, "unsupported_media_type", "application/json"),
    Bad("no-content-type", post_raw(EMB, json.dumps(GOOD).encode(), None), 415, "unsupported_media_type", "application/json"),
    Bad("json-to-upload-route", post_json(UPLOAD, GOOD), 415, "unsupported_media_type", "multipart"),
    Bad("urlencoded-to-upload-route", post_raw(UPLOAD, b"file=abc", "application/x-www-form-urlencoded"), 415, "unsupported_media_type", "multipart"),
    # the `input` field
    Bad("input-empty-list", post_json(EMB, {"input": []}), 422, "invalid_request", "input"),
    Bad("input-missing", post_json(EMB, {"model": None}), 422, "invalid_request", "input"),
    Bad("input-a-number", post_json(EMB, {"input": 5}), 422, "invalid_request", "input"),
    Bad("input-a-number", post_json(EMB, {"input": 42}), 422, "invalid_request", "input"),
    Bad("input-numbers", post_json(EMB, {"input": [1, 2.5]}), 422, "invalid_request", "string"),
    Bad("input-null-item", post_json(EMB, {"input": [b64(GOOD_PNG), None]}), 422, "invalid_request", "input.1"),
    # options
    Bad("unknown-pooling", post_json(EMB, {**GOOD, "pooling": "max"}), 422, "invalid_request", "pooling"),
    Bad("unknown-encoding", post_json(EMB, {**GOOD, "encoding_format": "int8"}), 422, "invalid_request", "encoding_format"),
    Bad("normalize-not-bool", post_json(EMB, {**GOOD, "normalize": "yes"}), 422, "invalid_request", "normalize"),
    Bad("unknown-model", post_json(EMB, {**GOOD, "model": "no/such-model"}), 404, "model_not_found", "no/such-model"),
    Bad("upload-unknown-pooling", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("pooling", "max", None)), 422, "invalid_request", "pooling"),
    Bad("upload-unknown-model", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("model", "no/such-model", None)), 404, "model_not_found", "no/such-model"),
    Bad("upload-normalize-not-bool", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("normalize", "maybe", None)), 422, "invalid_request", "normalize"),
    # base64 and data URLs
    Bad("base64-bad-characters", post_json(EMB, {"input": ["iVBOR$%^&*()w0KGgo="]}), 400, "invalid_image", "alphabet"),
    Bad("base64-non-ascii", post_json(EMB, {"input": ["iVBORw0KGgoé"]}), 400, "invalid_image", "alphabet"),
    Bad("base64-wrong-padding", post_json(EMB, {"input": [WRONG_PADDING]}), 400, "invalid_image", "base64"),
    Bad("base64-excess-padding", post_json(EMB, {"input": [b64(GOOD_PNG) + "==="]}), 400, "invalid_image", "padding"),
    Bad("base64-padding-inside", post_json(EMB, {"input": ["iVBO=Rw0KGgo"]}), 400, "invalid_image", "padding"),
    Bad("base64-one-char-too-many", post_json(EMB, {"input": ["abcde"]}), 400, "invalid_image", "base64"),
    Bad("base64-empty-string", post_json(EMB, {"input": [""]}), 400, "invalid_image", "empty"),
    Bad("data-url-not-base64", post_json(EMB, {"input": ["data:image/png,%89PNG%0D%0A%1A%0A"]}), 400, "invalid_image", "base64"),
    Bad("data-url-text-mime", post_json(EMB, {"input": ["data:text/plain;base64," + b64(GOOD_PNG)]}), 415, "unsupported_image", "text/plain"),
    Bad("data-url-pdf-mime", post_json(EMB, {"input": ["data:application/pdf;base64," + b64(GOOD_PNG)]}), 415, "unsupported_image", "not an image"),
    # bytes that are not a (supported, whole) image
    Bad("text-as-image", post_json(EMB, images(b"just some words, no pixels here\n" * 4)), 415, "unsupported_image", "not an image"),
    Bad("random-bytes-as-image", post_json(EMB, images(RANDOM_BYTES)), 415, "unsupported_image", "not an image"),
    Bad("json-as-image", post_json(EMB, images(b'{"image": "cat.png"}')), 415, "unsupported_image", "JSON"),
    Bad("svg", post_json(EMB, images(SVG)), 415, "unsupported_image", "SVG"),
    Bad("svg-data-url", post_json(EMB, {"input": ["data:image/svg+xml;base64," + b64(SVG)]}), 415, "unsupported_image", "SVG"),
    Bad("svg-upload", post_form(UPLOAD, ("file", SVG, "a.svg")), 415, "unsupported_image", "SVG"),
    Bad("pcx-not-allowed", post_json(EMB, images(encode(CHELSEA, "PCX"))), 415, "unsupported_image", "accepted"),
    Bad("truncated-jpeg", post_json(EMB, images(CHELSEA_JPEG[: len(CHELSEA_JPEG) // 2])), 400, "invalid_image", "truncated"),
    Bad("truncated-png", post_json(EMB, images(CHELSEA_PNG[: len(CHELSEA_PNG) // 2])), 400, "invalid_image", "truncated"),
    Bad("truncated-jpeg-upload", post_form(UPLOAD, ("file", CHELSEA_JPEG[:5000], "cut.jpg")), 400, "invalid_image", "truncated"),
    # cut inside the header: the format is recognised, so the file is broken, not "unsupported"
    Bad("truncated-png-header", post_json(EMB, images(CHELSEA_PNG[:40])), 400, "invalid_image", "truncated"),
    Bad("truncated-jpeg-header", post_json(EMB, images(CHELSEA_JPEG[:100])), 400, "invalid_image", "truncated"),
    Bad("truncated-tiff", post_json(EMB, images(CHELSEA_TIFF[: len(CHELSEA_TIFF) // 2])), 400, "invalid_image", "truncated"),
    Bad("empty-file-upload", post_form(UPLOAD, ("file", b"", "empty.png")), 400, "invalid_image", "empty"),
    # decompression bombs: refused from the header, before any pixel is decoded
    Bad("bomb-60000x60000", post_json(EMB, images(png_claiming(60_000, 60_000))), 413, "too_large", "pixels"),
    # 48 Mpx: over MAE_MAX_IMAGE_PIXELS (40 M), under Pillow's own bomb threshold, so our check
    # is what refuses it (decoding the few bytes of data would fail as truncated, with a 400)
    Bad("bomb-8000x6000", post_json(EMB, images(png_claiming(8000, 6000))), 413, "too_large", "before decoding"),
    Bad("bomb-upload", post_form(UPLOAD, ("file", png_claiming(8000, 6000), "bomb.png")), 413, "too_large", "before decoding"),
    # multipart forms
    Bad("upload-without-file-part", post_form(UPLOAD, ("pooling", "cls", None)), 400, "missing_file", "file"),
    Bad("upload-file-under-other-name", post_form(UPLOAD, ("image", GOOD_PNG, "a.png")), 400, "missing_file", "file"),
    Bad("upload-file-as-text-field", post_form(UPLOAD, ("file", b64(GOOD_PNG), None)), 415, "unsupported_image", "text field"),
    Bad("upload-option-as-file", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("pooling", b"cls", "p.txt")), 400, "invalid_request", "pooling"),
    Bad("multipart-without-boundary", post_raw(UPLOAD, b"--x\r\n\r\n", "multipart/form-data"), 400, "invalid_multipart", "boundary"),
    Bad("multipart-garbage", post_raw(UPLOAD, b"this is not a multipart body", F), 400, "invalid_multipart", "multipart"),
    Bad("multipart-too-many-fields", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), *[(f"x{i}", "1", None) for i in range(40)]), 400, "invalid_multipart", "fields"),
    Bad("multipart-huge-text-field", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("model", "m" * (2 << 20), None)), 413, "too_large", "text field"),
    Bad("reconstruction-without-file", post_form(RECON, ("seed", "1", None)), 400, "missing_file", "file"),
    Bad("reconstruction-two-files", post_form(RECON, ("file", GOOD_PNG, "a.png"), ("file", GOOD_PNG, "b.png")), 413, "too_large", "one image"),
    Bad("reconstruction-unknown-field", post_form(RECON, ("file", GOOD_PNG, "a.png"), ("maskratio", "0.5", None)), 422, "invalid_request", "maskratio"),
    Bad("upload-unknown-field", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("dimensions", "8", None)), 422, "invalid_request", "dimensions"),
    Bad("upload-unknown-file-part", post_form(UPLOAD, ("file", GOOD_PNG, "a.png"), ("image", GOOD_PNG, "b.png")), 422, "invalid_request", "image"),
    Bad("reconstruction-text-plain", post_raw(RECON, b"hello", "text/plain"), 415, "unsupported_media_type", "application/json"),
    Bad("reconstruction-bad-image", post_json(RECON, {"image": b64(b"not an image at all")}), 415, "unsupported_image", "not an image"),
    Bad("reconstruction-truncated", post_form(RECON, ("file", CHELSEA_PNG[:3000], "cut.png")), 400, "invalid_image", "truncated"),
    Bad("reconstruction-no-image", post_json(RECON, {"mask_ratio": 0.5}), 422, "invalid_request", "image"),
    # routes and methods
    Bad("unknown-route", lambda: {"method": "GET", "url": "/v1/nope"}, 404, "not_found", "not found"),
    Bad("unknown-post-route", post_json("/v1/embedding", GOOD), 404, "not_found", "not found"),
    Bad("unknown-top-route", lambda: {"method": "GET", "url": "/no/such/page"}, 404, "not_found", "not found"),
    Bad("get-on-embeddings", lambda: {"method": "GET", "url": EMB}, 405, "method_not_allowed", "method"),
    Bad("put-on-reconstructions", lambda: {"method": "PUT", "url": RECON}, 405, "method_not_allowed", "method"),
    Bad("delete-on-upload", lambda: {"method": "DELETE", "url": UPLOAD}, 405, "method_not_allowed", "method"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_a_json_4xx_and_the_server_lives_on(client: httpx.Client, case: Bad) -> None:
    r = client.request(**case.request())
    assert_error(r, case.status, case.code, case.word)
    assert_alive(client)


def test_wrong_method_says_which_are_allowed(client: httpx.Client) -> None:
    r = client.get(EMB)
    assert_error(r, 405, "method_not_allowed", "method")
    assert "POST" in r.headers["allow"]


# mask_ratio must lie strictly between 0 and 1 (at least one patch hidden and one visible)
MASK_RATIOS = ["0", "1", "-0.1", "1.5", "nan", "inf", "abc", ""]


@pytest.mark.parametrize("mask_ratio", MASK_RATIOS)
def test_bad_mask_ratio_in_a_form(client: httpx.Client, mask_ratio: str) -> None:
    parts = [("file", GOOD_PNG, "a.png"), ("mask_ratio", mask_ratio, None), ("seed", "1", None)]
    r = client.post(RECON, **multipart(*parts))
    assert_error(r, 422, "invalid_request", "mask_ratio")
    assert_alive(client)


@pytest.mark.parametrize("mask_ratio", [0, 1, -0.1, 1.5, "nan", "0.5", "abc", None])
def test_bad_mask_ratio_in_json(client: httpx.Client, mask_ratio: object) -> None:
    # JSON numbers only: a string, even "0.5", is refused (the JSON schema is strict)
    r = client.post(RECON, json={"image": b64(GOOD_PNG), "mask_ratio": mask_ratio, "seed": 1})
    assert_error(r, 422, "invalid_request", "mask_ratio")
    assert_alive(client)


def test_nan_literal_mask_ratio_in_json(client: httpx.Client) -> None:
    body = f'{{"image": "{b64(GOOD_PNG)}", "mask_ratio": NaN}}'
    r = client.post(RECON, content=body.encode(), headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request", "mask_ratio")
    assert_alive(client)


@pytest.mark.parametrize(
    ("form_value", "json_value"),
    [("-1", -1), ("1.5", 1.5), ("x", "x"), (str(2**64), 2**64)],
    ids=["negative", "fraction", "text", "over-2**63"],
)
def test_bad_seed(client: httpx.Client, form_value: str, json_value: object) -> None:
    r = client.post(RECON, **multipart(("file", GOOD_PNG, "a.png"), ("seed", form_value, None)))
    assert_error(r, 422, "invalid_request", "seed")
    r = client.post(RECON, json={"image": b64(GOOD_PNG), "seed": json_value})
    assert_error(r, 422, "invalid_request", "seed")
    assert_alive(client)


@pytest.mark.parametrize(
    ("path", "parts", "unknown", "known", "hint"),
    [
        (RECON, [("maskratio", "0.5", None)], ["maskratio"], RECON_FIELDS, "mask_ratio"),
        (
            RECON,
            [("Seed", "1", None), ("size", "64", None)],
            ["Seed", "size"],
            RECON_FIELDS,
            "seed",
        ),
        (RECON, [("image", GOOD_PNG, "b.png")], ["image"], RECON_FIELDS, None),
        (UPLOAD, [("pooling", "mean", None), ("user", "me", None)], ["user"], UPLOAD_FIELDS, None),
        (UPLOAD, [("normalise", "false", None)], ["normalise"], UPLOAD_FIELDS, "normalize"),
    ],
    ids=["recon-typo", "recon-two", "recon-file-part", "upload-openai-field", "upload-spelling"],
)
def test_unknown_form_field_is_named_with_the_known_ones(
    client: httpx.Client,
    path: str,
    parts: list[tuple[str, bytes | str, str | None]],
    unknown: list[str],
    known: tuple[str, ...],
    hint: str | None,
) -> None:
    """A misspelt option is refused, not silently replaced by its default: the message
    names every unknown part, every known field, and the near miss when there is one."""
    r = client.post(path, **multipart(("file", GOOD_PNG, "a.png"), *parts))
    message = assert_error(r, 422, "invalid_request", "unknown form field")["message"]
    for name in unknown:
        assert f"'{name}'" in message, message
    listed = message.split("known fields are", 1)[1]
    assert all(f"'{name}'" in listed for name in known), message
    if hint:
        assert f"did you mean '{hint}'" in message, message
    else:
        assert "did you mean" not in message, message
    # The same form without the unknown parts is answered.
    good = [p for p in parts if p[0] not in unknown]
    assert client.post(path, **multipart(("file", GOOD_PNG, "a.png"), *good)).status_code == 200
    assert_alive(client)


def test_good_reconstruction_after_the_bad_ones(client: httpx.Client) -> None:
    """The bad cases above are refused for what they are: the same request with sane
    values works on both paths and gives the same mask for the same seed."""
    form = client.post(
        RECON,
        **multipart(("file", GOOD_PNG, "a.png"), ("mask_ratio", "0.5", None), ("seed", "7", None)),
    )
    body = client.post(RECON, json={"image": b64(GOOD_PNG), "mask_ratio": 0.5, "seed": 7})
    assert form.status_code == body.status_code == 200, (form.text, body.text)
    assert form.json()["mask"] == body.json()["mask"]
    assert sum(map(sum, form.json()["mask"])) == 8  # half of the 16 patches hidden


# -- low limits ---------------------------------------------------------------------------
LIMITS = dict(max_image_pixels=64 * 64, max_body_bytes=100_000, max_images_per_request=3)


@pytest.fixture(scope="module")
def limited(
    small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings = model_settings(small_model_dir, tmp_path_factory.mktemp("models"), **LIMITS)
    for url in serve(settings, ready=True):
        with httpx.Client(base_url=url, timeout=60) as c:
            yield c


def _stream(total: int, piece: int = 8192) -> Iterator[bytes]:
    yield b'{"input": ["'
    for _ in range(total // piece):
        yield b"A" * piece
    yield b'"]}'


def _stream_multipart(total: int, piece: int = 8192) -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    for _ in range(total // piece):
        yield b"\0" * piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_image_just_over_the_pixel_limit(limited: httpx.Client) -> None:
    at_limit = encode(Image.new("RGB", (64, 64), (9, 99, 199)), "PNG")
    over = encode(Image.new("RGB", (65, 64), (9, 99, 199)), "PNG")
    assert limited.post(EMB, json=images(at_limit)).status_code == 200
    error = assert_error(limited.post(EMB, json=images(over)), 413, "too_large", "4096")
    assert "65x64" in error["message"]
    r = limited.post(UPLOAD, **multipart(("file", over, "over.png")))
    assert_error(r, 413, "too_large", "pixel")
    assert_error(limited.post(RECON, json={"image": b64(over)}), 413, "too_large", "pixel")
    assert_alive(limited)


def test_bomb_header_on_a_low_limit(limited: httpx.Client) -> None:
    error = assert_error(
        limited.post(EMB, json=images(png_claiming(100, 100))), 413, "too_large", "before decoding"
    )
    assert "10000 pixels" in error["message"]
    assert_alive(limited)


@pytest.mark.parametrize("n", [4, 10])
def test_too_many_images(limited: httpx.Client, n: int) -> None:
    r = limited.post(EMB, json=images(*[GOOD_PNG] * n))
    assert_error(r, 413, "too_large", "MAE_MAX_IMAGES_PER_REQUEST")
    r = limited.post(UPLOAD, **multipart(*[("file", GOOD_PNG, f"{i}.png") for i in range(n)]))
    assert_error(r, 413, "too_large", "images")
    assert_alive(limited)


def test_images_at_the_count_limit_work(limited: httpx.Client) -> None:
    r = limited.post(UPLOAD, **multipart(*[("file", GOOD_PNG, f"{i}.png") for i in range(3)]))
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1, 2]


def test_body_over_the_limit_with_content_length(limited: httpx.Client) -> None:
    body = json.dumps({"input": ["A" * 150_000]}).encode()
    r = limited.post(EMB, content=body, headers={"content-type": "application/json"})
    assert int(r.request.headers["content-length"]) > LIMITS["max_body_bytes"]
    assert_error(r, 413, "too_large", "MAE_MAX_BODY_BYTES")
    form = multipart(("file", b"\0" * 150_000, "big.png"))
    assert_error(limited.post(UPLOAD, **form), 413, "too_large", "MAE_MAX_BODY_BYTES")
    assert_error(limited.post(RECON, **form), 413, "too_large", "MAE_MAX_BODY_BYTES")
    assert_alive(limited)


@pytest.mark.parametrize(
    ("path", "stream", "ctype"),
    [
        (EMB, _stream, "application/json"),
        (UPLOAD, _stream_multipart, f"multipart/form-data; boundary={BOUNDARY}"),
        (RECON, _stream_multipart, f"multipart/form-data; boundary={BOUNDARY}"),
    ],
    ids=["json", "upload", "reconstruction"],
)
def test_body_over_the_limit_streamed_without_content_length(
    limited: httpx.Client, path: str, stream: Callable[[int], Iterator[bytes]], ctype: str
) -> None:
    r = limited.post(path, content=stream(200_000), headers={"content-type": ctype})
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "too_large", "MAE_MAX_BODY_BYTES")
    assert_alive(limited)


def test_streamed_body_under_the_limit_works(limited: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        body = json.dumps(images(GOOD_PNG)).encode()
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = limited.post(EMB, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 200, r.text


# -- API keys -----------------------------------------------------------------------------
KEYS = ["key-one-5f2a", "key-two-93bc"]


@pytest.fixture(scope="module")
def keyed(
    small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings = model_settings(small_model_dir, tmp_path_factory.mktemp("models"), api_keys=KEYS)
    for url in serve(settings, ready=True):
        with httpx.Client(base_url=url, timeout=60) as c:
            yield c


@pytest.mark.parametrize(
    ("authorization", "word"),
    [
        (None, "no API key"),
        ("Bearer", "no API key"),
        ("Bearer not-a-key", "wrong API key"),
        (f"Bearer {KEYS[0]}x", "wrong API key"),
        (f"Basic {KEYS[0]}", "wrong API key"),
        (KEYS[0], "API key"),
    ],
    ids=["missing", "empty-bearer", "wrong", "key-plus-one", "basic-scheme", "no-scheme"],
)
def test_missing_or_wrong_api_key(
    keyed: httpx.Client, authorization: str | None, word: str
) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    requests = [
        {"method": "POST", "url": EMB, "json": images(GOOD_PNG)},
        {"method": "POST", "url": UPLOAD, **multipart(("file", GOOD_PNG, "a.png"))},
        {"method": "POST", "url": RECON, "json": {"image": b64(GOOD_PNG)}},
    ]
    for request in requests:
        merged = {**request, "headers": {**request.get("headers", {}), **headers}}
        r = keyed.request(**merged)
        assert_error(r, 401, "unauthorized", word)
        assert r.headers["www-authenticate"] == "Bearer"
    assert_alive(keyed, headers={"authorization": f"Bearer {KEYS[1]}"})


@pytest.mark.parametrize("key", KEYS)
def test_the_right_api_key_works(keyed: httpx.Client, key: str) -> None:
    auth = {"authorization": f"Bearer {key}"}
    assert keyed.post(EMB, json=images(GOOD_PNG), headers=auth).status_code == 200
    form = multipart(("file", GOOD_PNG, "a.png"))
    r = keyed.post(UPLOAD, content=form["content"], headers={**form["headers"], **auth})
    assert r.status_code == 200, r.text
    r = keyed.post(RECON, json={"image": b64(GOOD_PNG), "seed": 1}, headers=auth)
    assert r.status_code == 200, r.text
    # probes stay open without a key
    assert keyed.get("/health").status_code == 200


def test_a_bad_request_with_no_key_is_refused_for_the_key(keyed: httpx.Client) -> None:
    """Without a key the body is never looked at: 401, not the 400 it would earn."""
    r = keyed.post(EMB, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 401, "unauthorized", "API key")


@pytest.mark.parametrize("drop", ["closed", "reset"])
@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (EMB, "application/json"),
        (UPLOAD, "multipart/form-data; boundary=cut"),
        (RECON, "application/json"),
    ],
)
def test_a_body_cut_mid_way_is_the_clients_499_not_a_500(
    model_server, client: httpx.Client, path: str, content_type: str, drop: str
) -> None:
    """A client that drops the connection half-way through its body (a crash, a broken
    network) is counted as the client's 499, never the server's 500, with no traceback;
    the server goes on (the hub's routes: tests/service/test_hub_faults.py)."""
    from .test_hub_faults import answered, cut_request

    route = path.split("?")[0]
    before = answered(model_server.url, route, 499)
    if content_type.startswith("multipart"):
        body = b'--cut\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        body += b"Content-Type: image/png\r\n\r\n" + GOOD_PNG * 40
    else:
        body = json.dumps({"input": [b64(GOOD_PNG)] * 40, "image": b64(GOOD_PNG)}).encode()
    cut_request(model_server.url, "POST", path, {"Content-Type": content_type}, body, drop)
    deadline = time.monotonic() + 10
    while answered(model_server.url, route, 499) < before + 1:
        assert answered(model_server.url, route, 500) == 0, "a cut body was a server error"
        assert time.monotonic() < deadline, "the server never finished the cut request"
        time.sleep(0.02)
    assert_alive(client)


@pytest.mark.parametrize("path", [EMB, UPLOAD])
def test_a_client_gone_while_its_images_wait_is_a_499_not_a_500(
    small_model_dir: Path, tmp_path: Path, path: str
) -> None:
    """A client that sends its whole request and then goes away while its images wait
    for a batch (wrk and load balancers do this at the end of a run) is the client's 499:
    the wait is cancelled, no 500, no traceback, and the server goes on."""
    from .test_hub_faults import answered

    # A lone image waits up to 3 s for others to batch with: time for the client to leave.
    settings = model_settings(small_model_dir, tmp_path, max_batch_wait_ms=3000.0)
    if path == EMB:
        headers, body = {"Content-Type": "application/json"}, json.dumps(images(GOOD_PNG))
        body = body.encode()
    else:
        form = multipart(("file", GOOD_PNG, "a.png"))
        headers, body = form["headers"], form["content"]
    for url in serve(settings, ready=True):
        host, port = url.removeprefix("http://").split(":")
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            time.sleep(0.3)  # read, decoded, waiting in the batcher
        deadline = time.monotonic() + 10
        route = path.split("?")[0]
        while answered(url, route, 499) < 1:
            assert answered(url, route, 500) == 0, "a client gone was a server error"
            assert time.monotonic() < deadline, "the server never finished the request"
            time.sleep(0.02)
        r = httpx.post(f"{url}{EMB}", json=images(GOOD_PNG), timeout=30)
        assert r.status_code == 200, r.text
