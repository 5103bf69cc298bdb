"""`GET /v1/models`: the served models, their revision, weights hash and shapes."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from ..runtime import RuntimeDep, require_key
from ..schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_key)])


@router.get("/models", response_model=ModelList)
async def models(rt: RuntimeDep) -> ModelList:
    rt.get(None)  # 503 until the models are loaded and warm
    return ModelList(data=[ModelCard(**asdict(s.engine.info)) for s in rt.models.values()])
