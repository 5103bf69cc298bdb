"""`Runtime`: the served models and their batchers, built by the app's lifespan, plus what
every `/v1` route needs (model lookup, image decoding off the event loop, body limits,
API keys, client-disconnect handling).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import torch
from anyio import to_thread
from fastapi import Depends, Request

from .batcher import Batcher
from .engine import Engine
from .errors import APIError, NotFound, NotReady, TooLarge, Unauthorized, error_response
from .imaging import decode
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("mae.service")
T = TypeVar("T")


@dataclass
class Served:
    engine: Engine
    batcher: Batcher


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    models: dict[str, Served] = field(default_factory=dict)  # id -> served, in MAE_MODEL order
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> id
    ready: bool = False
    error: str | None = None  # why loading failed

    # -- lifecycle ------------------------------------------------------------------------
    async def load(self) -> None:
        """Load, warm up and start every model; `ready` turns true only at the end."""
        s = self.settings
        try:
            for model_id in s.model:
                t0 = time.perf_counter()
                engine = await to_thread.run_sync(
                    lambda m=model_id: Engine(
                        m,
                        device=s.device,
                        dtype=s.dtype,
                        with_decoder=s.reconstruction,
                        models_dir=s.models_dir,
                    )
                )
                if s.warmup:
                    await to_thread.run_sync(engine.warmup, s.max_batch_images)
                batcher = Batcher(
                    engine,
                    max_batch_images=s.max_batch_images,
                    max_wait_s=s.max_batch_wait_ms / 1000.0,
                    max_queue_images=s.max_queue_images,
                    metrics=self.metrics,
                )
                batcher.start()
                self.models[engine.id] = Served(engine, batcher)
                for alias in [model_id, *engine.info.aliases]:
                    self.aliases.setdefault(alias, engine.id)
                log.info(
                    "serving %s (%s, %s, heads: %s) ready in %.1f s",
                    engine.id,
                    engine.info.device,
                    engine.info.dtype,
                    "+".join(engine.info.heads),
                    time.perf_counter() - t0,
                )
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the model(s): %s", self.error)
            return
        self.ready = True
        self.metrics.ready.set(1)

    async def close(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        await asyncio.gather(*(served.batcher.close() for served in self.models.values()))

    # -- lookups --------------------------------------------------------------------------
    def get(self, name: str | None) -> Served:
        if not self.ready:
            raise NotReady(
                f"the model failed to load: {self.error}" if self.error else "models are loading"
            )
        if name is None:
            return next(iter(self.models.values()))
        model_id = self.aliases.get(name, name)
        if model_id not in self.models:
            raise NotFound(
                f"model {name!r} is not served here; served: {', '.join(self.models)}",
                code="model_not_found",
            )
        return self.models[model_id]

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    # -- images ---------------------------------------------------------------------------
    async def images_to_tensor(
        self, blobs: list[bytes], engine: Engine, names: list[str], reconstruction: bool = False
    ) -> torch.Tensor:
        """Decode and preprocess every image in the thread pool -> (n, 3, S, S)."""
        s = self.settings
        prep = engine.preprocess_for_reconstruction if reconstruction else engine.preprocess

        def one(data: bytes, what: str) -> torch.Tensor:
            img = decode(
                data,
                max_bytes=s.max_image_bytes,
                max_pixels=s.max_image_pixels,
                min_side=engine.min_side(),
                what=what,
            )
            return prep(img)

        tensors = await asyncio.gather(
            *(to_thread.run_sync(one, b, n) for b, n in zip(blobs, names, strict=True))
        )
        return torch.stack(tensors)

    def check_count(self, n: int) -> None:
        limit = self.settings.max_images_per_request
        if n > limit:
            raise TooLarge(
                f"{n} images in one request; the limit is {limit} (MAE_MAX_IMAGES_PER_REQUEST)"
            )


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def require_key(request: Request) -> None:
    """FastAPI dependency of the /v1 routers: a bearer key when MAE_API_KEYS is set."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = value.strip().encode()
    ok = scheme.lower() == "bearer" and any(hmac.compare_digest(given, k.encode()) for k in keys)
    if not ok:
        what = "a wrong API key" if value.strip() else "no API key"
        raise Unauthorized(
            f"{what}: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first (which frees its place
    in the queue). Call only after the request body has been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled():
        raise APIError("the client closed the connection", status=499, code="client_closed")
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class BodyLimit:
    """ASGI middleware: bodies of the /v1 routes over `limit` bytes get a 413, from the
    Content-Length header at once or while streaming (chunked uploads)."""

    def __init__(self, app: Any, limit: int, prefix: str = "/v1/") -> None:
        self.app, self.limit, self.prefix = app, limit, prefix

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        message = f"request body over the {self.limit}-byte limit (MAE_MAX_BODY_BYTES)"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await error_response(413, "too_large", message)(scope, receive, send)
                    return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(message)
            return msg

        await self.app(scope, counted, send)
