"""Request and response bodies of the `/v1` routes (pydantic models only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


class _Request(BaseModel):
    # Unknown fields are ignored (OpenAI clients send `user`, `dimensions`, ...), but the
    # known ones are strict: no "0.5" for a float, no 1 for a bool.
    model_config = ConfigDict(extra="ignore", strict=True)


class EmbeddingOptions(_Request):
    model: str | None = Field(default=None, description="a served model id (default: the first)")
    pooling: Literal["mean", "cls"] = Field(
        default="mean",
        description="the mean of the patch tokens (default), or the class token. MAE puts no "
        "loss on the class token, so it carries little: on the sample photos, cls gave a cat "
        "and a rocket cosine 0.90, mean 0.23",
    )
    normalize: bool = Field(default=True, description="scale each embedding to unit L2 norm")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float list, or base64 of little-endian float32 (OpenAI's)"
    )


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class EmbeddingRequest(EmbeddingOptions):
    # A string is one image (as OpenAI takes one text); it becomes a list of one before
    # validation, so every error names its item as input.N.
    input: Annotated[
        list[str],
        BeforeValidator(_one_or_many),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ],
                "title": "Input",
            }
        ),
    ] = Field(
        min_length=1,
        description="one image, or a list of them, as base64 strings, data URLs "
        "(data:image/png;base64,...) or, where MAE_ALLOW_URLS is on, http(s) URLs",
    )
    dimensions: int | None = Field(
        default=None,
        description="OpenAI's: accepted when it is the model's width (see /v1/models, "
        "embed_dim), refused with a 400 otherwise; MAE embeddings are not trained to be cut short",
    )
    user: str | None = Field(default=None, description="OpenAI's end-user id: accepted, unused")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    images: int
    prompt_tokens: int = Field(
        description="the encoder's tokens over all images: 1 + patches per image (65 for a "
        "64 px image in 8 px patches), as OpenAI counts an input's tokens"
    )
    total_tokens: int = Field(description="the same as prompt_tokens (nothing is generated)")


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# mae_core.masking.MASK_STRATEGIES, spelt out for the schema (a test keeps the two equal).
MaskStrategy = Literal["random", "block", "grid", "centre"]


class ReconstructionOptions(_Request):
    model: str | None = None
    mask_ratio: float = Field(
        default=0.75, gt=0.0, lt=1.0, allow_inf_nan=False, description="share of patches hidden"
    )
    mask_strategy: MaskStrategy = Field(
        default="random",
        description="which patches are hidden: random (the paper's), block (rectangles of "
        "neighbouring patches, BEiT's), grid (one patch kept in every 2x2 cell: mask_ratio "
        "0.75 and an even patch grid only) or centre (a centred square)",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**63,
        description="same seed (and strategy), same mask (random when absent)",
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
    mask_strategy: MaskStrategy = Field(description="the sampling strategy used")
    loss: float
    mask: list[list[int]] = Field(description="patch grid, 1 = hidden")
    patch_error: list[list[float]] = Field(description="patch grid of per-patch MSE (loss space)")
    panels: ReconstructionPanels
    caption: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the model was loaded (Unix seconds), as OpenAI's")
    owned_by: str = Field(description="the hub namespace of the id, else mae-hub")
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
    fused_layers: bool = Field(
        description="the torch backend runs the encoder blocks in fused kernels "
        "(MAE_FUSED_LAYERS; CPU: oneDNN's linears in float32, one encoder-layer kernel a "
        "block in bfloat16)"
    )
    packed_weights: bool = Field(
        description="those kernels read copies of the projection weights packed in oneDNN's "
        "layout (MAE_PACK_WEIGHTS; CPU, float32 only)"
    )
    tokens_per_image: int = Field(description="what one image counts as in usage.prompt_tokens")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
