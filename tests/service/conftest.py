"""Real uvicorn servers on 127.0.0.1, in a thread: a hub over a temporary models folder,
and model servers over a small random MAE saved in our repo layout."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings

TOKEN = "hub-write-token-for-tests"


@dataclass
class LiveServer:
    url: str
    models_dir: Path
    settings: Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StatusRecorder:
    """ASGI wrapper: every (method, route path, status) the app answers while the tests use
    it, so that the server's fixture can check each against the OpenAPI document."""

    def __init__(self, app: Any) -> None:
        self.app, self.seen = app, set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def recording(message: dict) -> None:
            if message["type"] == "http.response.start" and scope.get("route") is not None:
                self.seen.add((scope["method"], scope["route"].path, message["status"]))
            await send(message)

        await self.app(scope, receive, recording)


def undocumented(app: Any, seen: set[tuple[str, str, int]]) -> list[str]:
    """The answers in `seen` whose status the OpenAPI document does not list for that
    operation. Routes left out of the document (the page, static files, /metrics) and a
    405 to a method the path does not have (there is no operation to document it on) are
    not checked."""
    paths = app.openapi()["paths"]
    missing = []
    for method, route_path, status in sorted(seen):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route_path)  # {name:path} -> {name}
        operation = paths.get(path, {}).get(method.lower())
        if operation is None:
            continue
        if str(status) not in operation["responses"]:
            missing.append(f"{method} {path} answered {status}")
    return missing


def serve(settings: Settings, ready: bool = False) -> Iterator[str]:
    """Run `create_app(settings)` on a free port; yields its URL once it answers HTTP (with
    `ready`: once /ready answers 200). At the end, every status the server answered must be
    one the OpenAPI document lists for that route: the document is the contract."""
    port = _free_port()
    app = create_app(settings)
    recorder = StatusRecorder(app)
    config = uvicorn.Config(recorder, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}{'/ready' if ready else '/health'}", timeout=1).status_code
            if status == 200 or not ready:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        raise RuntimeError("the test server did not start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    missing = undocumented(app, recorder.seen)
    assert not missing, "statuses missing from /openapi.json: " + "; ".join(missing)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LiveServer]:
    settings = Settings(models_dir=tmp_path / "models", hub_only=True, hub_tokens=[TOKEN])
    for url in serve(settings):
        yield LiveServer(url, tmp_path / "models", settings)


# -- model servers ------------------------------------------------------------------------
SMALL_MODEL = dict(img_size=32, depth=2, decoder_depth=1)  # mae_vit_tiny_patch8: 16 patches


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init mae_vit_tiny_patch8 (32 px, 2 blocks, 1 decoder block) with its decoder,
    saved as a hub repo folder."""
    import torch

    from mae_core import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small-mae") / "model"
    create_model("mae_vit_tiny_patch8", **SMALL_MODEL).save_pretrained(path)
    return path


def model_settings(model_dir: Path, models_dir: Path, **overrides: object) -> Settings:
    """Settings for a CPU server of `model_dir`; `overrides` are Settings fields."""
    values: dict[str, object] = dict(
        model=[str(model_dir)], models_dir=models_dir, device="cpu", max_batch_wait_ms=2.0
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def model_server(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server of the small model with default limits, shared by a test module."""
    models = tmp_path_factory.mktemp("models")
    settings = model_settings(small_model_dir, models)
    for url in serve(settings, ready=True):
        yield LiveServer(url, models, settings)
