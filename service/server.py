"""Running the service as `mae serve` does: check every model id before listening (a typo
fails in one line, not in a log later), say where the server answers, then run uvicorn in
one process or several, with a grace period for the requests in flight on SIGTERM."""

from __future__ import annotations

import copy

from .settings import Settings


def preflight(settings: Settings, host: str, port: int) -> list[str]:
    """Check that what `settings` serves exists; -> the lines that say what will run."""
    from mae_core.hub import parse_model_id, resolve
    from mae_core.repo_store import RepoStore

    if settings.hub_only:
        store = RepoStore(settings.resolved_models_dir())
        writes = (
            "writes need a token in MAE_HUB_TOKENS"
            if settings.hub_tokens
            else "read-only (set MAE_HUB_TOKENS to allow pushes)"
        )
        return [
            f"mae hub over {store.root} ({len(store.repos())} repos), {writes}",
            f"  HF_ENDPOINT=http://{host}:{port}",
        ]
    for model_id in settings.model:
        resolve(parse_model_id(model_id), settings.models_dir)
    forward, decode = settings.threads()
    return [
        f"mae serve: {', '.join(settings.model)} on http://{host}:{port}",
        "  demo page /, API docs /docs, readiness /ready, metrics /metrics",
        f"  threads: {forward} for the forward, {decode} to decode images "
        "(MAE_TORCH_THREADS, MAE_DECODE_THREADS)",
    ]


def serve(
    settings: Settings, *, host: str, port: int, workers: int = 1, log_level: str = "info"
) -> None:
    """Check, announce and run the server until it is stopped. With `workers` > 1 each
    process builds its own app (and model) from the MAE_* environment."""
    import uvicorn

    for line in preflight(settings, host, port):
        print(line, flush=True)
    grace = settings.request_timeout_s + 5  # SIGTERM: finish the requests in flight first
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # our "mae.*" lines beside uvicorn's
    log_config["loggers"]["mae"] = {"handlers": ["default"], "level": log_level.upper()}
    options = dict(host=host, port=port, log_level=log_level, log_config=log_config)
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
