"""Service settings: environment variables with the `MAE_` prefix (or an `.env` file),
read once by `create_app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAE_", env_file=".env", extra="ignore")

    models_dir: Path | None = Field(
        default=None, description="the embedded hub's folder (default: the checkout's models/)"
    )
    hub_only: bool = Field(default=False, description="serve the hub endpoints, load no model")
    hub_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated tokens allowed to write to the hub"
    )
    hub_read_token_required: bool = Field(
        default=False, description="reads need a hub token too (private repos always do)"
    )
    hub_max_commit_bytes: int = Field(
        default=2 * 1024**3, description="largest commit body (inline files, base64) accepted"
    )

    @field_validator("hub_tokens", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    def resolved_models_dir(self) -> Path:
        from mae_core.hub import models_dir

        return self.models_dir if self.models_dir is not None else models_dir()
