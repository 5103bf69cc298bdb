"""What the `/v1` routes share on the HTTP side: the registry as a dependency, the API-key
check, a request's deadline and image count, cancelling work when the client goes away,
and the request-body size limit (an ASGI middleware)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from .engine_errors import TooLarge
from .errors import ClientClosed, Unauthorized, error_response
from .registry import Registry

T = TypeVar("T")
log = logging.getLogger("mae.service")


# The dependencies are `async def`: FastAPI would run a plain `def` in a worker thread,
# two thread hand-offs per request for a dictionary lookup.
async def registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(registry)]


async def require_key(request: Request) -> None:
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


def deadline(request: Request) -> float:
    """The time.monotonic() by which this request must be answered (MAE_REQUEST_TIMEOUT_S)."""
    return time.monotonic() + request.app.state.settings.request_timeout_s


def check_count(request: Request, n: int) -> None:
    limit = request.app.state.settings.max_images_per_request
    if n > limit:
        raise TooLarge(
            f"{n} images in one request; the limit is {limit} (MAE_MAX_IMAGES_PER_REQUEST)"
        )


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first (which frees its place
    in the queue) and answering the client's 499. Call only after the request body has
    been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left first (or this coroutine was cancelled)
            task.cancel()
            # The cancellation lands on the loop's next turn; whatever the work ends with
            # then is nobody's to read, so read it here (no "never retrieved" warning).
            task.add_done_callback(_drop_outcome)
    if not task.done() or task.cancelled():
        raise ClientClosed("the client closed the connection")
    return task.result()


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("work of a client gone ended with %r", task.exception())


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
