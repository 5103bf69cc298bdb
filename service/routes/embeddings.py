"""`POST /v1/embeddings` (JSON, OpenAI-style) and `POST /v1/embeddings/upload` (multipart).

Both answer the same body: `{"object": "list", "data": [{"object": "embedding", "index",
"embedding"}], "model", "usage": {"images": n}}`, in input order.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from ..engine import POOLINGS
from ..errors import APIError
from ..imaging import decode_base64
from ..registry import Registry
from ..schemas import Embedding, EmbeddingOptions, EmbeddingRequest, EmbeddingResponse, Usage
from ..web import RegistryDep, check_count, deadline, require_key, until_disconnect
from . import forms

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[Depends(require_key)])

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


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(request: Request, registry: RegistryDep) -> EmbeddingResponse:
    """Embed base64 or data-URL images (OpenAI-style body, `application/json`)."""
    until = deadline(request)
    body = await forms.read_json(request, EmbeddingRequest, upload_hint="/v1/embeddings/upload")
    check_count(request, len(body.input))
    limit = registry.settings.max_image_bytes
    blobs = [decode_base64(s, limit, what=f"input[{i}]") for i, s in enumerate(body.input)]
    names = [f"input[{i}]" for i in range(len(blobs))]
    return await _embed(request, registry, blobs, names, body, until)


@router.post("/embeddings/upload", response_model=EmbeddingResponse, openapi_extra=_UPLOAD_BODY)
async def embeddings_upload(request: Request, registry: RegistryDep) -> EmbeddingResponse:
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


async def _embed(
    request: Request,
    registry: Registry,
    blobs: list[bytes],
    names: list[str],
    options: EmbeddingOptions,
    until: float,
) -> EmbeddingResponse:
    """The path of every embedding: registry -> decode and preprocess (engine, in threads)
    -> batcher -> worker -> engine.embed (the forward) -> pooled rows back here."""
    served = registry.get(options.model)
    batch = await served.images(blobs, names)
    pooled = await until_disconnect(request, served.batcher.embed(batch, until))
    vectors = pooled[:, POOLINGS.index(options.pooling)]  # (n, D)
    if options.normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return EmbeddingResponse(
        data=[
            Embedding(index=i, embedding=_encode(v, options.encoding_format))
            for i, v in enumerate(vectors)
        ],
        model=served.engine.id,
        usage=Usage(images=len(blobs)),
    )


def _encode(vector: torch.Tensor, encoding: str) -> Any:
    if encoding == "base64":  # OpenAI's: little-endian float32 bytes, base64
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    if not torch.isfinite(vector).all():
        raise APIError(
            "the model produced a non-finite embedding", status=500, code="internal_error"
        )
    return np.asarray(vector, dtype=np.float64).tolist()
