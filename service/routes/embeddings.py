"""`POST /v1/embeddings` (JSON, OpenAI-style) and `POST /v1/embeddings/upload` (multipart).

Both answer the same body: `{"object": "list", "data": [{"object": "embedding", "index",
"embedding"}], "model", "usage": {"images": n}}`, in input order.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..engine import POOLINGS
from ..engine_errors import UrlRefused
from ..errors import APIError, error_responses
from ..fetch import fetch_image, is_url
from ..imaging import decode_base64
from ..registry import Registry
from ..schemas import EmbeddingOptions, EmbeddingRequest, EmbeddingResponse
from ..settings import Settings
from ..web import RegistryDep, check_count, deadline, require_key, until_disconnect
from . import forms

# Every status an embedding request can answer besides 200 (the batcher's 429/504/507
# included), in the one error body.
router = APIRouter(
    prefix="/v1",
    tags=["embeddings"],
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 499, 500, 502, 503, 504, 507),
)
JSON = "application/json"
# The body is read and validated by hand (size-checked, one pass); the document still
# gives its schema, so "Try it out" and client generators can use the route.
_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": EmbeddingRequest.model_json_schema()}},
    }
}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more images (repeat the part)",
                        },
                        "model": {"type": "string"},
                        "pooling": {"type": "string", "enum": list(POOLINGS)},
                        "normalize": {"type": "boolean", "default": True},
                        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    },
                }
            }
        },
    }
}


@router.post("/embeddings", response_model=EmbeddingResponse, openapi_extra=_JSON_BODY)
async def embeddings(request: Request, registry: RegistryDep) -> Response:
    """Embed base64 or data-URL images (OpenAI-style body, `application/json`)."""
    until = deadline(request)
    body = await forms.read_json(request, EmbeddingRequest, upload_hint="/v1/embeddings/upload")
    images = body.input
    check_count(request, len(images))
    if body.dimensions is not None:
        width = registry.get(body.model).engine.info.embed_dim
        if body.dimensions != width:
            raise APIError(
                f"dimensions={body.dimensions}: this model's embeddings have {width}; MAE "
                "embeddings are not trained to be shortened, so omit dimensions or give "
                f"{width}",
                code="invalid_dimensions",
            )
    blobs = await _input_bytes(images, registry.settings)
    names = [f"input[{i}]" for i in range(len(blobs))]
    return await _embed(request, registry, blobs, names, body, until)


@router.post("/embeddings/upload", response_model=EmbeddingResponse, openapi_extra=_UPLOAD_BODY)
async def embeddings_upload(request: Request, registry: RegistryDep) -> Response:
    """Embed uploaded image files (`multipart/form-data`, one `file` part per image)."""
    until = deadline(request)
    form = await forms.read_form(request, max_files=registry.settings.max_images_per_request)
    files = await forms.files(form, "file")
    check_count(request, len(files))
    fields = forms.fields(form, ("model", "pooling", "normalize", "encoding_format"))
    try:
        options = EmbeddingOptions.model_validate(fields, strict=False)
    except ValidationError as exc:
        raise forms.invalid(exc) from None
    names = [f"file[{i}] ({name})" for i, (name, _) in enumerate(files)]
    return await _embed(request, registry, [data for _, data in files], names, options, until)


async def _input_bytes(images: list[str], settings: Settings) -> list[bytes]:
    """Each input's bytes: base64 and data URLs decoded here, http(s) URLs fetched (all at
    once) when MAE_ALLOW_URLS is on, refused otherwise."""
    limit = settings.max_image_bytes
    urls = {i: s for i, s in enumerate(images) if is_url(s)}
    if urls and not settings.allow_urls:
        first = next(iter(urls))
        raise UrlRefused(
            f"input[{first}]: this server does not fetch image URLs (MAE_ALLOW_URLS is off); "
            "send the image as base64 or a data URL"
        )
    blobs: list[bytes | None] = [
        None if i in urls else decode_base64(s, limit, what=f"input[{i}]")
        for i, s in enumerate(images)
    ]
    if urls:
        policy = settings.url_policy()
        fetched = await asyncio.gather(
            *(fetch_image(url, policy, what=f"input[{i}]") for i, url in urls.items())
        )
        for i, data in zip(urls, fetched, strict=True):
            blobs[i] = data
    return [b for b in blobs if b is not None]


async def _embed(
    request: Request,
    registry: Registry,
    blobs: list[bytes],
    names: list[str],
    options: EmbeddingOptions,
    until: float,
) -> Response:
    """The path of every embedding: registry -> decode and preprocess (engine, in the
    decode threads) -> batcher -> worker -> engine.embed (the forward) -> rows back here."""
    served = registry.get(options.model)
    served.batcher.admit(len(blobs))  # a full queue answers 429 before any decoding
    batch = await served.images(blobs, names)
    pooled = await until_disconnect(request, served.batcher.embed(batch, until))
    vectors = pooled[:, POOLINGS.index(options.pooling)].numpy()  # (n, D) float32
    tokens = len(blobs) * served.engine.info.tokens_per_image
    if options.normalize:  # as torch's F.normalize: x / max(|x|, 1e-12), in numpy (no op overhead)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e}
            for i, e in enumerate(_encode(vectors, options.encoding_format))
        ],
        "model": served.engine.id,
        "usage": {"images": len(blobs), "prompt_tokens": tokens, "total_tokens": tokens},
    }
    # orjson writes the float32 rows as they are (shortest round-trip form) in one pass;
    # the EmbeddingResponse schema stays the documented contract.
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


def _encode(vectors: np.ndarray, encoding: str) -> list[Any]:
    """vectors (n, D) float32 -> one `embedding` value per row."""
    if encoding == "base64":  # OpenAI's: little-endian float32 bytes, base64
        rows = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    if not np.isfinite(vectors).all():
        raise APIError(
            "the model produced a non-finite embedding", status=500, code="internal_error"
        )
    return list(vectors)
