"""`Engine`: one loaded MAE and the three things the service does with it.

- `prepare(bytes, limits)`: a client's image -> (3, S, S) normalised tensor, decoding
  and preprocessing in one step: `imaging.decode`, then `preprocess(image)` (or
  `preprocess_for_reconstruction(image)`) from the model's `pretrained_cfg` (shorter side
  to S / crop_pct, centre crop S, the model's mean/std; crop_pct 1 for reconstructions so
  the whole central square is shown).
- `embed(batch)`: (N, 3, S, S) -> (N, 2, D) float32 on the CPU: the class token and the
  mean of the patch tokens, both after the final norm, from one unmasked forward.
- `reconstruct(x, mask_ratio, seed, mask_strategy)`: one image -> `Panels` (needs the
  decoder); the mask is sampled by `mask_strategy` (`masking.MASK_STRATEGIES`).

No HTTP here, so it can be used and tested alone; its errors are `engine_errors.py`'s. Only
the batcher's device threads call `embed` and `reconstruct`: with `MAE_FORWARD_WORKERS`
above 1, two `embed` calls may run at once (the model is read-only under inference mode),
while a `reconstruct` always runs alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mae_core.checkpoint import load_weights
from mae_core.data import eval_transform
from mae_core.distributed import resolve_device
from mae_core.files import sha256_file
from mae_core.hub import parse_model_id, resolve
from mae_core.model import MaskedAutoencoder
from mae_core.visualize import Panels, reconstruction_panels

from .backends import BACKENDS, Backend
from .backends.onnx_backend import OnnxBackend, default_onnx_cache
from .backends.torch_backend import TorchBackend
from .engine_errors import NoDecoder
from .imaging import ImageLimits, center_square, decode

log = logging.getLogger("mae.service")
POOLINGS = ("cls", "mean")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _DTYPES[name]


@dataclass
class ModelInfo:
    """What `/v1/models` reports about one served model."""

    id: str
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
    backend: str
    fused_layers: bool  # the torch backend's encoder blocks as fused kernels (mae_core.fused)
    packed_weights: bool  # ... reading packed weight copies (oneDNN's linears, float32)
    created: int
    owned_by: str
    tokens_per_image: int  # 1 + patches: what an image counts as in `usage`
    aliases: list[str] = field(default_factory=list)


def _snapshot_revision(path: Path) -> str | None:
    """The commit a hub snapshot folder stands for (`.../snapshots/<sha>`), else None."""
    if path.is_dir() and path.parent.name == "snapshots":
        return path.name
    return None


class Engine:
    def __init__(
        self,
        model_id: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        with_decoder: bool = True,
        models_dir: Path | None = None,
        backend: str = "torch",
        threads: int | None = None,
        onnx_cache: Path | None = None,
        fused_layers: bool = True,
        pack_weights: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        onnx = backend != "torch"
        if onnx and device.startswith("cuda"):
            raise ValueError(
                f"the {backend} backend runs on the CPU here: serve with --device cpu, or use "
                "the torch backend on CUDA"
            )
        parsed = parse_model_id(model_id)
        path = resolve(parsed, models_dir)
        # Keep the decoder only when reconstructions are on *and* the weights carry one.
        model = load_weights(path, with_decoder=None if with_decoder else False)
        if with_decoder and not model.has_decoder:
            log.warning("%s has no decoder: /v1/reconstructions is off for it", model_id)
        self.device = resolve_device("cpu" if onnx else device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model: MaskedAutoencoder = model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.id = str(parsed)
        weights = model.source_info.get("weights") or []
        sha256 = sha256_file(weights[0]) if weights else None
        self.backend: Backend = (
            OnnxBackend(
                self.model,
                quantized=backend == "onnxruntime-int8",
                repo=path,
                cache=Path(onnx_cache) if onnx_cache else default_onnx_cache(),
                weights_sha256=sha256,
                threads=threads,
            )
            if onnx
            else TorchBackend(
                self.model, self.device, self.dtype, fused=fused_layers, pack=pack_weights
            )
        )
        cfg = model.config
        self.info = ModelInfo(
            id=self.id,
            revision=_snapshot_revision(path),
            sha256=sha256,
            image_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            heads=["encoder", "decoder"] if model.has_decoder else ["encoder"],
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            parameters=model.num_params(),
            norm_pix_loss=cfg.norm_pix_loss,
            backend=self.backend.name,
            fused_layers=self.backend.fused,
            packed_weights=self.backend.packed,
            created=int(time.time()),
            owned_by=parsed.name.split("/")[0] if parsed.scheme != "path" else "mae-hub",
            tokens_per_image=1 + cfg.num_patches,
            aliases=[parsed.name] if parsed.scheme != "path" else [],
        )

    @property
    def image_size(self) -> int:
        return self.model.config.img_size

    @property
    def has_decoder(self) -> bool:
        return self.model.has_decoder

    def min_side(self) -> int:
        """The shorter side a decoded image needs before resizing (for JPEG draft mode)."""
        cfg = self.model.config
        return int(cfg.img_size / min(cfg.crop_pct, 1.0)) + 1

    # -- preprocessing (runs in the request's thread pool) --------------------------------
    def prepare(
        self, data: bytes, limits: ImageLimits, what: str = "image", reconstruction: bool = False
    ) -> torch.Tensor:
        """Client bytes -> (3, S, S) float32, ready to batch: checked and decoded (large
        JPEGs at a reduced scale, `min_side`), then `preprocess` (or, for a
        reconstruction, `preprocess_for_reconstruction`)."""
        img = decode(
            data,
            max_bytes=limits.max_bytes,
            max_pixels=limits.max_pixels,
            min_side=self.min_side(),
            what=what,
        )
        if reconstruction:
            return self.preprocess_for_reconstruction(img)
        return self.preprocess(img)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32, as the model's `pretrained_cfg` says."""
        return eval_transform(center_square(image), self.model.config)

    def preprocess_for_reconstruction(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32 of the whole central square (crop_pct 1)."""
        cfg = self.model.config.replace(crop_pct=1.0)
        return eval_transform(center_square(image), cfg)

    # -- device work (the batcher's device threads only) ----------------------------------
    def _autocast(self) -> Any:
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """batch (N, 3, S, S) -> (N, 2, D) float32 CPU: [:, 0] class token, [:, 1] patch
        mean, computed by the backend."""
        return self.backend.embed(batch)

    def reconstruct(
        self, x: torch.Tensor, mask_ratio: float, seed: int, mask_strategy: str = "random"
    ) -> Panels:
        """x (3, S, S) -> the four panels, mask, per-patch error and loss; the mask sampled
        by `mask_strategy` (random by default, whatever the model was trained with)."""
        if not self.has_decoder:
            raise NoDecoder(f"model {self.id} was loaded without its decoder")
        with self._autocast():
            return reconstruction_panels(
                self.model, x, mask_ratio=mask_ratio, seed=seed, mask_strategy=mask_strategy
            )

    def warmup(self, batch_images: int) -> float:
        """Run the largest batch (and a reconstruction) once; returns the seconds it took."""
        t0 = time.perf_counter()
        s = self.image_size
        self.embed(torch.zeros(batch_images, 3, s, s))
        if self.has_decoder:
            self.reconstruct(torch.zeros(3, s, s), 0.75, 0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0
