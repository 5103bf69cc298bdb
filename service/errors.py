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
from starlette.exceptions import HTTPException as StarletteHTTPException

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
)

HUB_PREFIXES = ("/api/", "/lfs/")


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
    from fastapi.exception_handlers import (
        http_exception_handler,
        request_validation_exception_handler,
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _is_hub(request):
            return await request_validation_exception_handler(request, exc)
        return error_response(422, "invalid_request", _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        if _is_hub(request):
            return await http_exception_handler(request, exc)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
