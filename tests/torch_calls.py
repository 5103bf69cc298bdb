"""Counting what a forward calls into torch from Python (a `TorchFunctionMode`): the fused
encoder-layer kernel's calls apart (`mae_core.fused`)."""

from __future__ import annotations

from torch.overrides import TorchFunctionMode

KERNEL = "_transformer_encoder_layer_fwd"


class CountCalls(TorchFunctionMode):
    """Counts the torch functions and methods called from Python, and the fused kernel's."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = self.kernel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.kernel += getattr(func, "__name__", "") == KERNEL
        return func(*args, **(kwargs or {}))
