"""The FastAPI application: `create_app(settings)`.

Today it serves the hub endpoints (`routes/hub.py`) over the embedded hub and the health
checks; the embedding and reconstruction endpoints join it with the service issue.
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mae_core import __version__
from mae_core.repo_store import HubError, RepoStore

from .routes import health, hub
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="mae-hub",
        version=__version__,
        description="Masked Autoencoder hub: Hugging Face-compatible model repos over models/",
    )
    app.state.settings = settings
    app.state.store = RepoStore(settings.resolved_models_dir())
    app.state.lfs_secret = secrets.token_bytes(32)  # signs LFS upload URLs for this process

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        return hub.hub_error_response(exc)

    app.include_router(health.router)
    app.include_router(hub.router)
    return app
