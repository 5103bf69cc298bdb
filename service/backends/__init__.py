"""The forward of an embedding batch, behind one interface, run by torch or ONNX Runtime.

A backend turns a batch of preprocessed images (N, 3, S, S) into the two pooled vectors
the service answers with: (N, 2, D) float32 on the CPU, [:, 0] the class token and [:, 1]
the mean of the patch tokens, both after the final norm. The engine calls it from the
batcher's device thread only; reconstructions stay on torch (they need the decoder).

- `torch`: the model itself, under `torch.inference_mode()` and the served dtype.
- `onnxruntime`, `onnxruntime-int8`: `onnx/model.onnx` (or `model_quantized.onnx`) of
  the served repo when it has one, checked against torch at load; else the encoder is
  exported once into the ONNX cache (`MAE_ONNX_CACHE`, keyed by the weights' sha256) and
  reused. CPU only.
"""

from __future__ import annotations

from typing import Protocol

import torch

from mae_core.export import BACKENDS

__all__ = ["BACKENDS", "Backend", "pool"]


class Backend(Protocol):
    name: str
    fused: bool  # the encoder's blocks as fused kernels (the torch backend's mae_core.fused)
    packed: bool  # those kernels read packed weight copies (oneDNN's layout, float32)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """batch (N, 3, S, S) float32 -> (N, 2, D) float32 CPU: [cls, patch mean]."""
        ...


def pool(tokens: torch.Tensor) -> torch.Tensor:
    """tokens (N, 1+L, D) -> (N, 2, D): the class token and the mean of the patch tokens."""
    return torch.stack([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)
