"""The FastAPI application: `create_app(settings)`.

The lifespan starts loading the model(s) in the background, so `/health` answers at once
and `/ready` turns 200 only when every model is loaded and warmed up. Shutdown (SIGTERM:
uvicorn stops accepting and waits for the requests in flight) then drains each batcher.

Routes: `/v1/embeddings[/upload]`, `/v1/reconstructions`, `/v1/models`, `/health`,
`/ready`, `/metrics`, the demo page at `/`, and the Hugging Face Hub endpoints over the
embedded hub (`routes/hub.py`). `MAE_HUB_ONLY` serves the hub alone and loads no model.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from mae_core import __version__
from mae_core.repo_store import HubError, RepoStore

from .errors import install_handlers
from .metrics import Metrics, RequestMetrics
from .registry import Registry
from .routes import embeddings, health, hub, hub_write, models, reconstructions
from .settings import Settings
from .web import BodyLimit

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    registry = Registry(settings, metrics)  # stays empty in a hub-only server

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = None if settings.hub_only else asyncio.create_task(registry.load())
        if settings.hub_only:
            metrics.ready.set(1)  # as /ready says: a hub has nothing to load
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
                await registry.close()

    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from files
    # inside the installed package, so the pages work with no internet (FastAPI's own
    # fetch them from a CDN and are blank offline).
    app = FastAPIOffline(
        favicon_url="/static/favicon.svg",
        title="mae-hub",
        version=__version__,
        description="Masked Autoencoder service: batched embeddings, masked reconstructions, "
        "and a Hugging Face-compatible model hub over models/.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.store = RepoStore(settings.resolved_models_dir())
    app.state.lfs_secret = secrets.token_bytes(32)  # signs LFS upload URLs for this process

    install_handlers(app)

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        return hub.hub_error_response(exc)

    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(embeddings.router)
    app.include_router(reconstructions.router)
    app.include_router(hub.router)
    app.include_router(hub_write.router)

    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    # Outermost last: metrics see every answer, the body limit applies before any route.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["Retry-After", "X-MAE-Seed", "X-MAE-Loss"],
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
