"""`POST /v1/reconstructions`: mask one image, reconstruct it, answer the four panels.

The image comes as multipart (`file`, with `mask_ratio`, `mask_strategy`, `seed`, `model`
fields) or as JSON (`image` base64 or data URL). The answer is JSON with base64 PNG panels, the mask
and per-patch error on the patch grid and the loss; when the `Accept` header prefers an
image type we make (`image/png`, `image/*`), one PNG of the four panels side by side (the
seed in the `X-MAE-Seed` header). An `Accept` that allows neither is a 406.
"""

from __future__ import annotations

import base64
import io
import math
import secrets

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import ValidationError

from mae_core.errors import MAEValueError
from mae_core.masking import MASK_STRATEGIES, check_grid_masking
from mae_core.visualize import Panels, panels_figure

from ..engine import Engine
from ..engine_errors import NoDecoder, TooLarge
from ..errors import APIError, error_responses
from ..imaging import decode_base64
from ..schemas import (
    ReconstructionOptions,
    ReconstructionPanels,
    ReconstructionRequest,
    ReconstructionResponse,
)
from ..web import RegistryDep, deadline, require_key, until_disconnect
from . import forms

# Every status a reconstruction can answer besides 200, in the one error body: 406 for an
# Accept we cannot meet, 409 for a model without its decoder, the batcher's 429/504/507.
router = APIRouter(
    prefix="/v1",
    tags=["reconstructions"],
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 404, 406, 409, 413, 415, 422, 429, 499, 500, 503, 504, 507),
)

JSON, PNG = "application/json", "image/png"
OFFERS = (JSON, PNG)  # what this route can answer; JSON first, our choice on a tie

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
                        "mask_strategy": {
                            "type": "string",
                            "enum": list(MASK_STRATEGIES),
                            "default": "random",
                        },
                        "seed": {"type": "integer"},
                        "model": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": ReconstructionRequest.model_json_schema()},
        },
    },
    "responses": {
        "200": {
            "description": "JSON (the default), or one PNG of the four panels when the "
            "`Accept` header prefers `image/png` or `image/*`",
            "content": {"image/png": {}},
            "headers": {
                "X-MAE-Seed": {"description": "the seed used (PNG answer)"},
                "X-MAE-Loss": {"description": "the loss on this image (PNG answer)"},
            },
        },
    },
}


@router.post("/reconstructions", response_model=ReconstructionResponse, openapi_extra=_BODY)
async def reconstructions(request: Request, registry: RegistryDep) -> Response:
    """Mask one image at `mask_ratio` by `mask_strategy` with `seed`, reconstruct it with the
    MAE decoder."""
    until = deadline(request)
    answer_type = negotiate(request.headers.get("accept", ""))  # before any work is done
    if forms.media_type(request) == "multipart/form-data":
        form = await forms.read_form(request, max_files=1)
        files = await forms.files(form, "file")
        if len(files) > 1:  # as read_form answers for more: one status for "too many files"
            raise TooLarge(f"one image per reconstruction, got {len(files)} 'file' parts")
        name, data = files[0]
        try:
            options = ReconstructionOptions.model_validate(
                forms.fields(form, ("model", "mask_ratio", "mask_strategy", "seed")),
                strict=False,
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
    check_strategy(engine, options.mask_strategy, options.mask_ratio)  # before any decoding
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    x = (await served.images([data], [what], reconstruction=True))[0]
    strategy = options.mask_strategy
    work = served.batcher.run(
        lambda: engine.reconstruct(x, options.mask_ratio, seed, mask_strategy=strategy), until
    )
    panels: Panels = await until_disconnect(request, work)

    vary = {"Vary": "Accept"}  # the same request answers JSON or PNG by this header
    if answer_type == PNG:
        png = await to_thread.run_sync(lambda: _png(panels_figure(panels)))
        headers = {"X-MAE-Seed": str(seed), "X-MAE-Loss": f"{panels.loss:.6f}", **vary}
        return Response(png, media_type=PNG, headers=headers)
    answer = await to_thread.run_sync(_answer, panels, engine.id, engine.info.patch_size)
    return Response(answer.model_dump_json(), media_type=JSON, headers=vary)


def check_strategy(engine: Engine, strategy: str, mask_ratio: float) -> None:
    """A 422 naming the fix when `strategy` cannot mask at `mask_ratio` on `engine`'s patch
    grid: grid masking keeps one patch of every 2x2 cell, so it takes 0.75 on an even grid
    only (the others take any ratio the schema lets through)."""
    if strategy != "grid":
        return
    h, w = engine.model.config.grid_size
    try:
        check_grid_masking(mask_ratio, (h, w))
    except MAEValueError as exc:
        if h % 2 == 0 and w % 2 == 0:  # the ratio
            message = f"mask_strategy 'grid': {exc}"
        else:  # the client cannot change the model's grid: say what it can do
            message = (
                f"mask_strategy 'grid' keeps one patch of every 2x2 cell, but model "
                f"{engine.id} works on a {h}x{w} patch grid (odd): choose mask_strategy "
                "'random', 'block' or 'centre'"
            )
        raise APIError(message, status=422, code="invalid_request") from None


def negotiate(accept: str) -> str:
    """The type of `OFFERS` that an `Accept` header prefers (RFC 9110, section 12.5.1).

    Each offer takes the q-value of the most specific range that matches it (`image/png`
    over `image/*` over `*/*`); the highest q wins, then the offer matched more
    specifically (`image/*, */*` is PNG), then the one the client lists first (`image/png,
    application/json` is PNG, as before q-values were read), then JSON. No header, or one
    with no usable range, is JSON. A header that gives every offer q=0 is a 406 naming
    what we offer. A range with a malformed q-value is skipped (like a missing header)."""
    ranges = []  # (type, subtype, q, position)
    for position, item in enumerate(accept.lower().split(",")):
        kind, *params = (part.strip() for part in item.split(";"))
        main, slash, sub = kind.partition("/")
        if not slash or not main or not sub or (main == "*" and sub != "*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = math.nan
        if 0.0 <= q <= 1.0:
            ranges.append((main, sub, q, position))
    if not ranges:
        return JSON

    def score(offer: str) -> tuple[float, int, int]:
        """(q, specificity, -position) of the most specific range matching `offer`."""
        main, sub = offer.split("/")
        best = (0, 0.0, 0)  # (specificity, q, -position); no match: q 0
        for r_main, r_sub, q, position in ranges:
            if r_main in (main, "*") and r_sub in (sub, "*"):
                specificity = 3 if r_sub == sub else 2 if r_main == main else 1
                if specificity > best[0]:  # equally specific ranges: the first listed counts
                    best = (specificity, q, -position)
        return best[1], best[0], best[2]

    scores = {offer: score(offer) for offer in OFFERS}
    chosen = max(OFFERS, key=scores.__getitem__)  # the first of equals: JSON
    if scores[chosen][0] > 0.0:
        return chosen
    shown = accept if len(accept) <= 200 else accept[:200] + "..."
    raise APIError(
        f"the Accept header {shown!r} allows none of the types this route answers: "
        f"{JSON} (the default) or {PNG} (also as image/*)",
        status=406,
        code="not_acceptable",
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
        mask_strategy=panels.mask_strategy,
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
