"""The service's errors as HTTP answers: JSON `{"error": {"code", "message"}}` with the
right status.

Two kinds reach here. The engine side (imaging, engine, batcher, registry) raises the
plain exceptions of `engine_errors.py`; `STATUS` below is the one map from each to its
status. The HTTP layer (forms, auth, routes) raises `APIError` for what only HTTP knows
(a media type, a missing key). `install_handlers` turns both, FastAPI's validation errors
and Starlette's HTTP errors into the one shape. The hub routes keep the Hub's own error
shape (`routes/hub.py`), which `huggingface_hub` parses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from .engine_errors import (
    DeadlineExceeded,
    DeviceFailure,
    InvalidImage,
    InvalidInput,
    NoDecoder,
    NotReady,
    OutOfMemory,
    QueueFull,
    ServiceError,
    TooLarge,
    UnknownModel,
    UnsupportedImage,
    UrlFetchFailed,
    UrlRefused,
)

HUB_PREFIXES = ("/api/", "/lfs/")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_image, too_large, not_ready")
    message: str = Field(description="what is wrong, for people")


class ErrorBody(BaseModel):
    """Every error of the service's own routes has this body (the hub routes answer as the
    Hugging Face Hub does, which huggingface_hub parses)."""

    error: ErrorDetail


# What each status means on our routes, for the OpenAPI document.
MEANING = {
    400: "bad input: an image that is not valid, a malformed body or parameter",
    401: "no API key, or a wrong one (when MAE_API_KEYS is set)",
    403: "an image URL this server will not fetch (MAE_ALLOW_URLS, a non-public address)",
    404: "no such model (or route)",
    405: "method not allowed (the Allow header lists the allowed ones)",
    406: "none of the media types in Accept can be given",
    409: "the model cannot do this (e.g. no decoder)",
    413: "too large: body, image bytes, pixels or images per request",
    415: "unsupported media type (Content-Type, or an image format)",
    422: "a well-formed body whose values are not valid",
    429: "the queue is full: retry after Retry-After seconds",
    499: "the client closed the connection before the request body was complete or its "
    "answer was ready: nothing was kept (never sent, as nobody is left to read it; counted "
    "in the metrics)",
    500: "internal error",
    502: "an image URL could not be fetched (no such host, an error status, too slow)",
    503: "not ready: the models are loading (or failed to load)",
    504: "the request timed out in the queue (MAE_REQUEST_TIMEOUT_S)",
    507: "out of device memory for this batch",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route or router: each status with the one error body."""
    return {s: {"model": ErrorBody, "description": MEANING[s]} for s in statuses}


class APIError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code
        self.headers = headers or {}


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class ClientClosed(APIError):
    """The client went away before its answer was ready (nginx's 499: never sent)."""

    status, code = 499, "client_closed"


# The engine side's errors (`engine_errors.py`) and the status each answers with.
STATUS: dict[type[ServiceError], int] = {
    InvalidImage: 400,
    UnsupportedImage: 415,
    TooLarge: 413,
    InvalidInput: 422,
    UnknownModel: 404,
    NoDecoder: 409,
    NotReady: 503,
    QueueFull: 429,
    DeadlineExceeded: 504,
    OutOfMemory: 507,
    DeviceFailure: 500,
    UrlRefused: 403,
    UrlFetchFailed: 502,
}


def status_of(exc: ServiceError) -> int:
    """The HTTP status of an engine-side error (500 for one not in `STATUS`)."""
    return next((STATUS[k] for k in type(exc).__mro__ if k in STATUS), 500)


def service_error_response(exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    return error_response(status_of(exc), exc.code, exc.message, headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _is_hub(request: Request) -> bool:
    path = request.url.path
    return path.startswith(HUB_PREFIXES) or "/resolve/" in path


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form")]
        where = ".".join(loc)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_handlers(app: FastAPI) -> None:

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # A body cut short by the client (a dropped connection, a crashed client) is the
        # client's doing, not an internal error: nginx's 499, and nothing of it is kept.
        message = "the client closed the connection before the request body was complete"
        if _is_hub(request):
            return _hub_error(499, message, request)
        return error_response(499, ClientClosed.code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _validation_message(list(exc.errors()))
        if _is_hub(request):
            return _hub_error(422, message, request)
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; several
            # routes can share a path (GET in one, HEAD in another), so ask them all.
            given = [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
            headers["Allow"] = ", ".join(allowed_methods(request) or given)
            exc = StarletteHTTPException(405, exc.detail, headers)
        if _is_hub(request):
            return _hub_error(exc.status_code, str(exc.detail), request, headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 405:
            use = " or ".join(headers["Allow"].split(", "))
            message = f"method {request.method} is not allowed on {request.url.path}: use {use}"
        elif exc.status_code == 404 and message == "Not Found":
            message = f"not found: no route {request.url.path} (the API is described at /docs)"
        return error_response(exc.status_code, code, message, headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def hub_error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in the Hub's shape, which huggingface_hub reads: `{"error": message}` with
    X-Error-Message (and X-Error-Code when there is one)."""
    extra = {"X-Error-Message": header_safe(message)}
    if code:
        extra["X-Error-Code"] = code
    return JSONResponse({"error": message}, status, headers={**(headers or {}), **extra})


def _hub_error(
    status: int, message: str, request: Request, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The framework's own errors (no route, a wrong method, a bad parameter) on the hub's
    paths, in the Hub's shape, as `routes/hub.py` answers its own."""
    if status == 404 and message == "Not Found":
        message = f"not found: the hub has no route {request.url.path}"
    return hub_error_response(status, message, headers=headers)


def header_safe(text: str) -> str:
    """`text` as an HTTP header value: ASCII, no control characters (a path or name the
    client sent may hold a newline, and an invalid header would drop the connection
    instead of answering), at most 500 characters."""
    ascii_text = text.encode("ascii", "replace").decode()
    return "".join(c if " " <= c < "\x7f" else " " for c in ascii_text)[:500]


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches on this request's path. Starlette's
    own Allow names the methods of the first route whose path matched only, so a path
    served by two routes (GET in one, HEAD in another) was said to allow one of them."""
    allowed = []
    for method in _METHODS:
        scope = dict(request.scope, method=method)
        if any(r.matches(scope)[0] == Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return allowed
