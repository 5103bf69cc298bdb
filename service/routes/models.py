"""`GET /v1/models`: the served models, their revision, weights hash and shapes."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from ..schemas import ModelCard, ModelList
from ..web import RegistryDep, require_key

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_key)])


@router.get("/models", response_model=ModelList)
async def models(registry: RegistryDep) -> ModelList:
    registry.get(None)  # 503 until the models are loaded and warm
    return ModelList(data=[ModelCard(**asdict(s.engine.info)) for s in registry.models.values()])
