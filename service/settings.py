"""Service settings: environment variables with the `MAE_` prefix (or an `.env` file),
read once by `create_app`. `mae serve` flags override them.

Invalid values fail at start: `settings_error_message` turns pydantic's report into one
line per problem, each naming the environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from .fetch import UrlPolicy

ENV_PREFIX = "MAE_"
CommaList = Annotated[list[str], NoDecode]


class Threads(NamedTuple):
    """The server's thread layout (`Settings.threads`)."""

    forward_workers: int  # forwards that run at once, per model
    forward_threads: int  # math threads of each
    decode: int  # threads that decode and preprocess images

    @property
    def math_threads(self) -> int:
        """All the forwards' math threads together."""
        return self.forward_workers * self.forward_threads

    def describe(self) -> str:
        forward = (
            f"{self.forward_threads} for the forward"
            if self.forward_workers == 1
            else f"{self.forward_workers} forwards at once with {self.forward_threads} each"
        )
        return f"threads: {forward}, {self.decode} to decode images"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", protected_namespaces=()
    )

    # -- where it listens -----------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address to bind: 127.0.0.1 (this machine only), 0.0.0.0 (every IPv4 "
        "interface), :: (IPv6), or one address of this machine",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on")

    # -- models ---------------------------------------------------------------------------
    model: CommaList = Field(
        default_factory=list,
        description="model id(s) to serve, comma-separated; the first is the default",
    )
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="compute dtype; auto: bfloat16 on CUDA, else float32"
    )
    reconstruction: bool = Field(
        default=True, description="keep the decoder for /v1/reconstructions (off: encoder only)"
    )
    warmup: bool = Field(default=True, description="run a batch through each model before /ready")
    backend: Literal["torch", "onnxruntime", "onnxruntime-int8"] = Field(
        default="torch",
        description="what runs the embedding forward: torch, or ONNX Runtime on the CPU "
        "(fp32, or int8 with dynamic quantisation); reconstructions always use torch",
    )
    fused_layers: bool = Field(
        default=True,
        description="torch backend on the CPU in float32 or bfloat16: run the encoder blocks in "
        "fused kernels, oneDNN's linears in float32 and one encoder-layer kernel a block in "
        "bfloat16 (checked against the plain forward at load; off: the plain forward)",
    )
    pack_weights: bool = Field(
        default=True,
        description="with the fused layers in float32 (oneDNN's linears): read copies of the "
        "projection weights packed in oneDNN's layout, the same embeddings 1.03-1.14x faster "
        "for the forward, at the cost of about the encoder's weight memory again (off: the "
        "model's own weights)",
    )
    onnx_cache: Path | None = Field(
        default=None,
        description="where exported ONNX files are kept (default: ~/.cache/mae-hub/onnx)",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, le=1024, description="math threads of the forward (default: all cores)"
    )
    forward_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="forwards that run at once for each model, sharing MAE_TORCH_THREADS "
        "between them, rounded down (default: 2 for the torch backend on a CPU of 2 cores or "
        "more, else 1; more than 1 only for the torch backend on a CPU)",
    )
    decode_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="threads that decode and preprocess images (default: half the cores with "
        "the forward on the CPU, all of them with it on a GPU)",
    )
    models_dir: Path | None = Field(
        default=None, description="the embedded hub's folder (default: the checkout's models/)"
    )

    # -- batching and limits --------------------------------------------------------------
    max_batch_images: int = Field(default=32, ge=1, le=4096, description="images per forward")
    max_batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="how long a batch waits for more requests after its first (0: not at all)",
    )
    max_queue_images: int = Field(
        default=1024, ge=1, description="images waiting at most; more -> 429 with Retry-After"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="deadline of a request from its arrival; past it -> 504"
    )
    max_images_per_request: int = Field(default=64, ge=1, description="images in one request")
    max_image_bytes: int = Field(default=16 * 1024**2, ge=1, description="bytes of one image")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="width x height of one image, checked before decoding"
    )
    max_body_bytes: int = Field(
        default=64 * 1024**2, ge=1, description="bytes of one request body on the /v1 routes"
    )

    # -- image URLs as input --------------------------------------------------------------
    allow_urls: bool = Field(
        default=False,
        description="accept http(s) image URLs in /v1/embeddings' input and fetch them (off: "
        "a URL is refused with 403)",
    )
    url_allow_networks: CommaList = Field(
        default_factory=list,
        description="private networks URLs may point into, comma-separated CIDRs (e.g. an "
        "internal object store's 10.1.0.0/16; empty: public addresses only)",
    )
    url_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="time for one URL's fetch, redirects included"
    )

    # -- access ---------------------------------------------------------------------------
    api_keys: CommaList = Field(
        default_factory=list,
        description="bearer keys for the /v1 routes, comma-separated (empty: open)",
    )
    cors_origins: CommaList = Field(
        default_factory=list, description="origins allowed by CORS, comma-separated (empty: off)"
    )

    # -- hub ------------------------------------------------------------------------------
    hub_only: bool = Field(default=False, description="serve the hub endpoints, load no model")
    hub_tokens: CommaList = Field(
        default_factory=list, description="comma-separated tokens allowed to write to the hub"
    )
    hub_read_token_required: bool = Field(
        default=False, description="reads need a hub token too (private repos always do)"
    )
    hub_max_commit_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="largest commit body (inline files, base64) accepted"
    )

    @field_validator(
        "model", "api_keys", "cors_origins", "hub_tokens", "url_allow_networks", mode="before"
    )
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: object) -> object:
        # Kubernetes gives every pod <SERVICE>_PORT=tcp://<ip>:<port> for each Service in
        # its namespace: a Service named "mae" would hand the server such a MAE_PORT.
        if isinstance(value, str) and value.startswith("tcp://"):
            raise ValueError(
                f"must be a port number, got {value!r}: Kubernetes sets that for a Service "
                "named mae; set MAE_PORT in the pod, pass --port, or rename the Service"
            )
        return value

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for text in value:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"{text!r} is not a network (e.g. 10.1.0.0/16)") from None
        return value

    def url_policy(self) -> UrlPolicy:
        """How image URLs are fetched under these settings (`fetch.py`)."""
        import ipaddress

        from .fetch import UrlPolicy

        nets = tuple(ipaddress.ip_network(t, strict=False) for t in self.url_allow_networks)
        return UrlPolicy(self.max_image_bytes, self.url_timeout_s, allow_networks=nets)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from mae_core.config import DEVICE_CHOICES, is_device_name

        value = value.strip().lower()
        if not is_device_name(value):
            raise ValueError(f"must be {DEVICE_CHOICES}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_images_per_request > self.max_queue_images:
            raise ValueError(
                f"{ENV_PREFIX}MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}) is larger "
                f"than {ENV_PREFIX}MAX_QUEUE_IMAGES ({self.max_queue_images}): such a request "
                "could never be queued"
            )
        if not self.hub_only and not self.model:
            raise ValueError(f"no model to serve: set {ENV_PREFIX}MODEL (or pass one to mae serve)")
        workers = self.forward_workers or 1
        if workers > 1 and (self.backend != "torch" or self.device.startswith("cuda")):
            raise ValueError(
                f"{ENV_PREFIX}FORWARD_WORKERS ({workers}): more than one forward at once is for "
                f"the torch backend on a CPU (here: {self.backend} on {self.device}); ONNX "
                "Runtime has its own threads, and a GPU runs forwards one after another"
            )
        if self.torch_threads is not None and workers > self.torch_threads:
            raise ValueError(
                f"{ENV_PREFIX}FORWARD_WORKERS ({workers}) is more than {ENV_PREFIX}TORCH_THREADS "
                f"({self.torch_threads}): each forward needs a math thread of its own"
            )
        return self

    def threads(self) -> Threads:
        """How the server's threads are laid out: the settings, else chosen here.

        The forward gets every core this process may run on. On the CPU with the torch
        backend they are split between two forwards that run at once (one thread each on
        2 cores): threads of one forward wait for each other at every layer, and one
        forward on two threads costs 1.07-1.26x the CPU per image of two single-thread
        forwards side by side (`bench/forward_workers.py`, BENCHMARKS.md). Decoding gets
        half the cores on the CPU, for the same reason (on 2 cores, 1 decode thread instead
        of 2 cut the server's CPU per image by about a tenth), and every core with the
        forward on a GPU."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        if self.device == "auto":
            import torch

            on_gpu = torch.cuda.is_available()
        else:
            on_gpu = self.device.startswith("cuda")
        total = self.torch_threads or cores
        if on_gpu:  # device auto that found a GPU: the forwards would queue on it
            workers = 1
        else:
            workers = self.forward_workers or (2 if total >= 2 and self.backend == "torch" else 1)
        decode = cores if on_gpu else max(1, cores // 2)
        return Threads(workers, max(1, total // workers), self.decode_threads or decode)

    def resolved_models_dir(self) -> Path:
        from mae_core.hub import models_dir

        return self.models_dir if self.models_dir is not None else models_dir()


def settings_error_message(exc: ValidationError) -> str:
    """One line per problem, naming the environment variable (MAE_MAX_BATCH_IMAGES: ...)."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        where = f"{ENV_PREFIX}{field.upper()}: " if field else ""
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        lines.append(f"{where}{message}")
    return "; ".join(lines)
