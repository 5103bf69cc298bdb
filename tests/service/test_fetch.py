"""Image URLs (service/fetch.py) against a real HTTP server on 127.0.0.1: what may be
fetched, what is refused before any connection, and the caps on redirects, bytes and time."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import re
import threading
import time
from collections.abc import Iterator

import pytest

from service.engine_errors import TooLarge, UrlFetchFailed, UrlRefused
from service.fetch import UrlPolicy, fetch_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # bytes only: decoding is not this module's job
LOCAL = (ipaddress.ip_network("127.0.0.0/8"),)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path
        if path == "/img.png":
            self._send(200, PNG)
        elif path.startswith("/to/"):  # /to/<url>: a redirect there
            self.send_response(302)
            self.send_header("Location", path[len("/to/") :])
            self.end_headers()
        elif path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif path == "/big":
            self._send(200, b"x" * 5000)
        elif path == "/big-undeclared":
            self.send_response(200)
            self.end_headers()  # no Content-Length: read until the cap
            self.wfile.write(b"x" * 5000)
        elif path == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif path == "/host":
            self._send(200, self.headers["Host"].encode())
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(url: str, **policy: object) -> bytes:
    values: dict = {"max_bytes": 1000, "timeout_s": 5.0, "allow_networks": LOCAL, **policy}
    return asyncio.run(fetch_image(url, UrlPolicy(**values), what="input[0]"))


def test_an_allowed_network_is_fetched_with_its_host_name(origin: str) -> None:
    assert fetch(f"{origin}/img.png") == PNG
    port = origin.rsplit(":", 1)[1]
    # Connected to the checked address, asked for the name the client gave.
    assert fetch(f"http://localhost:{port}/host").decode() == f"localhost:{port}"
    assert fetch(f"{origin}/to/{origin}/img.png") == PNG  # a redirect, followed and checked


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", None),  # carrier-grade NAT: not public
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata
        ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "private"),  # IPv4 inside IPv6
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str | None) -> None:
    reason = UrlPolicy(max_bytes=1).refusal(ipaddress.ip_address(address))
    assert reason is not None and (kind is None or kind in reason)
    assert UrlPolicy(max_bytes=1).refusal(ipaddress.ip_address("93.184.215.14")) is None


def test_refused_before_any_connection(origin: str) -> None:
    port = origin.rsplit(":", 1)[1]
    cases = {
        f"{origin}/img.png": "127.0.0.1 is a loopback address",  # no networks allowed
        f"http://localhost:{port}/img.png": "localhost resolves to",  # after DNS
        "file:///etc/passwd": "only http and https",
        "ftp://example.com/a.png": "only http and https",
        f"http://user:pw@127.0.0.1:{port}/img.png": "user name or password",
    }
    for url, message in cases.items():
        with pytest.raises(UrlRefused, match=re.escape(message)):
            fetch(url, allow_networks=())


def test_a_redirect_into_a_private_network_is_refused(origin: str) -> None:
    with pytest.raises(UrlRefused, match=re.escape("169.254.169.254 is a link-local address")):
        fetch(f"{origin}/to/http://169.254.169.254/latest/meta-data/")
    with pytest.raises(UrlFetchFailed, match="more than 3 redirects"):
        fetch(f"{origin}/loop")


def test_caps_on_bytes_time_and_errors(origin: str) -> None:
    with pytest.raises(TooLarge, match="5000 bytes, over the 1000-byte limit"):
        fetch(f"{origin}/big")
    with pytest.raises(TooLarge, match="larger than the 1000-byte limit"):
        fetch(f"{origin}/big-undeclared")
    t0 = time.monotonic()
    with pytest.raises(UrlFetchFailed, match=re.escape("did not answer within 0.5 s")):
        fetch(f"{origin}/slow", timeout_s=0.5)
    assert time.monotonic() - t0 < 2.5  # stopped at the cap, not when the server answered
    with pytest.raises(UrlFetchFailed, match="answered 404"):
        fetch(f"{origin}/missing")
    with pytest.raises(UrlFetchFailed, match=re.escape("cannot resolve no-such-host.invalid")):
        fetch("http://no-such-host.invalid/a.png")


# -- through a real server -------------------------------------------------------------------
class PhotoHandler(Handler):
    photo = b""

    def do_GET(self) -> None:
        if self.path == "/photo.jpg":
            self._send(200, self.photo)
        else:
            super().do_GET()


@pytest.fixture(scope="module")
def photo_origin(cifar_folder) -> Iterator[str]:
    PhotoHandler.photo = sorted(cifar_folder.rglob("*.jpg"))[0].read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PhotoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_through_the_server(small_model_dir, tmp_path, photo_origin: str) -> None:
    import base64

    import httpx

    from tests.service.conftest import model_settings, serve

    url = f"{photo_origin}/photo.jpg"
    as_b64 = base64.b64encode(PhotoHandler.photo).decode()
    body = {"input": [url, as_b64], "encoding_format": "float"}
    # Off by default: a URL is refused, naming the setting.
    for server in serve(model_settings(small_model_dir, tmp_path / "a"), ready=True):
        r = httpx.post(f"{server}/v1/embeddings", json=body, timeout=30)
        assert r.status_code == 403 and "MAE_ALLOW_URLS is off" in r.json()["error"]["message"]
    # On, public addresses only: 127.0.0.1 is refused after resolution.
    on = {"allow_urls": True}
    for server in serve(model_settings(small_model_dir, tmp_path / "b", **on), ready=True):
        r = httpx.post(f"{server}/v1/embeddings", json=body, timeout=30)
        assert r.status_code == 403, r.text
        assert "127.0.0.1 is a loopback address" in r.json()["error"]["message"]
    # On, with this machine's network allowed: the URL's embedding is the bytes' own.
    local = {**on, "url_allow_networks": ["127.0.0.0/8"]}
    for server in serve(model_settings(small_model_dir, tmp_path / "c", **local), ready=True):
        r = httpx.post(f"{server}/v1/embeddings", json=body, timeout=30)
        assert r.status_code == 200, r.text
        by_url, by_bytes = (d["embedding"] for d in r.json()["data"])
        assert by_url == pytest.approx(by_bytes, abs=1e-6)
        redirect = f"{photo_origin}/to/http://169.254.169.254/latest/meta-data/"
        r = httpx.post(f"{server}/v1/embeddings", json={"input": redirect}, timeout=30)
        assert r.status_code == 403 and "link-local" in r.json()["error"]["message"]
        r = httpx.post(f"{server}/v1/embeddings", json={"input": f"{photo_origin}/x"}, timeout=30)
        assert r.status_code == 502 and "answered 404" in r.json()["error"]["message"]
