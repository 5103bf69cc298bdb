"""Running the service as `mae serve` does: check that the port is free and every model id
resolves before listening (a busy port or a typo fails in one line, not in a log later),
say where the server answers, then run uvicorn in one process or several, with a grace
period for the requests in flight on SIGTERM."""

from __future__ import annotations

import copy
import errno
import socket

from mae_core.errors import MAEError

from .settings import Settings


class ListenError(MAEError, OSError):
    """The server cannot listen where it was asked to (port in use, no such address)."""


def check_listen(host: str, port: int) -> None:
    """Bind `host`:`port` the way uvicorn will (same address family, SO_REUSEADDR) and
    release it at once: a port another process listens on fails here, before any URL is
    printed or any model loaded. uvicorn binds again a moment later; a process taking the
    port in between still gets uvicorn's own error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"port {port} on {host}"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host!r}: not a host name or address ({e})") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ListenError(
                f"{where} is in use (another server?): stop it, or pick another port with "
                "--port or MAE_PORT"
            ) from None
        if e.errno == errno.EACCES:
            raise ListenError(
                f"{where}: permission denied (ports below 1024 need privileges); pick another "
                "with --port or MAE_PORT"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ListenError(
                f"cannot listen on {host}: not an address of this machine (127.0.0.1: this "
                "machine only, 0.0.0.0: every interface); set --host or MAE_HOST"
            ) from None
        raise ListenError(f"cannot listen on {where}: {e.strerror or e}") from None


def preflight(settings: Settings) -> list[str]:
    """Check that the port is free and what `settings` serves exists; -> the lines that
    say what will run."""
    from mae_core.hub import parse_model_id, resolve
    from mae_core.repo_store import RepoStore

    host, port = settings.host, settings.port
    check_listen(host, port)
    address = f"[{host}]" if ":" in host else host
    if settings.hub_only:
        store = RepoStore(settings.resolved_models_dir())
        writes = (
            "writes need a token in MAE_HUB_TOKENS"
            if settings.hub_tokens
            else "read-only (set MAE_HUB_TOKENS to allow pushes)"
        )
        return [
            f"mae hub over {store.root} ({len(store.repos())} repos), {writes}",
            f"  HF_ENDPOINT=http://{address}:{port}",
        ]
    for model_id in settings.model:
        resolve(parse_model_id(model_id, models_root=settings.models_dir), settings.models_dir)
    lines = [
        f"mae serve: {', '.join(settings.model)} on http://{address}:{port}",
        "  demo page /, API docs /docs, readiness /ready, metrics /metrics",
        f"  {settings.threads().describe()} "
        "(MAE_TORCH_THREADS, MAE_FORWARD_WORKERS, MAE_DECODE_THREADS)",
    ]
    hint = _cpu_dtype_hint(settings)
    if hint:
        lines.append(f"  {hint}")
    return lines


def _cpu_dtype_hint(settings: Settings) -> str | None:
    """A line when the torch forward is about to run on a CPU in a dtype that does not suit
    it: fp32 where the CPU multiplies bf16 in hardware, or bf16 where it emulates it."""
    import torch

    from mae_core.distributed import native_cpu_bf16

    on_cpu = settings.device == "cpu" or (
        settings.device == "auto" and not torch.cuda.is_available()
    )
    if not on_cpu or settings.backend != "torch":
        return None
    native = native_cpu_bf16()
    if settings.dtype in ("auto", "float32") and native:
        # fused layers both sides: measured 2026-12-03 (base64 JSON, two runs, a noisy
        # machine); autocast against the plain forward: 2026-12-02
        gain = "1.1-1.8x" if settings.fused_layers else "about 1.5x"
        return (
            f"this CPU multiplies bf16 in hardware: --dtype bfloat16 (MAE_DTYPE) serves {gain} "
            "the images per second (2-core AMD EPYC), k-NN accuracy unchanged (BENCHMARKS.md); "
            "serving float32"
        )
    if settings.dtype in ("bfloat16", "float16") and native is False:
        return (
            f"warning: this CPU has no native bf16 or fp16 arithmetic: {settings.dtype} is "
            "emulated here and likely slower than --dtype float32"
        )
    return None


def serve(settings: Settings, *, workers: int = 1, log_level: str = "info") -> None:
    """Check, announce and run the server on `settings.host`:`settings.port` until it is
    stopped. With `workers` > 1 each process builds its own app (and model) from the MAE_*
    environment."""
    import uvicorn

    for line in preflight(settings):
        print(line, flush=True)
    grace = settings.request_timeout_s + 5  # SIGTERM: finish the requests in flight first
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # our "mae.*" lines beside uvicorn's
    log_config["loggers"]["mae"] = {"handlers": ["default"], "level": log_level.upper()}
    options = dict(
        host=settings.host, port=settings.port, log_level=log_level, log_config=log_config
    )
    if workers > 1:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            workers=workers,
            timeout_graceful_shutdown=grace,
            **options,
        )
    else:
        from .app import create_app

        uvicorn.run(create_app(settings), timeout_graceful_shutdown=grace, **options)
