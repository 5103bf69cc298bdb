"""The service's errors: JSON `{"error": {"code", "message"}}` with the right status.

Routes and the layers under them raise `APIError` (or a subclass); `install_handlers`
turns it, FastAPI's validation errors and Starlette's HTTP errors into that shape. The hub
routes keep the Hub's own error shape (`routes/hub.py`), which `huggingface_hub` parses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class InvalidImage(APIError):
    status, code = 400, "invalid_image"


class UnsupportedImage(APIError):
    status, code = 415, "unsupported_image"


class TooLarge(APIError):
    status, code = 413, "too_large"


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class NotFound(APIError):
    status, code = 404, "not_found"


class QueueFull(APIError):
    status, code = 429, "queue_full"


class NotReady(APIError):
    status, code = 503, "not_ready"


class DeadlineExceeded(APIError):
    status, code = 504, "deadline_exceeded"


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
