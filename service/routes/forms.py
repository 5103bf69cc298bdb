"""Reading request bodies for the /v1 routes: JSON with a size-checked, depth-limited
parser (pydantic's), and multipart forms read by hand so that every problem becomes one
of our JSON errors rather than FastAPI's generic 400."""

from __future__ import annotations

import difflib
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from ..engine_errors import TooLarge, UnsupportedImage
from ..errors import APIError

M = TypeVar("M", bound=BaseModel)
MAX_FIELDS = 32  # text fields of one form (the options); files are counted apart
MAX_FIELD_BYTES = 1024 * 1024  # one text field (Starlette's default); files have no such cap


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
    # One file more than allowed, so that the caller reports a few too many with its own limit.
    try:
        return await request.form(
            max_files=max_files + 1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except (HTTPException, MultiPartException) as exc:
        # Starlette answers every multipart problem with a bare 400: name each one.
        raise _form_error(str(getattr(exc, "detail", None) or exc), max_files) from None


def _form_error(detail: str, max_files: int) -> APIError:
    if detail.startswith("Too many files"):
        images = "image" if max_files == 1 else "images"
        return TooLarge(f"too many files in one request: the limit is {max_files} {images}")
    if detail.startswith("Part exceeded maximum size"):
        return TooLarge(
            f"a text field of the form is over {MAX_FIELD_BYTES // 1024} KiB: send images as "
            "file parts (with a filename), not as text fields"
        )
    if detail.startswith("Too many fields"):
        detail = f"too many fields (at most {MAX_FIELDS})"
    return APIError(f"malformed multipart/form-data body: {detail}", code="invalid_multipart")


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


def fields(
    form: FormData, names: tuple[str, ...], file_parts: tuple[str, ...] = ("file",)
) -> dict[str, str]:
    """The text fields `names` of the form, as given. Any part that is neither one of them
    nor one of `file_parts` is a 422 naming it: a misspelt option (`maskratio`) must not
    fall back to its default without a word."""
    unknown(form, (*file_parts, *names))
    out = {}
    for key in names:
        value = form.get(key)
        if isinstance(value, UploadFile):
            raise APIError(f"form field '{key}' must be text, not a file", code="invalid_request")
        if value is not None:
            out[key] = value
    return out


def unknown(form: FormData, known: tuple[str, ...]) -> None:
    """Refuse a form holding a part not in `known`, naming each such part and the known ones
    (with the closest known name when one is near: `maskratio` -> `mask_ratio`)."""
    extra = list(dict.fromkeys(key for key in form if key not in known))
    if not extra:
        return
    hints = []
    for key in extra:
        near = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.75)
        if near:
            hints.append(repr(near[0]) if len(extra) == 1 else f"{near[0]!r} for {key!r}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    what = "field" if len(extra) == 1 else "fields"
    raise APIError(
        f"unknown form {what} {', '.join(map(repr, extra))}{hint}; the known fields are "
        + ", ".join(map(repr, known)),
        status=422,
        code="invalid_request",
    )
