"""docker/nginx/mae.conf, run by the real nginx in front of two real `mae serve` processes.

The proxy file is used as shipped; only its `server mae:8000` line (one line per local
replica instead) and its `listen` port change. Clients send embedding requests through
nginx all along while one replica is killed (SIGKILL, a crash), restarted, and the other
one stopped (SIGTERM, a rolling update): requests spread over both replicas, no request
that started after a crash fails, and a graceful stop fails none.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .conftest import _free_port
from .test_embeddings import metric
from .test_serving import _wait_for

ROOT = Path(__file__).resolve().parents[2]
PROXY_CONF = ROOT / "docker" / "nginx" / "mae.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EMBED = {"route": "/v1/embeddings", "status": "200"}

pytestmark = pytest.mark.slow


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


class Replica:
    """One `mae serve` process, as a user starts it."""

    def __init__(self, model_dir: Path, models_dir: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir, self.models_dir, self.log = model_dir, models_dir, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Replica:
        cmd = [sys.executable, "-m", "mae_core.cli", "serve", str(self.model_dir)]
        cmd += ["--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        env = dict(os.environ, MAE_MODELS_DIR=str(self.models_dir), OMP_NUM_THREADS="1")
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self) -> None:
        _wait_for(lambda: _status(f"{self.url}/ready") == 200, f"{self.url}/ready", 120)

    def served(self) -> float:
        return metric(self.url, "mae_requests_total", **EMBED)

    def stop(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)


def proxy_config(tmp: Path, listen: int, replicas: list[Replica]) -> Path:
    """The shipped proxy file with local addresses, inside a minimal main nginx.conf."""
    text = PROXY_CONF.read_text()
    server = re.search(r"^\s*server mae:8000( [^;]*) resolve;$", text, re.M)
    assert server, "docker/nginx/mae.conf has no `server mae:8000 ... resolve;` line"
    # Addresses need no `resolve` (and Debian's nginx 1.22 does not know it).
    local = "".join(f"    server 127.0.0.1:{r.port}{server.group(1)};\n" for r in replicas)
    text = text.replace(server.group(0) + "\n", local)
    text, n = re.subn(r"^(\s*)listen 8080;$", rf"\1listen 127.0.0.1:{listen};", text, flags=re.M)
    assert n == 1, "docker/nginx/mae.conf has no `listen 8080;` line"
    (tmp / "mae.conf").write_text(text)
    temp = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp_path
    main = tmp / "nginx.conf"
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temp}    include {tmp / 'mae.conf'};\n}}\n"
    )
    return main


@dataclass
class Traffic:
    """Clients posting one embedding request after another through the proxy."""

    url: str
    photo: str
    threads: int = 4
    # (start, end, status) of every request
    results: list[tuple[float, float, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v1/embeddings", json={"input": [self.photo]})
                    ok = r.status_code == 200 and len(r.json()["data"][0]["embedding"]) > 0
                    status: int | str = r.status_code if ok or r.status_code != 200 else "empty"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.results.append((t0, time.monotonic(), status))

    def __enter__(self) -> Traffic:
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(60)

    def count(self) -> int:
        return len(self.results)

    def failures(self, started_after: float = 0.0) -> list[tuple[float, float, int | str]]:
        return [r for r in self.results if r[2] != 200 and r[0] >= started_after]


def _more_requests(traffic: Traffic, n: int, what: str) -> None:
    target = traffic.count() + n
    _wait_for(lambda: traffic.count() >= target, what, timeout=60)


def test_nginx_spreads_over_replicas_and_survives_losing_one(
    small_model_dir: Path, tmp_path: Path, cifar_folder: Path
) -> None:
    if not Path(NGINX).is_file():
        pytest.fail(
            "nginx is missing: the proxy config is tested in Debian's nginx. Install it with "
            "`apt-get install -y nginx` (CI's .ci/run does this before make test)",
            pytrace=False,
        )
    photo = base64.b64encode(sorted(cifar_folder.rglob("*.jpg"))[0].read_bytes()).decode()
    a = Replica(small_model_dir, tmp_path / "models", tmp_path / "a.log").start()
    b = Replica(small_model_dir, tmp_path / "models", tmp_path / "b.log").start()
    listen = _free_port()
    proxy = f"http://127.0.0.1:{listen}"
    conf = proxy_config(tmp_path, listen, [a, b])
    check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf)],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        a.wait_ready()
        b.wait_ready()
        _wait_for(lambda: _status(f"{proxy}/ready") == 200, "the proxy to answer /ready", 60)
        assert _status(f"{proxy}/metrics") == 404  # replicas are scraped directly

        with Traffic(proxy, photo) as traffic:
            # 1. Both replicas get work.
            _wait_for(lambda: a.served() >= 10 and b.served() >= 10, "both replicas to serve", 60)
            assert not traffic.failures()

            # 2. Replica a crashes in the middle of the traffic.
            #    The kill lands some time after the signal is sent (on a busy machine the
            #    test's own thread may wait for the GIL in between, while a serves more
            #    requests), so the crash is the window from the signal to the reaped process.
            kill = time.monotonic()
            a.stop(signal.SIGKILL)
            a.proc.wait(10)
            gone = time.monotonic()

            def only_while_a_died() -> None:
                # Only a request open while replica a died may fail (one cut in the middle
                # of its answer cannot be resent; nginx resends the others, being pure
                # functions, so none usually fails); nothing before, nothing started after.
                outside = [f for f in traffic.failures() if f[1] < kill or f[0] > gone]
                assert not outside, outside

            _more_requests(traffic, 40, "traffic after the crash")
            only_while_a_died()
            assert _status(f"{a.url}/ready") is None  # gone
            assert _status(f"{proxy}/ready") == 200  # the proxy still has b
            served_b = b.served()
            _more_requests(traffic, 20, "traffic on b alone")
            assert b.served() >= served_b + 20

            # 3. Replica a comes back and gets traffic again once nginx retries it
            #    (fail_timeout=5s in mae.conf).
            a.start().wait_ready()
            _wait_for(lambda: a.served() >= 10, "nginx to send work to the restarted a", 60)
            # Nor while a restarted: nginx tries it again after fail_timeout, resending to b.
            only_while_a_died()

            # 4. Replica b is stopped gracefully (SIGTERM, as docker stop or Kubernetes
            #    do): it finishes what it holds, nginx sends the rest to a. Nothing fails.
            stop = time.monotonic()
            b.stop(signal.SIGTERM)
            assert b.proc.wait(60) in (0, -signal.SIGTERM)
            _more_requests(traffic, 40, "traffic after b stopped")
            assert _status(f"{b.url}/ready") is None
            assert _status(f"{proxy}/ready") == 200
            assert not traffic.failures(started_after=stop), traffic.failures(stop)

        statuses = [r[2] for r in traffic.results]
        assert statuses.count(200) >= 100, f"{statuses.count(200)} requests succeeded"
    finally:
        for replica in (a, b):
            replica.stop(signal.SIGKILL)
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(nginx.pid, signal.SIGKILL)
    errors = (tmp_path / "error.log").read_text() if (tmp_path / "error.log").exists() else ""
    # nginx logs the crash it routed around, naming replica a's address.
    assert f"127.0.0.1:{a.port}" in errors
