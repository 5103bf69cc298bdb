"""The demo page (`GET /`) in a real headless Chromium, driven by Playwright, against a real
server of the small random MAE (32 px, patch 8: a 4 x 4 grid of 16 patches).

Chromium is Debian's package at /usr/bin/chromium (`apt-get install -y chromium`; CI's
.ci/run installs it); Playwright's own browser downloads are not used.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from mae_core import create_model
from mae_core.visualize import GREY
from service.app import create_app

from .conftest import SMALL_MODEL, model_settings, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000  # two shared CPU cores: be patient
SIZE = SMALL_MODEL["img_size"]
PATCH = 8
PATCHES = (SIZE // PATCH) ** 2
PANELS = {  # element id -> key in the answer's "panels"
    "panel-original": "original",
    "panel-masked": "masked",
    "panel-reconstruction": "reconstruction",
    "panel-visible": "reconstruction_visible",
}
VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)
STRIP_UP, STRIP_DOWN = (37, 99, 235), (234, 88, 12)  # the embedding strip's bar colours
EMBED_DIM = 192  # mae_vit_tiny_patch8
SAMPLES = Path(__file__).resolve().parents[2] / "service" / "static" / "samples"
API_KEY = "page-test-key"


# -- the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the demo page is tested in Debian's Chromium. Install it "
            "with `apt-get install -y chromium` (CI's .ci/run does this before make test)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Python Playwright is missing: pip install -e '.[dev]' (do not run "
            "`playwright install`: the tests use the system Chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page plus what it did: console errors, uncaught errors, requests, dialogs."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def posts(self) -> list[Any]:
        return [r for r in self.requests if r.method == "POST"]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(url, permissions=()) -> a Tab on a fresh browser context (granted
    `permissions`, e.g. the clipboard's), loaded and recording."""
    contexts = []

    def _open(url: str, permissions: tuple[str, ...] = ()) -> Tab:
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, permissions=list(permissions)
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        tab = Tab(page)
        page.on(
            "console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None
        )
        page.on("pageerror", lambda exc: tab.page_errors.append(str(exc)))
        page.on("request", lambda r: tab.requests.append(r))

        def dialog(d: Any) -> None:
            tab.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.goto(f"{url}/")
        return tab

    yield _open
    for context in contexts:
        context.close()


# -- helpers --------------------------------------------------------------------------------
def wait_result(page: Any, **texts: str) -> None:
    """Wait until the page shows a finished result whose fields (element id -> text, '_'
    for '-' in ids) read as given."""
    expected = {k.replace("_", "-"): v for k, v in texts.items()}
    page.wait_for_function(
        """(expected) => document.getElementById("results").dataset.state === "done"
            && Object.entries(expected).every(
                ([id, text]) => document.getElementById(id).textContent === text)""",
        arg=expected,
        timeout=WAIT_MS,
    )


def wait_status(page: Any, prefix: str) -> None:
    """Wait until the status line starts with `prefix`. (Functions, not bare expressions:
    the page's Content-Security-Policy forbids the eval Playwright uses for those.)"""
    page.wait_for_function(
        "(prefix) => document.getElementById('status').textContent.startsWith(prefix)", arg=prefix
    )


def wait_embedding(page: Any, name: str, pooling: str | None = None) -> None:
    """Wait until the embedding card shows a finished vector of the image `name` (and, when
    given, of `pooling`)."""
    page.wait_for_function(
        """([name, pooling]) => {
            const card = document.getElementById("embedding");
            return card.dataset.state === "done"
                && document.getElementById("embedding-of").textContent === `of ${name}`
                && (pooling === null
                    || document.getElementById("embedding-pooling").textContent === pooling);
        }""",
        arg=[name, pooling],
        timeout=WAIT_MS,
    )


def api_embedding(url: str, data: bytes, pooling: str) -> list[float]:
    """The server's embedding of `data` over its JSON route (default normalisation)."""
    body = {"input": [base64.b64encode(data).decode()], "pooling": pooling}
    r = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["embedding"]


def embedding_posts(tab: Tab) -> list[dict[str, Any]]:
    """The JSON bodies the page sent to /v1/embeddings, in order."""
    return [
        json.loads(r.post_data) for r in tab.posts() if urlsplit(r.url).path == "/v1/embeddings"
    ]


def png_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def panel(page: Any, element_id: str) -> np.ndarray:
    """The pixels an <img> panel shows (its data: URL decoded)."""
    src = page.get_attribute(f"#{element_id}", "src")
    prefix = "data:image/png;base64,"
    assert src and src.startswith(prefix), src
    return png_pixels(src[len(prefix) :])


def grey_patches(pixels: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: the patches that are uniformly GREY (hidden) in a masked panel."""
    rows, cols = pixels.shape[0] // PATCH, pixels.shape[1] // PATCH
    tiles = pixels.reshape(rows, PATCH, cols, PATCH, 3)
    return (tiles == GREY).all(axis=(1, 3, 4))


def hidden_count(mask_ratio: float) -> int:
    """The official len_keep: int(L * (1 - mask_ratio)) visible patches."""
    return PATCHES - int(PATCHES * (1 - mask_ratio))


def click_sample(tab: Tab, index: int = 0) -> dict[str, Any]:
    """Click a sample photo; returns the server's JSON answer the page got."""
    with tab.page.expect_response(lambda r: r.url.endswith("/v1/reconstructions")) as info:
        tab.page.locator("#samples button").nth(index).click()
    answer = info.value.json()
    wait_result(tab.page, answer_seed=str(answer["seed"]))
    return answer


def photo_file(tmp_path: Path, name: str = "photo.jpg") -> Path:
    """A real JPEG photo (scikit-image's coffee cup, CC0), 150 x 100 px."""
    from skimage import data

    path = tmp_path / name
    Image.fromarray(data.coffee()).resize((150, 100)).save(path, quality=90)
    return path


# -- servers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_server(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = model_settings(
        small_model_dir, tmp_path_factory.mktemp("models"), api_keys=[API_KEY]
    )
    yield from serve(settings, ready=True)


@pytest.fixture
def failed_server(tmp_path: Path) -> Iterator[str]:
    """A real server whose model cannot load: /ready stays 503 (load_failed). Started here
    rather than with conftest's `serve`, which waits for /health to turn 200."""
    settings = model_settings(tmp_path / "no-such-model", tmp_path / "models")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.get(f"{url}/ready", timeout=1)
            if r.status_code == 503 and r.json()["error"]["code"] == "load_failed":
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the failing test server did not come up"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class BodyRecorder:
    """ASGI wrapper: the bodies of the POSTs to /v1/reconstructions as the server received
    them (Chromium does not hand Playwright a body that holds a file)."""

    def __init__(self, app: Any) -> None:
        self.app, self.bodies = app, []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/reconstructions":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(b"".join(chunks))
            return message

        await self.app(scope, recording, send)

    def fields(self) -> dict[str, str]:
        """The text fields of the last complete form received."""
        found = re.findall(rb'name="(\w+)"\r\n\r\n([^\r]*)\r\n', self.bodies[-1])
        return {k.decode(): v.decode() for k, v in found}


@pytest.fixture(scope="module")
def recorded_server(
    small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, BodyRecorder]]:
    """A real server of the small model whose reconstruction bodies are recorded."""
    settings = model_settings(small_model_dir, tmp_path_factory.mktemp("models"))
    recorder = BodyRecorder(create_app(settings))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(recorder, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the recorded test server did not get ready"
        time.sleep(0.05)
    try:
        yield url, recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- tests -------------------------------------------------------------------------------------
def test_page_loads_from_this_server_only(model_server, open_page) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    wait_status(page, "Ready")
    model_id = httpx.get(f"{model_server.url}/v1/models").json()["data"][0]["id"]
    assert model_id in page.text_content("#model-id")
    samples = page.locator("#samples button img")
    assert samples.count() >= 3
    page.wait_for_function(
        "() => [...document.querySelectorAll('#samples img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)"
    )
    for i in range(samples.count()):
        assert samples.nth(i).get_attribute("alt")
    # Every <input> has a label; the error box starts hidden.
    for input_id in ("file", "mask-ratio", "seed", "api-key"):
        assert page.locator(f"label[for='{input_id}']").count() == 1, input_id
    assert page.is_hidden("#error")
    assert page.input_value("#mask-ratio") == "0.75"
    assert page.text_content("#mask-ratio-value") == "0.75"

    click_sample(tab)
    pressed = [samples.nth(i).locator("..").get_attribute("aria-pressed") for i in range(3)]
    assert pressed == ["true", "false", "false"]
    assert tab.console_errors == [] and tab.page_errors == []
    hosts = {urlsplit(r.url).hostname for r in tab.requests if not r.url.startswith("data:")}
    assert hosts == {"127.0.0.1"}, hosts
    assert "/v1/reconstructions" in {urlsplit(r.url).path for r in tab.posts()}


def test_sample_shows_four_panels_loss_and_heatmap(model_server, open_page, tmp_path) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    answer = click_sample(tab)

    for element_id, key in PANELS.items():
        size = page.eval_on_selector(f"#{element_id}", "i => [i.naturalWidth, i.naturalHeight]")
        assert size == [SIZE, SIZE], element_id
        assert np.array_equal(panel(page, element_id), png_pixels(answer["panels"][key]))
        assert page.get_attribute(f"#{element_id}", "alt")
        rendering = page.eval_on_selector(
            f"#{element_id}", "i => getComputedStyle(i).imageRendering"
        )
        assert rendering == "pixelated"
    assert float(page.text_content("#loss")) == pytest.approx(answer["loss"], abs=1e-4)
    mask = np.array(answer["mask"])
    assert page.text_content("#hidden-count") == f"{mask.sum()} of {PATCHES} patches"
    assert mask.sum() == hidden_count(0.75)

    # The heat map: the worst hidden patch at the top of the colour scale, the best at the
    # bottom, visible patches dimmed (light).
    url = page.eval_on_selector("#heatmap", "c => c.toDataURL('image/png')")
    heat = png_pixels(url.split(",", 1)[1])
    rows, cols = mask.shape
    cell_h, cell_w = heat.shape[0] // rows, heat.shape[1] // cols
    error = np.where(mask == 1, np.array(answer["patch_error"]), np.nan)

    def centre(r: int, c: int) -> np.ndarray:
        return heat[r * cell_h + cell_h // 2, c * cell_w + cell_w // 2].astype(int)

    worst = np.unravel_index(np.nanargmax(error), error.shape)
    best = np.unravel_index(np.nanargmin(error), error.shape)
    assert np.abs(centre(*worst) - VIRIDIS_HIGH).max() <= 2
    assert np.abs(centre(*best) - VIRIDIS_LOW).max() <= 2
    for r, c in zip(*np.nonzero(mask == 0), strict=True):
        assert centre(r, c).min() >= 170, (r, c)

    # What the screen shows: each panel's box holds a picture, not a blank (a flat fill or
    # the empty checkerboard), and its mean colour is the panel's.
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    screen = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    for element_id, key in PANELS.items():
        box = page.locator(f"#{element_id}").bounding_box()
        assert box["width"] >= 4 * SIZE, (element_id, box)  # shown large
        x0, y0 = round(box["x"]) + 3, round(box["y"]) + 3
        x1, y1 = round(box["x"] + box["width"]) - 3, round(box["y"] + box["height"]) - 3
        crop = screen[y0:y1, x0:x1]
        assert crop.std() > 15, (element_id, crop.std())
        expected = png_pixels(answer["panels"][key]).reshape(-1, 3).mean(axis=0)
        assert np.abs(crop.reshape(-1, 3).mean(axis=0) - expected).max() < 8, element_id
    assert tab.console_errors == [] and tab.page_errors == []


def test_uploaded_jpeg_gives_the_apis_panels(model_server, open_page, tmp_path) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    wait_status(page, "Ready")
    photo = photo_file(tmp_path)
    page.fill("#seed", "5")
    page.set_input_files("#file", str(photo))
    wait_result(page, answer_seed="5", file_name="photo.jpg")

    def api_panels(name: str, data: bytes, mime: str) -> dict[str, Any]:
        r = httpx.post(
            f"{model_server.url}/v1/reconstructions",
            files={"file": (name, data, mime)},
            data={"seed": "5", "mask_ratio": "0.75"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.json()

    direct = api_panels("photo.jpg", photo.read_bytes(), "image/jpeg")
    for element_id, key in PANELS.items():
        assert np.array_equal(panel(page, element_id), png_pixels(direct["panels"][key]))
    assert page.text_content("#loss") == f"{direct['loss']:.4f}"
    assert page.is_hidden("#error")

    # Dropping a file on the drop zone works the same way (a real DataTransfer and File).
    png = io.BytesIO()
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(png, format="PNG")
    page.eval_on_selector(
        "#drop",
        """(zone, b64) => {
            const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }""",
        base64.b64encode(png.getvalue()).decode(),
    )
    wait_result(page, file_name="dropped.png")
    dropped = api_panels("dropped.png", png.getvalue(), "image/png")
    for element_id, key in PANELS.items():
        assert np.array_equal(panel(page, element_id), png_pixels(dropped["panels"][key]))
    assert dropped["panels"]["original"] != direct["panels"]["original"]
    assert tab.console_errors == [] and tab.page_errors == []


def test_slider_rerequests_and_changes_the_mask(model_server, open_page) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    wait_status(page, "Ready")
    page.fill("#seed", "7")
    click_sample(tab)
    before = panel(page, "panel-masked")
    assert grey_patches(before).sum() == hidden_count(0.75)
    posts = len(tab.posts())

    page.focus("#mask-ratio")  # the keyboard moves the slider: 0.75 -> 0.65
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page.text_content("#mask-ratio-value") == "0.65"
    wait_result(page, answer_ratio="0.65", answer_seed="7")
    assert len(tab.posts()) > posts
    after = panel(page, "panel-masked")
    assert not np.array_equal(before, after)
    assert grey_patches(after).sum() == hidden_count(0.65)
    # Same noise, fewer hidden: the patches still hidden were hidden before.
    assert (grey_patches(after) <= grey_patches(before)).all()
    assert page.text_content("#hidden-count") == f"{hidden_count(0.65)} of {PATCHES} patches"
    assert tab.console_errors == [] and tab.page_errors == []


def test_mask_strategy_picker(recorded_server, open_page) -> None:
    """The strategy is picked beside the slider (labelled, from the keyboard too), sent with
    each request and shown with the answer; grid pins the slider to 0.75 and says why,
    leaving grid gives the slider its value back."""
    url, recorder = recorded_server
    tab = open_page(url)
    page = tab.page
    wait_status(page, "Ready")
    assert page.locator("label[for='mask-strategy']").count() == 1
    options = page.eval_on_selector_all("#mask-strategy option", "os => os.map((o) => o.value)")
    assert options == ["random", "block", "grid", "centre"]
    assert page.input_value("#mask-strategy") == "random"
    assert "random" in page.text_content("#mask-strategy-help")
    assert page.is_hidden("#mask-ratio-fixed") and page.is_enabled("#mask-ratio")
    page.fill("#seed", "4")
    click_sample(tab)
    assert recorder.fields()["mask_strategy"] == "random"
    assert page.text_content("#answer-strategy") == "random"
    page.focus("#mask-ratio")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    wait_result(page, answer_ratio="0.65", answer_strategy="random")

    # Grid: the slider is fixed at 0.75, disabled, with a note saying why.
    page.select_option("#mask-strategy", "grid")
    assert page.is_disabled("#mask-ratio")
    assert page.input_value("#mask-ratio") == "0.75"
    assert page.text_content("#mask-ratio-value") == "0.75"
    assert page.is_visible("#mask-ratio-fixed")
    assert "0.75" in page.text_content("#mask-ratio-fixed")
    assert "mask-ratio-fixed" in page.get_attribute("#mask-ratio", "aria-describedby")
    assert "2×2" in page.text_content("#mask-strategy-help")
    wait_result(page, answer_ratio="0.75", answer_strategy="grid", answer_seed="4")
    sent = recorder.fields()
    assert (sent["mask_strategy"], sent["mask_ratio"], sent["seed"]) == ("grid", "0.75", "4")
    grey = grey_patches(panel(page, "panel-masked"))
    cells = (~grey).reshape(2, 2, 2, 2).transpose(0, 2, 1, 3)  # one kept per 2x2 cell
    assert (cells.sum(axis=(2, 3)) == 1).all(), grey
    assert "grid masking" in page.text_content("#caption")
    masked_caption = " ".join(page.text_content("#caption-masked").split())
    for word in ("Masked input", "grid", "grey", "visible"):
        assert word in masked_caption, masked_caption
    assert "grid" in page.get_attribute("#panel-masked", "alt")

    # Block, from the keyboard (one up from grid): the slider is free again, at 0.65.
    page.focus("#mask-strategy")
    page.keyboard.press("ArrowUp")
    assert page.input_value("#mask-strategy") == "block"
    wait_result(page, answer_ratio="0.65", answer_strategy="block", answer_seed="4")
    assert page.is_enabled("#mask-ratio") and page.is_hidden("#mask-ratio-fixed")
    assert page.input_value("#mask-ratio") == "0.65"
    sent = recorder.fields()
    assert (sent["mask_strategy"], sent["mask_ratio"]) == ("block", "0.65")
    assert grey_patches(panel(page, "panel-masked")).sum() == hidden_count(0.65)
    assert "block masking" in page.text_content("#caption")
    assert "block" in page.text_content("#caption-masked")
    assert "Rectangles" in page.text_content("#mask-strategy-help")
    assert tab.console_errors == [] and tab.page_errors == []


def test_grid_is_not_offered_on_an_odd_patch_grid(open_page, tmp_path) -> None:
    """A 24 px model in 8 px patches (3 x 3): the grid option is disabled, the rest work."""
    odd = tmp_path / "odd"
    create_model("mae_vit_tiny_patch8", **{**SMALL_MODEL, "img_size": 24}).save_pretrained(odd)
    for url in serve(model_settings(odd, tmp_path / "models"), ready=True):
        tab = open_page(url)
        page = tab.page
        wait_status(page, "Ready")
        assert page.is_disabled("#mask-strategy option[value='grid']")
        page.select_option("#mask-strategy", "centre")
        click_sample(tab)
        assert page.text_content("#answer-strategy") == "centre"
        assert grey_patches(panel(page, "panel-masked"))[1, 1]  # the middle patch hidden
        assert tab.console_errors == [] and tab.page_errors == []


def test_same_seed_same_mask(model_server, open_page) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    # No seed given: the server picks one, the page shows it and keeps it in the field.
    click_sample(tab, index=1)
    chosen = page.text_content("#answer-seed")
    assert chosen.isdigit() and page.input_value("#seed") == chosen

    page.fill("#seed", "11")
    wait_result(page, answer_seed="11")
    first = panel(page, "panel-masked")
    page.fill("#seed", "12")
    wait_result(page, answer_seed="12")
    other = panel(page, "panel-masked")
    page.fill("#seed", "11")
    wait_result(page, answer_seed="11")
    again = panel(page, "panel-masked")
    assert np.array_equal(first, again)
    assert not np.array_equal(grey_patches(first), grey_patches(other))

    page.click("#new-seed")
    fresh = page.input_value("#seed")
    assert fresh.isdigit() and fresh != "11"
    wait_result(page, answer_seed=fresh)
    assert tab.console_errors == [] and tab.page_errors == []


def test_non_image_file_shows_an_error_and_the_page_goes_on(
    model_server, open_page, tmp_path
) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    page.fill("#seed", "3")
    answer = click_sample(tab)
    original = panel(page, "panel-original")

    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error", state="visible")
    message = page.text_content("#error")
    assert "notes.txt" in message and "not an image" in message, message
    assert page.get_attribute("#results", "data-state") == "error"
    assert tab.dialogs == []  # shown on the page, never as alert()
    # The sample's result stays on show, and says so.
    assert page.locator("#samples button").first.get_attribute("aria-pressed") == "true"

    # The last good image stays: moving the slider reconstructs it again.
    page.focus("#mask-ratio")
    page.keyboard.press("ArrowRight")  # 0.75 -> 0.8
    wait_result(page, answer_ratio="0.8", answer_seed="3")
    assert page.is_hidden("#error")
    assert np.array_equal(panel(page, "panel-original"), original)
    assert grey_patches(panel(page, "panel-masked")).sum() == hidden_count(0.8)
    assert answer["mask_ratio"] == 0.75
    assert tab.page_errors == [] and tab.dialogs == []


def test_api_key_prompt(keyed_server, open_page) -> None:
    tab = open_page(keyed_server)
    page = tab.page
    page.wait_for_selector("#api-key-form", state="visible")
    assert "API key" in page.text_content("#error")
    page.locator("#samples button").first.click()  # waits for the key

    page.fill("#api-key", "wrong-key")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('error').textContent.includes('wrong API key')"
    )
    assert page.is_visible("#api-key-form")
    # Picking an image meanwhile keeps the prompt's message (it used to clear it, which
    # also raced with the wrong-key answer when the sample's fetch was slow).
    second = page.locator("#samples button").nth(1)
    second.click()
    # The page has taken the image in (it now waits for a key) before we look at the message.
    page.wait_for_selector(f"#results[data-waiting='{second.get_attribute('data-file')}']")
    assert "wrong API key" in page.text_content("#error")

    page.fill("#api-key", API_KEY)
    page.click("#api-key-submit")
    page.wait_for_selector("#api-key-form", state="hidden")
    wait_result(page)
    assert page.is_hidden("#error")
    assert page.eval_on_selector("#panel-masked", "i => i.naturalWidth") == SIZE
    sent = [r.headers.get("authorization") for r in tab.posts()]
    assert sent and sent[-1] == f"Bearer {API_KEY}"
    assert tab.page_errors == [] and tab.dialogs == []


def test_not_ready_server(failed_server, open_page) -> None:
    tab = open_page(failed_server)
    page = tab.page
    wait_status(page, "Not ready")
    page.wait_for_selector("#error", state="visible")
    assert "failed to load" in page.text_content("#error")
    first = page.locator("#samples button").first
    first.click()
    # A click while not ready is kept, not sent: wait until the page holds the image.
    page.wait_for_selector(f"#results[data-waiting='{first.get_attribute('data-file')}']")
    assert tab.posts() == []
    assert page.get_attribute("#results", "data-state") == "empty"
    assert tab.page_errors == [] and tab.dialogs == []


def test_panels_are_captioned_with_what_they_show(model_server, open_page) -> None:
    tab = open_page(model_server.url)
    page = tab.page
    click_sample(tab)

    def caption(element_id: str) -> str:
        return page.eval_on_selector(
            f"#{element_id}", "e => e.closest('figure').querySelector('figcaption').textContent"
        )

    wanted = {  # element -> words its caption must hold
        "panel-original": ["Original"],
        "panel-masked": ["Masked input", "grey", "visible"],
        "panel-reconstruction": ["prediction", "hidden patches are trained", "noise"],
        "panel-visible": ["prediction in the hidden patches", "original pixels", "visible"],
        "heatmap": ["Error map", "hidden patch"],
    }
    for element_id, words in wanted.items():
        text = " ".join(caption(element_id).split())
        for word in words:
            assert word in text, (element_id, text)
    # The alt texts say the same to a screen reader, once an image is shown.
    assert "noise" in page.get_attribute("#panel-reconstruction", "alt")
    assert "pasted" in page.get_attribute("#panel-visible", "alt")
    assert tab.console_errors == [] and tab.page_errors == []


def test_embedding_strip_numbers_and_copy(model_server, open_page) -> None:
    tab = open_page(model_server.url, permissions=("clipboard-read", "clipboard-write"))
    page = tab.page
    assert page.locator("label[for='pooling']").count() == 1
    assert page.is_disabled("#embedding-copy")
    click_sample(tab)  # cat.jpg
    wait_embedding(page, "cat.jpg", "mean")

    # The page sent the sample's bytes and named its pooling: it does not lean on the
    # server's default.
    (sent,) = embedding_posts(tab)
    assert sent["pooling"] == page.input_value("#pooling") == "mean"
    photo = (SAMPLES / "cat.jpg").read_bytes()
    assert base64.b64decode(sent["input"][0]) == photo

    vector = np.array(api_embedding(model_server.url, photo, "mean"))
    assert vector.shape == (EMBED_DIM,)
    assert page.text_content("#embedding-dim") == str(EMBED_DIM)
    norm = float(page.text_content("#embedding-norm"))
    assert norm == pytest.approx(np.linalg.norm(vector), abs=1e-4)
    assert norm == pytest.approx(1.0, abs=1e-3)  # the default: unit length
    assert page.text_content("#embedding-pooling") == "mean"
    assert page.is_hidden("#embedding-error")
    assert f"{EMBED_DIM} numbers" in page.get_attribute("#embedding-strip", "aria-label")

    # The strip draws this vector: one bar per number, up for positive and down for
    # negative (every sign shows), the largest magnitude reaching the edge.
    url = page.eval_on_selector("#embedding-strip", "c => c.toDataURL('image/png')")
    strip = png_pixels(url.split(",", 1)[1]).astype(int)
    height, width = strip.shape[:2]
    bar = width // EMBED_DIM
    assert bar >= 1 and width == bar * EMBED_DIM, (width, bar)
    mid = height // 2

    def colour(x: int, y: int) -> tuple[int, int, int] | None:
        for name in (STRIP_UP, STRIP_DOWN):
            if np.abs(strip[y, x] - name).max() <= 2:
                return name
        return None

    for i, v in enumerate(vector):
        x = i * bar
        if v > 0:
            assert colour(x, mid - 1) == STRIP_UP and colour(x, mid) is None, (i, v)
        elif v < 0:
            assert colour(x, mid) == STRIP_DOWN and colour(x, mid - 1) is None, (i, v)
    peak = int(np.argmax(np.abs(vector)))
    edge = 1 if vector[peak] > 0 else height - 2
    assert colour(peak * bar, edge) == (STRIP_UP if vector[peak] > 0 else STRIP_DOWN)

    # Copy, from the keyboard: a JSON array of the vector lands on the clipboard.
    page.focus("#embedding-copy")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('embedding-copied').textContent.startsWith('Copied')"
    )
    copied = json.loads(page.evaluate("() => navigator.clipboard.readText()"))
    assert isinstance(copied, list) and len(copied) == EMBED_DIM
    assert np.allclose(copied, vector, atol=1e-6)

    # Another pooling: a new embedding request (and no new reconstruction).
    reconstructions = len(tab.posts()) - len(embedding_posts(tab))
    page.select_option("#pooling", "cls")
    wait_embedding(page, "cat.jpg", "cls")
    assert [b["pooling"] for b in embedding_posts(tab)] == ["mean", "cls"]
    assert len(tab.posts()) - len(embedding_posts(tab)) == reconstructions
    cls = np.array(api_embedding(model_server.url, photo, "cls"))
    assert float(page.text_content("#embedding-norm")) == pytest.approx(
        np.linalg.norm(cls), abs=1e-4
    )
    assert not np.allclose(cls, vector, atol=1e-3)
    page.click("#embedding-copy")
    page.wait_for_function(
        "() => document.getElementById('embedding-copied').textContent.startsWith('Copied')"
    )
    assert np.allclose(json.loads(page.evaluate("() => navigator.clipboard.readText()")), cls)

    # The slider changes the mask, not the image: no new embedding request.
    page.focus("#mask-ratio")
    page.keyboard.press("ArrowLeft")
    wait_result(page, answer_ratio="0.7")
    assert len(embedding_posts(tab)) == 2
    assert tab.console_errors == [] and tab.page_errors == []


@pytest.fixture
def tight_server(small_model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server whose body limit lets a PNG through as a multipart upload but not as the
    base64 JSON of /v1/embeddings (4/3 its size): the embedding fails, the
    reconstruction works. Yields (url, the PNG)."""
    from skimage import data

    photo = tmp_path / "big.png"
    Image.fromarray(data.coffee()).resize((300, 200)).save(photo)
    size = photo.stat().st_size
    limit = size + 4096  # the multipart framing is a few hundred bytes
    samples_json = max(p.stat().st_size for p in SAMPLES.glob("*.jpg")) * 4 // 3 + 1024
    assert samples_json < limit < size * 4 // 3, (size, limit, samples_json)
    settings = model_settings(small_model_dir, tmp_path / "models", max_body_bytes=limit)
    for url in serve(settings, ready=True):
        yield url, photo


def test_embedding_failure_is_shown_and_the_page_goes_on(tight_server, open_page) -> None:
    url, photo = tight_server
    tab = open_page(url)
    page = tab.page
    wait_status(page, "Ready")
    page.set_input_files("#file", str(photo))
    wait_result(page, file_name=photo.name)  # the reconstruction went through
    page.wait_for_selector("#embedding[data-state='error']")
    message = page.text_content("#embedding-error")
    assert page.is_visible("#embedding-error")
    assert "limit" in message and "MAE_MAX_BODY_BYTES" in message, message
    assert page.get_attribute("#embedding-error", "role") == "alert"
    assert page.is_disabled("#embedding-copy")
    assert page.is_hidden("#embedding-strip")
    assert page.is_hidden("#error")  # the reconstruction's own error line stays clear
    for element_id, key in PANELS.items():
        assert panel(page, element_id).shape == (SIZE, SIZE, 3), (element_id, key)

    # The page goes on: the slider still reconstructs, and a smaller image embeds.
    page.focus("#mask-ratio")
    page.keyboard.press("ArrowRight")
    wait_result(page, answer_ratio="0.8")
    click_sample(tab, index=1)
    wait_embedding(page, "coffee.jpg")
    assert page.is_hidden("#embedding-error")
    assert page.text_content("#embedding-dim") == str(EMBED_DIM)
    assert tab.page_errors == [] and tab.dialogs == []
