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
from mae_core.masking import MASK_STRATEGIES

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


# -- mask strategies ---------------------------------------------------------------------------
def _reconstruct_json(url: str, photo: bytes, **fields: object) -> httpx.Response:
    body = {"image": base64.b64encode(photo).decode(), **fields}
    return httpx.post(f"{url}/v1/reconstructions", json=body, timeout=60)


def _library_mask(strategy: str, mask_ratio: float, seed: int, grid: int = GRID) -> np.ndarray:
    """The mask mae_core's `sample_mask` draws for `seed` as the reconstruction does (a CPU
    generator seeded with it, one image): what the server must answer, computed apart."""
    import torch

    from mae_core.masking import sample_mask

    generator = torch.Generator().manual_seed(seed)
    masking = sample_mask(
        torch.zeros(1, grid * grid, 1), mask_ratio, strategy, generator=generator,
        grid_size=(grid, grid),
    )  # fmt: skip
    return masking.mask[0].reshape(grid, grid).int().numpy()


def _assert_error(r: httpx.Response, status: int, code: str, *words: str) -> str:
    """The one error shape, with `status` and `code`; returns its message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == JSON
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error
    return error["message"]


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
def test_each_strategy_masks_as_it_says(model_server, photo, strategy: str) -> None:
    """Form and JSON give the same answer, which names its strategy and holds the mask
    mae_core's strategy draws for that seed, with the strategy's shape; the same seed and
    strategy give the same mask again."""
    seed = 5
    form = _reconstruct(model_server.url, photo, mask_strategy=strategy, seed=seed)
    assert form.status_code == 200, form.text
    answer = form.json()
    as_json = _reconstruct_json(model_server.url, photo, mask_strategy=strategy, seed=seed)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json() == answer
    assert (answer["mask_strategy"], answer["mask_ratio"], answer["seed"]) == (strategy, 0.75, 5)

    mask = np.array(answer["mask"])
    assert mask.shape == (GRID, GRID) and mask.sum() == 12  # 16 patches, 4 kept
    assert np.array_equal(mask, _library_mask(strategy, 0.75, seed))
    if strategy != "random":  # the strategy reached the model: not the random mask
        assert not np.array_equal(mask, _library_mask("random", 0.75, seed))
        assert f"{strategy} masking" in answer["caption"]
    if strategy == "grid":  # one visible patch per 2x2 cell, all at the same offset
        cells = (1 - mask).reshape(GRID // 2, 2, GRID // 2, 2).transpose(0, 2, 1, 3)
        assert (cells.sum(axis=(2, 3)) == 1).all(), mask
        assert (cells == cells[0, 0]).all(), mask
    if strategy == "centre":  # the centre hidden, the border partly visible
        assert mask[1:3, 1:3].all() and not mask[[0, -1]].all(), mask
    # The pictures follow the mask: hidden patches grey, visible ones the original's.
    visible = np.kron(1 - mask, np.ones((8, 8), dtype=int)).astype(bool)
    panels = {k: _png(v) for k, v in answer["panels"].items()}
    assert (panels["masked"][~visible] == 128).all()
    assert (panels["reconstruction_visible"][visible] == panels["original"][visible]).all()

    again = _reconstruct(model_server.url, photo, mask_strategy=strategy, seed=seed).json()
    assert again == answer


def test_random_is_the_default_strategy(model_server, photo) -> None:
    plain = _reconstruct(model_server.url, photo, seed=9).json()
    named = _reconstruct(model_server.url, photo, seed=9, mask_strategy="random").json()
    assert plain["mask_strategy"] == "random" and plain == named
    assert "masking" not in plain["caption"].split(";")[0]  # "12/16 patches hidden (...)"


def test_grid_offset_and_block_shape_follow_the_seed(model_server, photo) -> None:
    """Over seeds, grid masking uses more than one of the four offsets and block masking
    more than one mask: the seed is sampled, not ignored; every mask is the library's."""
    offsets, blocks = set(), set()
    for seed in range(8):
        grid = np.array(_reconstruct(model_server.url, photo, mask_strategy="grid", seed=seed)
                        .json()["mask"])  # fmt: skip
        assert np.array_equal(grid, _library_mask("grid", 0.75, seed)), seed
        row, col = np.argwhere(grid == 0)[0]
        offsets.add((row % 2, col % 2))
        block = _reconstruct_json(model_server.url, photo, mask_strategy="block", seed=seed)
        assert np.array_equal(block.json()["mask"], _library_mask("block", 0.75, seed)), seed
        blocks.add(str(block.json()["mask"]))
    assert len(offsets) > 1 and len(blocks) > 1, (offsets, blocks)


def test_centre_at_a_quarter_hides_exactly_the_centre(model_server, photo) -> None:
    answer = _reconstruct(model_server.url, photo, mask_strategy="centre", mask_ratio=0.25)
    assert answer.status_code == 200, answer.text
    expected = np.zeros((GRID, GRID), dtype=int)
    expected[1:3, 1:3] = 1
    assert np.array_equal(answer.json()["mask"], expected)


def test_png_answer_of_a_strategy(model_server, photo) -> None:
    r = httpx.post(
        f"{model_server.url}/v1/reconstructions",
        files={"file": ("cat.jpg", photo, "image/jpeg")},
        data={"seed": "5", "mask_strategy": "grid"},
        headers={"Accept": "image/png"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"] == PNG, r.text
    assert Image.open(io.BytesIO(r.content)).width > 4 * 256


@pytest.mark.parametrize("value", ["bogus", "Random", "grid ", "", "center"])
def test_unknown_strategy_is_422_naming_the_valid_ones(model_server, photo, value: str) -> None:
    for r in (
        _reconstruct(model_server.url, photo, mask_strategy=value),
        _reconstruct_json(model_server.url, photo, mask_strategy=value),
    ):
        message = _assert_error(r, 422, "invalid_request", "mask_strategy")
        assert all(f"'{name}'" in message for name in MASK_STRATEGIES), message


@pytest.mark.parametrize("value", [1, None, ["grid"]])
def test_a_strategy_that_is_no_string_is_422(model_server, photo, value: object) -> None:
    r = _reconstruct_json(model_server.url, photo, mask_strategy=value)
    _assert_error(r, 422, "invalid_request", "mask_strategy")


@pytest.mark.parametrize("mask_ratio", [0.5, 0.8, 0.25])
def test_grid_at_another_ratio_is_422(model_server, photo, mask_ratio: float) -> None:
    """Grid masking keeps one patch of every 2x2 cell: 0.75 only. Refused with what to
    change, on both paths (and with a broken image too: it is checked first)."""
    for r in (
        _reconstruct(model_server.url, photo, mask_strategy="grid", mask_ratio=mask_ratio),
        _reconstruct_json(model_server.url, photo, mask_strategy="grid", mask_ratio=mask_ratio),
        _reconstruct(model_server.url, photo[:200], mask_strategy="grid", mask_ratio=mask_ratio),
    ):
        _assert_error(r, 422, "invalid_request", "grid", "mask_ratio", "0.75", str(mask_ratio))
    ok = _reconstruct(model_server.url, photo, mask_strategy="block", mask_ratio=mask_ratio)
    assert ok.status_code == 200 and ok.json()["mask_strategy"] == "block", ok.text


def test_grid_on_an_odd_patch_grid_is_422(tmp_path: Path, photo) -> None:
    """A 24 px model in 8 px patches has a 3 x 3 grid: no 2x2 cells, so grid masking is a
    422 naming the model's grid and the strategies it can take; they work."""
    odd = tmp_path / "odd"
    create_model("mae_vit_tiny_patch8", **{**SMALL_MODEL, "img_size": 24}).save_pretrained(odd)
    for url in serve(model_settings(odd, tmp_path / "models"), ready=True):
        r = _reconstruct(url, photo, mask_strategy="grid", seed=1)
        message = _assert_error(r, 422, "invalid_request", "grid", "3x3")
        assert all(f"'{name}'" in message for name in ("random", "block", "centre")), message
        for strategy in ("random", "block", "centre"):
            r = _reconstruct_json(url, photo, mask_strategy=strategy, seed=1)
            assert r.status_code == 200, r.text
            mask = np.array(r.json()["mask"])
            assert np.array_equal(mask, _library_mask(strategy, 0.75, 1, grid=3)), strategy
        assert mask[1, 1] == 1  # centre, last: the middle patch is hidden


def test_openapi_documents_the_strategies(model_server) -> None:
    """Both request bodies take `mask_strategy` as an enum of mae_core's strategies, the
    schema's spelling of them is mae_core's, and the answer says which was used."""
    import typing

    from service.schemas import MaskStrategy

    assert typing.get_args(MaskStrategy) == MASK_STRATEGIES
    spec = httpx.get(f"{model_server.url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/v1/reconstructions"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]["mask_strategy"]
    as_json = body[JSON]["schema"]
    if "$ref" in as_json:
        as_json = schemas[as_json["$ref"].rsplit("/", 1)[1]]
    as_json = as_json["properties"]["mask_strategy"]
    for field in (form, as_json):
        assert field["enum"] == list(MASK_STRATEGIES) and field["default"] == "random", field
    answer = schemas["ReconstructionResponse"]
    assert "mask_strategy" in answer["required"]
    assert answer["properties"]["mask_strategy"]["enum"] == list(MASK_STRATEGIES)
