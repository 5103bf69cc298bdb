"""The torch backend: the loaded model itself, on its device, under the served dtype.

On the CPU, in float32 or bfloat16, the encoder's blocks run in fused kernels (oneDNN's
linears in float32, one encoder-layer kernel a block in bfloat16: `mae_core.fused`,
checked against the plain float32 forward at load; `MAE_FUSED_LAYERS=false` turns it off).
oneDNN's linears read packed copies of the projection weights (`MAE_PACK_WEIGHTS=false`:
the model's own, for less memory). Elsewhere, and for a model it does not cover, the plain
forward runs (under autocast in bfloat16)."""

from __future__ import annotations

import logging

import torch

from mae_core.fused import ONEDNN, FusedEncoder, inference_forward
from mae_core.model import MaskedAutoencoder

from . import pool

log = logging.getLogger("mae.service")


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model: MaskedAutoencoder,
        device: torch.device,
        dtype: torch.dtype,
        fused: bool = True,
        pack: bool = True,
    ) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.forward = (
            inference_forward(model, device, dtype, log, pack=pack)
            if fused
            else model.forward_features
        )
        self.fused = isinstance(self.forward, FusedEncoder)
        self.packed = self.fused and self.forward.packed
        if self.fused and not pack and self.forward.impl == ONEDNN:
            log.info("weights not packed: MAE_PACK_WEIGHTS=false (oneDNN reads the model's own)")

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        # The fused forward runs in the served dtype itself (a bf16 copy of the encoder).
        enabled = self.dtype != torch.float32 and not self.fused
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled),
        ):
            tokens = self.forward(batch.to(self.device, non_blocking=True))
            pooled = pool(tokens)  # (N, 2, D)
        return pooled.float().cpu()
