"""`POST /v1/reconstructions` through a real server."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mae_core import create_model

from .conftest import SMALL_MODEL, model_settings, serve

GRID = SMALL_MODEL["img_size"] // 8  # patch 8


@pytest.fixture(scope="module")
def photo() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _reconstruct(url: str, photo: bytes, **fields: object) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/reconstructions",
        files={"file": ("cat.jpg", photo, "image/jpeg")},
        data={k: str(v) for k, v in fields.items()},
        timeout=60,
    )


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_answer_holds_panels_mask_and_error(model_server, photo) -> None:
    r = _reconstruct(model_server.url, photo, mask_ratio=0.75, seed=7)
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["seed"], a["mask_ratio"]) == (7, 0.75)
    mask = np.array(a["mask"])
    assert mask.shape == (GRID, GRID) and set(np.unique(mask)) <= {0, 1}
    assert mask.sum() == 12  # 16 patches, 4 kept
    error = np.array(a["patch_error"])
    assert error.shape == (GRID, GRID) and np.isfinite(error).all()
    assert a["loss"] == pytest.approx(error[mask == 1].mean(), rel=1e-4)
    size = SMALL_MODEL["img_size"]
    panels = {k: _png(v) for k, v in a["panels"].items()}
    assert set(panels) == {"original", "masked", "reconstruction", "reconstruction_visible"}
    for pixels in panels.values():
        assert pixels.shape == (size, size, 3)
    # The visible patches of the pasted panel are the original's pixels.
    visible = np.kron(1 - mask, np.ones((8, 8), dtype=int)).astype(bool)
    assert (panels["reconstruction_visible"][visible] == panels["original"][visible]).all()
    assert (panels["masked"][~visible] == 128).all()
    assert "mask ratio 0.75" in a["caption"]


def test_same_seed_same_answer_and_a_seed_is_always_reported(model_server, photo) -> None:
    first = _reconstruct(model_server.url, photo, seed=123).json()
    again = _reconstruct(model_server.url, photo, seed=123).json()
    other = _reconstruct(model_server.url, photo, seed=124).json()
    assert first == again
    assert first["mask"] != other["mask"]
    unseeded = _reconstruct(model_server.url, photo).json()
    replay = _reconstruct(model_server.url, photo, seed=unseeded["seed"]).json()
    assert replay == unseeded


def test_json_body_gives_the_same_answer_as_multipart(model_server, photo) -> None:
    body = {"image": base64.b64encode(photo).decode(), "mask_ratio": 0.5, "seed": 3}
    r = httpx.post(f"{model_server.url}/v1/reconstructions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == _reconstruct(model_server.url, photo, mask_ratio=0.5, seed=3).json()


def test_accept_png_gives_one_picture(model_server, photo) -> None:
    r = httpx.post(
        f"{model_server.url}/v1/reconstructions",
        files={"file": ("cat.jpg", photo, "image/jpeg")},
        data={"seed": "5"},
        headers={"Accept": "image/png"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-mae-seed"] == "5"
    figure = Image.open(io.BytesIO(r.content))
    assert figure.width > 4 * 256  # four panels, each upscaled to >= 256 px
    assert np.asarray(figure).std() > 10  # pictures, not a blank canvas


def test_encoder_only_model_answers_409(tmp_path: Path, photo) -> None:
    encoder_only = tmp_path / "encoder-only"
    create_model("mae_vit_tiny_patch8", **SMALL_MODEL).save_pretrained(
        encoder_only, encoder_only=True
    )
    for url in serve(model_settings(encoder_only, tmp_path / "models"), ready=True):
        r = _reconstruct(url, photo)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "no_decoder"
        assert "encoder only" in r.json()["error"]["message"]
        ok = httpx.post(f"{url}/v1/embeddings/upload", files={"file": photo}, timeout=30)
        assert ok.status_code == 200


# -- content negotiation: Accept with q-values ----------------------------------------------
BROWSER_PAGE = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
BROWSER_IMG = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
PNG, JSON = "image/png", "application/json"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, JSON),  # no header at all
        ("*/*", JSON),
        ("application/json", JSON),
        ("application/*", JSON),
        ("image/png", PNG),
        ("image/*", PNG),
        ("IMAGE/PNG", PNG),  # media types are case-insensitive
        ("image/png, application/json", PNG),  # equal q: the one listed first
        ("application/json, image/png", JSON),
        ("application/json;q=0.5, image/*", PNG),  # q-values are read
        ("image/png;q=0.2, application/json;q=0.9", JSON),
        ("image/png;q=0, */*", JSON),  # q=0: "not this one"
        ("image/*, */*", PNG),  # the more specific range wins a tie
        (BROWSER_PAGE, JSON),  # a browser tab: only */* matches either
        (BROWSER_IMG, PNG),  # an <img> tag: image/* beats */*;q=0.8
    ],
)
def test_accept_is_negotiated_with_q_values(
    model_server, photo, accept: str | None, expected: str
) -> None:
    with httpx.Client(base_url=model_server.url, timeout=60) as client:
        del client.headers["accept"]  # httpx sends */* unless told otherwise
        headers = {} if accept is None else {"Accept": accept}
        r = client.post(
            "/v1/reconstructions",
            files={"file": ("cat.jpg", photo, "image/jpeg")},
            data={"seed": "5"},
            headers=headers,
        )
    assert r.request.headers.get("accept") == accept
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == expected
    assert r.headers["vary"] == "Accept"
    if expected == PNG:
        assert Image.open(io.BytesIO(r.content)).format == "PNG"
        assert r.headers["x-mae-seed"] == "5"
    else:
        assert r.json()["seed"] == 5


@pytest.mark.parametrize(
    "accept", ["image/gif", "text/html", "image/png;q=0", "image/*;q=0.8, image/png;q=0", "*/*;q=0"]
)
def test_accept_with_nothing_we_make_is_406(model_server, photo, accept: str) -> None:
    r = _reconstruct_with(model_server.url, photo, {"Accept": accept})
    assert r.status_code == 406, r.text
    assert r.headers["content-type"] == JSON
    error = r.json()["error"]
    assert error["code"] == "not_acceptable"
    assert accept in error["message"]
    assert JSON in error["message"] and PNG in error["message"]


def test_406_comes_before_any_work_on_the_body(model_server, photo) -> None:
    """A refused Accept is answered before the image is read: a broken image, or a JSON
    body, still gets the 406 (the client learns the one thing it must change first)."""
    r = _reconstruct_with(model_server.url, photo[:100], {"Accept": "image/gif"})
    assert r.status_code == 406 and r.json()["error"]["code"] == "not_acceptable", r.text
    r = httpx.post(
        f"{model_server.url}/v1/reconstructions",
        json={"image": "not base64 at all!"},
        headers={"Accept": "text/html"},
        timeout=60,
    )
    assert r.status_code == 406 and r.json()["error"]["code"] == "not_acceptable", r.text
    # The server lives on: the same photo with an Accept we serve works.
    assert _reconstruct_with(model_server.url, photo, {"Accept": "image/*"}).status_code == 200


def _reconstruct_with(url: str, photo: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/reconstructions",
        files={"file": ("cat.jpg", photo, "image/jpeg")},
        headers=headers,
        timeout=60,
    )


def test_openapi_lists_every_status_in_the_error_shape(model_server) -> None:
    spec = httpx.get(f"{model_server.url}/openapi.json", timeout=30).json()
    responses = spec["paths"]["/v1/reconstructions"]["post"]["responses"]
    assert set(responses["200"]["content"]) == {JSON, PNG}
    expected = {"400", "401", "404", "406", "409", "413", "415", "422", "429", "503", "504"}
    assert expected <= set(responses), sorted(responses)

    def resolve(schema: dict) -> dict:
        ref = schema.get("$ref")
        return resolve(spec["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else schema

    for status, entry in responses.items():
        if status == "200":
            continue
        assert entry["description"], status
        body = resolve(entry["content"][JSON]["schema"])
        assert body["required"] == ["error"], status
        detail = resolve(body["properties"]["error"])
        assert set(detail["required"]) == {"code", "message"}, status
    assert "Accept" in responses["406"]["description"]
