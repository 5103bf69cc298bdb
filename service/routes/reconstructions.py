"""`POST /v1/reconstructions`: mask one image, reconstruct it, answer the four panels.

The image comes as multipart (`file`, with `mask_ratio`, `seed`, `model` fields) or as
JSON (`image` base64 or data URL). The answer is JSON with base64 PNG panels, the mask
and per-patch error on the patch grid and the loss; with `Accept: image/png`, one PNG of
the four panels side by side (the seed in the `X-MAE-Seed` header).
"""

from __future__ import annotations

import base64
import io
import secrets

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import ValidationError

from mae_core.visualize import Panels, panels_figure

from ..engine_errors import NoDecoder, TooLarge
from ..imaging import decode_base64
from ..schemas import (
    ReconstructionOptions,
    ReconstructionPanels,
    ReconstructionRequest,
    ReconstructionResponse,
)
from ..web import RegistryDep, deadline, require_key, until_disconnect
from . import forms

router = APIRouter(prefix="/v1", tags=["reconstructions"], dependencies=[Depends(require_key)])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "mask_ratio": {"type": "number", "default": 0.75},
                        "seed": {"type": "integer"},
                        "model": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": ReconstructionRequest.model_json_schema()},
        },
    },
    "responses": {"200": {"content": {"image/png": {}}}},
}


@router.post("/reconstructions", response_model=ReconstructionResponse, openapi_extra=_BODY)
async def reconstructions(request: Request, registry: RegistryDep) -> Response:
    """Mask one image at `mask_ratio` with `seed`, reconstruct it with the MAE decoder."""
    until = deadline(request)
    if forms.media_type(request) == "multipart/form-data":
        form = await forms.read_form(request, max_files=1)
        files = await forms.files(form, "file")
        if len(files) > 1:  # as read_form answers for more: one status for "too many files"
            raise TooLarge(f"one image per reconstruction, got {len(files)} 'file' parts")
        name, data = files[0]
        try:
            options = ReconstructionOptions.model_validate(
                forms.fields(form, ("model", "mask_ratio", "seed")), strict=False
            )
        except ValidationError as exc:
            raise forms.invalid(exc) from None
        what = f"file ({name})"
    else:
        body = await forms.read_json(request, ReconstructionRequest)
        data = decode_base64(body.image, registry.settings.max_image_bytes, what="image")
        options, what = body, "image"

    served = registry.get(options.model)
    engine = served.engine
    if not engine.has_decoder:
        reason = (
            "the service runs with MAE_RECONSTRUCTION=false"
            if not registry.settings.reconstruction
            else "its weights hold the encoder only"
        )
        raise NoDecoder(f"model {engine.id} cannot reconstruct: {reason}")
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    x = (await served.images([data], [what], reconstruction=True))[0]
    work = served.batcher.run(lambda: engine.reconstruct(x, options.mask_ratio, seed), until)
    panels: Panels = await until_disconnect(request, work)

    if _wants_png(request):
        png = await to_thread.run_sync(lambda: _png(panels_figure(panels)))
        headers = {"X-MAE-Seed": str(seed), "X-MAE-Loss": f"{panels.loss:.6f}"}
        return Response(png, media_type="image/png", headers=headers)
    answer = await to_thread.run_sync(_answer, panels, engine.id, engine.info.patch_size)
    return Response(answer.model_dump_json(), media_type="application/json")


def _wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    ranked = [part.split(";")[0].strip() for part in accept.split(",")]
    return "image/png" in ranked and (
        "application/json" not in ranked
        or ranked.index("image/png") < ranked.index("application/json")
    )


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _b64_png(pixels: np.ndarray) -> str:
    return base64.b64encode(_png(Image.fromarray(pixels))).decode("ascii")


def _answer(panels: Panels, model_id: str, patch_size: int) -> ReconstructionResponse:
    grid = (panels.original.shape[0] // patch_size, panels.original.shape[1] // patch_size)
    return ReconstructionResponse(
        model=model_id,
        seed=panels.seed,
        mask_ratio=panels.mask_ratio,
        loss=panels.loss,
        mask=panels.mask.reshape(grid).astype(int).tolist(),
        patch_error=np.round(panels.patch_error.reshape(grid).astype(np.float64), 6).tolist(),
        panels=ReconstructionPanels(
            original=_b64_png(panels.original),
            masked=_b64_png(panels.masked),
            reconstruction=_b64_png(panels.reconstruction),
            reconstruction_visible=_b64_png(panels.pasted),
        ),
        caption=panels.caption,
    )
