"""Liveness (`/health`), readiness (`/ready`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import error_response, error_responses

router = APIRouter(tags=["health"])


@router.get("/health", responses=error_responses(503))
async def health(request: Request) -> Any:
    """200 while the process can serve; 503 when loading the model failed (restart it)."""
    registry = request.app.state.registry
    if registry.error:
        return error_response(503, "load_failed", f"the model failed to load: {registry.error}")
    return {"status": "ok"}


@router.get("/ready", responses=error_responses(503))
async def ready(request: Request) -> Any:
    """200 once every model is loaded and warmed up (always, for a hub-only server)."""
    registry, store = request.app.state.registry, request.app.state.store
    if registry.settings.hub_only:
        return {"status": "ready", "models": [], "models_dir": str(store.root)}
    if not registry.ready:
        if registry.error:
            return error_response(503, "load_failed", f"the model failed to load: {registry.error}")
        return error_response(503, "not_ready", "loading and warming up the model(s)")
    queued = {mid: s.batcher.queued_images for mid, s in registry.models.items()}
    return {"status": "ready", "models": list(registry.models), "queued_images": queued}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
