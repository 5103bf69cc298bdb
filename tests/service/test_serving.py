"""The batcher's promises through a real server: 429 when the queue is full, 504 past the
deadline, a client that goes away frees its place, SIGTERM drains; and readiness.

A long MAE_MAX_BATCH_WAIT_MS holds the first request in the batch being gathered until
the batch fills (or the longest wait allowed passes), which makes queue states
reproducible without touching the code under test: each test waits for the state it
needs (a queue depth reached), then releases the hold by filling the batch, never by
waiting for time to pass.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import _free_port, model_settings, serve
from .test_embeddings import metric

HOLD_MS = 10_000.0  # the longest MAE_MAX_BATCH_WAIT_MS: a hold ends when its batch fills


@pytest.fixture(scope="module")
def photo(cifar_folder: Path) -> str:
    return base64.b64encode(sorted(cifar_folder.rglob("*.jpg"))[0].read_bytes()).decode()


def _post(url: str, photo: str, n: int, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"input": [photo] * n}, timeout=timeout)


def _in_background(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["response"] = fn(*args)
        except Exception as exc:  # the test reads it
            out["error"] = exc
        out["answered"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_for(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def holding_server(small_model_dir, tmp_path_factory):
    """Batches and the queue of 8 images; a forward starts only when its batch is full."""
    settings = model_settings(
        small_model_dir,
        tmp_path_factory.mktemp("models"),
        max_batch_wait_ms=HOLD_MS,
        max_batch_images=8,
        max_queue_images=8,
        max_images_per_request=8,
    )
    yield from serve(settings, ready=True)


def test_full_queue_answers_429_at_once(holding_server: str, photo: str) -> None:
    url = holding_server
    thread, first = _in_background(_post, url, photo, 6)
    _wait_for(lambda: metric(url, "mae_queue_images") == 6, "the first request to queue")
    r = _post(url, photo, 3)  # 6 + 3 > 8
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "queue_full"
    assert int(r.headers["retry-after"]) >= 1
    # Refused before any decoding: an image that is not one gets the 429 too, not a 400.
    broken = httpx.post(f"{url}/v1/embeddings", json={"input": ["aGVsbG8="] * 3}, timeout=30)
    assert broken.status_code == 429, broken.text
    small = _post(url, photo, 2)  # 6 + 2 fits, and fills the batch: both run at once
    assert small.status_code == 200
    thread.join(30)
    assert first["response"].status_code == 200
    assert metric(url, "mae_rejected_total", reason="queue_full") >= 1


def test_client_that_goes_away_frees_its_place(holding_server: str, photo: str) -> None:
    url = holding_server
    # The client gives up after 0.5 s, while its batch waits for company: the server must
    # notice and drop it. Its 6 images then never reach the model, however long it takes.
    embedded = metric(url, "mae_images_total", kind="embedding")
    thread, first = _in_background(_post, url, photo, 6, 0.5)
    thread.join(30)
    assert isinstance(first.get("error"), httpx.TimeoutException)
    _wait_for(lambda: metric(url, "mae_queue_images") == 0, "the queue to free the images")
    assert _post(url, photo, 8).status_code == 200  # would be 429 if 6 were still held
    assert metric(url, "mae_images_total", kind="embedding") == embedded + 8


def test_deadline_passed_before_the_forward_answers_504(small_model_dir, tmp_path, photo) -> None:
    settings = model_settings(
        small_model_dir, tmp_path, max_batch_wait_ms=HOLD_MS, request_timeout_s=0.3
    )
    for url in serve(settings, ready=True):
        r = _post(url, photo, 1)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "deadline_exceeded"
        assert metric(url, "mae_rejected_total", reason="deadline") == 1  # once per request
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        _wait_for(lambda u=url: metric(u, "mae_queue_images") == 0, "the queue to empty")


def test_model_that_fails_to_load_is_never_ready(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mae_config.json").write_text("{not json")
    for url in serve(model_settings(broken, tmp_path / "models")):
        _wait_for(
            lambda u=url: (
                httpx.get(f"{u}/ready", timeout=5).status_code == 503
                and "load_failed" in httpx.get(f"{u}/ready", timeout=5).text
            ),
            "the load to fail",
        )
        assert httpx.get(f"{url}/health", timeout=5).status_code == 503
        r = httpx.post(f"{url}/v1/embeddings", json={"input": ["aGk="]}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight_then_exits(
    small_model_dir, tmp_path, photo
) -> None:
    """`mae serve` as a user runs it: SIGTERM while a request is held in the queue; the
    request still gets its embeddings, then the process exits and the port is closed.

    uvicorn tells the app nothing until the requests in flight are done, so the hold here
    must end by itself (8 s, well inside the 35 s grace), and it is long enough that the
    request is certainly still queued when the signal arrives: its answer comes after it."""
    port = _free_port()
    hold_ms = 8000
    env = dict(os.environ, MAE_MAX_BATCH_WAIT_MS=str(hold_ms), MAE_MODELS_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "mae_core.cli", "serve", str(small_model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--device", "cpu", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(ready, "mae serve to be ready", timeout=120)
        if sys.platform.startswith("linux") and os.environ.get("MAE_WARMUP", "true") != "false":
            # Warmed up in its device threads, which carry their names.
            names = set()
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread may end meanwhile
                    names.add((task / "comm").read_text().strip())
            assert "mae-device_0" in names, names
        thread, held = _in_background(_post, url, photo, 2)
        _wait_for(lambda: metric(url, "mae_queue_images") == 2, "the request to queue")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert held["response"].status_code == 200
        assert held["answered"] > signalled, "the request was answered before the signal"
        assert len(held["response"].json()["data"]) == 2
        # uvicorn re-raises the signal once it has drained, so the status says "SIGTERM".
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0]
    assert f"on http://127.0.0.1:{port}" in output


def test_api_keys_and_cors_are_off_unless_set(model_server, small_model_dir, tmp_path) -> None:
    origin = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{model_server.url}/v1/embeddings", headers=origin, timeout=5)
    assert "access-control-allow-origin" not in r.headers
    settings = model_settings(
        small_model_dir,
        tmp_path,
        api_keys=["k1", "k2"],
        cors_origins=["http://page.example"],
        warmup=False,
    )
    for url in serve(settings, ready=True):
        r = httpx.options(f"{url}/v1/embeddings", headers=origin, timeout=5)
        assert r.headers["access-control-allow-origin"] == "http://page.example"
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
        auth = {"Authorization": "Bearer k2"}
        assert httpx.get(f"{url}/v1/models", headers=auth, timeout=5).status_code == 200
        # The probes and the page stay open: orchestrators and browsers reach them.
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 200


def test_page_answers_get_and_head(model_server) -> None:
    """Uptime checks often use HEAD."""
    assert httpx.head(f"{model_server.url}/", timeout=5).status_code == 200
    page = httpx.get(f"{model_server.url}/", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
