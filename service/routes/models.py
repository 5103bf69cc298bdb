"""`GET /v1/models`: the served models, their revision, weights hash and shapes."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from ..errors import error_responses
from ..schemas import ModelCard, ModelList
from ..web import RegistryDep, require_key

router = APIRouter(
    prefix="/v1",
    tags=["models"],
    dependencies=[Depends(require_key)],
    responses=error_responses(401, 404, 500, 503),  # 404: a hub-only server, an unknown id
)


@router.get("/models", response_model=ModelList)
async def models(registry: RegistryDep) -> ModelList:
    registry.get(None)  # 503 until the models are loaded and warm
    return ModelList(data=[ModelCard(**asdict(s.engine.info)) for s in registry.models.values()])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def model(model_id: str, registry: RegistryDep) -> ModelCard:
    """One served model, by its id or an alias (OpenAI's `models.retrieve`); the id may
    hold slashes (`local:mae/vit-tiny-tinyimagenet`), sent as they are or %2F-encoded."""
    return ModelCard(**asdict(registry.get(model_id).engine.info))
