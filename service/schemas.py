"""Request and response bodies of the `/v1` routes (pydantic models only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    # Unknown fields are ignored (OpenAI clients send `user`, `dimensions`, ...), but the
    # known ones are strict: no "0.5" for a float, no 1 for a bool.
    model_config = ConfigDict(extra="ignore", strict=True)


class EmbeddingOptions(_Request):
    model: str | None = Field(default=None, description="a served model id (default: the first)")
    pooling: Literal["cls", "mean"] = Field(
        default="cls", description="class token, or the mean of the patch tokens"
    )
    normalize: bool = Field(default=True, description="scale each embedding to unit L2 norm")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float list, or base64 of little-endian float32 (OpenAI's)"
    )


class EmbeddingRequest(EmbeddingOptions):
    input: list[str] = Field(
        min_length=1,
        description="images as base64 strings or data URLs (data:image/png;base64,...)",
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    images: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ReconstructionOptions(_Request):
    model: str | None = None
    mask_ratio: float = Field(
        default=0.75, gt=0.0, lt=1.0, allow_inf_nan=False, description="share of patches hidden"
    )
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="same seed, same mask (random when absent)"
    )


class ReconstructionRequest(ReconstructionOptions):
    image: str = Field(description="one image as a base64 string or a data URL")


class ReconstructionPanels(BaseModel):
    original: str = Field(description="base64 PNG")
    masked: str
    reconstruction: str
    reconstruction_visible: str = Field(
        description="reconstruction with the visible patches pasted"
    )


class ReconstructionResponse(BaseModel):
    model: str
    seed: int
    mask_ratio: float
    loss: float
    mask: list[list[int]] = Field(description="patch grid, 1 = hidden")
    patch_error: list[list[float]] = Field(description="patch grid of per-patch MSE (loss space)")
    panels: ReconstructionPanels
    caption: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    aliases: list[str]
    revision: str | None
    sha256: str | None
    image_size: int
    patch_size: int
    embed_dim: int
    heads: list[str]
    device: str
    dtype: str
    parameters: dict[str, int]
    norm_pix_loss: bool
    backend: str = Field(description="what runs the forward: torch, onnxruntime, onnxruntime-int8")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
