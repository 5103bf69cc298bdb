"""Reading request bodies for the /v1 routes: JSON with a size-checked, depth-limited
parser (pydantic's), and multipart forms read by hand so that every problem becomes one
of our JSON errors rather than FastAPI's generic 400."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from ..errors import APIError, UnsupportedImage

M = TypeVar("M", bound=BaseModel)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def invalid(exc: ValidationError) -> APIError:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error") or errors[0].get("msg")
        return APIError(f"the body is not valid JSON ({detail})", code="invalid_json")
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return APIError("; ".join(parts) + more, status=422, code="invalid_request")


async def read_json(request: Request, model: type[M], upload_hint: str | None = None) -> M:
    if media_type(request) != "application/json":
        hint = f", or multipart/form-data to {upload_hint}" if upload_hint else ""
        raise APIError(
            f"Content-Type {media_type(request) or '(none)'!r} is not accepted: send "
            f"application/json{hint}",
            status=415,
            code="unsupported_media_type",
        )
    body = await request.body()
    if not body.strip():
        raise APIError("empty request body: send a JSON object", code="empty_body")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc) from None


async def read_form(request: Request, max_files: int) -> FormData:
    if media_type(request) != "multipart/form-data":
        raise APIError(
            f"Content-Type {media_type(request) or '(none)'!r} is not accepted here: send "
            "multipart/form-data with one 'file' part per image",
            status=415,
            code="unsupported_media_type",
        )
    # One file more than allowed, so that "too many" is reported as such (not as a parse error).
    return await request.form(max_files=max_files + 1, max_fields=32)


async def files(form: FormData, name: str) -> list[tuple[str, bytes]]:
    """Every `name` part of the form as (filename, bytes); at least one is required."""
    parts = form.getlist(name)
    if not parts:
        raise APIError(
            f"no '{name}' part in the form: attach each image as a file part named '{name}'",
            code="missing_file",
        )
    out = []
    for i, part in enumerate(parts):
        if not isinstance(part, UploadFile):
            raise UnsupportedImage(f"'{name}' part {i} is a text field, not a file upload")
        out.append((part.filename or f"{name}[{i}]", await part.read()))
    return out


def fields(form: FormData, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for key in names:
        value = form.get(key)
        if isinstance(value, UploadFile):
            raise APIError(f"form field '{key}' must be text, not a file", code="invalid_request")
        if value is not None:
            out[key] = value
    return out
