"""`mae serve` as a user starts it: where it listens (flags over MAE_HOST / MAE_PORT over the
defaults), and a busy port refused in one line before any URL is printed. Real processes,
real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.cli.test_info import MAE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def listening() -> Iterator[int]:
    """A port another program listens on (plain socket, no SO_REUSEADDR tricks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def env_without_mae(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAE_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mae_core import create_model

    path = tmp_path_factory.mktemp("serve") / "model"
    create_model("mae_vit_tiny_patch8", img_size=32, depth=1, decoder_depth=1).save_pretrained(path)
    return path


def test_a_busy_port_is_one_line_before_any_url(model_dir: Path, tmp_path: Path) -> None:
    with listening() as port:
        for args, env in [
            (["--port", str(port)], {}),
            ([], {"MAE_PORT": str(port), "MAE_HOST": "127.0.0.1"}),
        ]:
            out = subprocess.run(
                [MAE, "serve", str(model_dir), "--device", "cpu", *args],
                capture_output=True,
                text=True,
                timeout=120,
                env=env_without_mae(MAE_MODELS_DIR=str(tmp_path), **env),
            )
            assert out.returncode == 2, out.stdout + out.stderr
            assert out.stderr.startswith(f"mae: error: port {port} on 127.0.0.1 is in use")
            assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
            assert "http://" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAE_PORT": "70000"}, "MAE_PORT: Input should be less than or equal to 65535"),
        ({"MAE_PORT": "tcp://10.0.0.7:8000"}, "Kubernetes sets that for a Service named mae"),
        ({"MAE_HOST": "no-such-host.invalid"}, "cannot listen on 'no-such-host.invalid'"),
    ],
)
def test_bad_listen_settings_are_one_line(env: dict[str, str], message: str, tmp_path) -> None:
    out = subprocess.run(
        [MAE, "serve", "--hub-only"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_without_mae(MAE_MODELS_DIR=str(tmp_path), **env),
    )
    assert out.returncode == 2 and out.stderr.startswith("mae: error: "), out.stderr
    assert message in out.stderr and out.stderr.count("\n") == 1


def _serve_until_healthy(args: list[str], env: dict[str, str], port: int) -> str:
    """Run `mae serve ARGS`, wait for /health on `port`, stop it; -> what it printed."""
    proc = subprocess.Popen(
        [MAE, "serve", *args, "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mae serve did not answer /health"
            time.sleep(0.05)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    return output


def test_mae_port_and_host_are_read_and_the_flags_override_them(tmp_path: Path) -> None:
    port = free_port()
    env = env_without_mae(MAE_MODELS_DIR=str(tmp_path), MAE_PORT=str(port), MAE_HOST="127.0.0.1")
    output = _serve_until_healthy(["--hub-only"], env, port)
    assert f"HF_ENDPOINT=http://127.0.0.1:{port}" in output

    with listening() as busy:  # MAE_PORT names a busy port; --port wins over it
        port = free_port()
        env = env_without_mae(MAE_MODELS_DIR=str(tmp_path), MAE_PORT=str(busy))
        output = _serve_until_healthy(["--hub-only", "--port", str(port)], env, port)
    assert f"HF_ENDPOINT=http://127.0.0.1:{port}" in output and str(busy) not in output


def test_the_start_lines_say_which_cpu_dtype_suits(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU that multiplies bf16 in hardware, serving fp32 says that --dtype bfloat16
    would pay; on one that emulates it, asking for bfloat16 is warned of; otherwise, and
    for the onnxruntime backends, nothing is said."""
    import mae_core.distributed
    from service.server import preflight
    from service.settings import Settings

    for name in [k for k in os.environ if k.startswith("MAE_")]:
        monkeypatch.delenv(name)
    port = free_port()

    def lines(**kw: object) -> str:
        settings = Settings(
            model=[str(model_dir)], models_dir=tmp_path, device="cpu", port=port, **kw
        )
        return "\n".join(preflight(settings))

    hint = "--dtype bfloat16 (MAE_DTYPE) serves 1.1-1.8x the images per second"
    warning = "bfloat16 is emulated here and likely slower than --dtype float32"
    monkeypatch.setattr(mae_core.distributed, "native_cpu_bf16", lambda: True)
    assert hint in lines() and hint in lines(dtype="float32")
    assert hint not in lines(dtype="bfloat16") and warning not in lines(dtype="bfloat16")
    assert hint not in lines(backend="onnxruntime")
    # without the fused layers bf16 is autocast against the plain forward: its own figure
    plain = lines(fused_layers=False)
    assert hint not in plain and "(MAE_DTYPE) serves about 1.5x the images per second" in plain
    monkeypatch.setattr(mae_core.distributed, "native_cpu_bf16", lambda: False)
    assert hint not in lines() and warning in lines(dtype="bfloat16")
    monkeypatch.setattr(mae_core.distributed, "native_cpu_bf16", lambda: None)  # unknown
    assert hint not in lines() and warning not in lines(dtype="bfloat16")


def test_the_thread_layout_is_chosen_and_said_in_the_start_lines(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU the torch backend runs two forwards at once, sharing the math threads;
    ONNX Runtime and the GPU run one; MAE_FORWARD_WORKERS and MAE_TORCH_THREADS set it."""
    from service.server import preflight
    from service.settings import Settings, Threads

    for name in [k for k in os.environ if k.startswith("MAE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    port = free_port()

    def settings(**kw: object) -> Settings:
        return Settings(model=[str(model_dir)], models_dir=tmp_path, port=port, **kw)

    assert settings(device="cpu").threads() == Threads(2, 4, 4)
    assert settings(device="cpu", backend="onnxruntime").threads() == Threads(1, 8, 4)
    assert settings(device="cuda").threads() == Threads(1, 8, 8)
    assert settings(device="cpu", torch_threads=1).threads() == Threads(1, 1, 4)
    layout = settings(device="cpu", torch_threads=6, forward_workers=3, decode_threads=2)
    assert layout.threads() == Threads(3, 2, 2)
    start = "\n".join(preflight(layout))
    assert "threads: 3 forwards at once with 2 each, 2 to decode images" in start
    assert "MAE_FORWARD_WORKERS" in start
    single = "\n".join(preflight(settings(device="cpu", backend="onnxruntime")))
    assert "threads: 8 for the forward, 4 to decode images" in single
    # More than one forward at once: only torch on a CPU, and never more than the threads.
    for kw, says in [
        (dict(backend="onnxruntime"), "is for the torch backend on a CPU"),
        (dict(device="cuda"), "a GPU runs forwards one after another"),
        (dict(device="cpu", torch_threads=2, forward_workers=3), "each forward needs a math"),
    ]:
        with pytest.raises(ValidationError, match=says):
            settings(**{"forward_workers": 2, **kw})
    import torch

    auto = settings(device="auto", forward_workers=2).threads()  # auto that finds a GPU: 1
    assert auto.forward_workers == (1 if torch.cuda.is_available() else 2)
    monkeypatch.setenv("MAE_FORWARD_WORKERS", "0")
    with pytest.raises(ValidationError, match="forward_workers"):
        Settings(model=[str(model_dir)], models_dir=tmp_path, port=port)
