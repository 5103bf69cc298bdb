"""The torch backend: the loaded model itself, on its device, under the served dtype."""

from __future__ import annotations

import torch

from mae_core.model import MaskedAutoencoder

from . import pool


class TorchBackend:
    name = "torch"

    def __init__(self, model: MaskedAutoencoder, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        enabled = self.dtype != torch.float32
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled),
        ):
            tokens = self.model.forward_features(batch.to(self.device, non_blocking=True))
            pooled = pool(tokens)  # (N, 2, D)
        return pooled.float().cpu()
