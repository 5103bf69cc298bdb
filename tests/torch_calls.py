"""Counting what a forward calls into torch from Python (a `TorchFunctionMode`): the calls of
the two ways of `mae_core.fused` apart, the encoder-layer kernel and oneDNN's linear."""

from __future__ import annotations

from collections import Counter

from torch.overrides import TorchFunctionMode

KERNEL = "_transformer_encoder_layer_fwd"
LINEAR = "_linear_pointwise.default"  # mkldnn::_linear_pointwise, the overload called


class CountCalls(TorchFunctionMode):
    """Counts the torch functions and methods called from Python, the fused kernel's and
    oneDNN's linear's apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = self.kernel = self.linear = 0
        self.names: Counter[str] = Counter()  # every call by its function's name

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        self.calls += 1
        self.names[name] += 1
        self.kernel += name == KERNEL
        self.linear += name == LINEAR
        return func(*args, **(kwargs or {}))

    def fused_calls(self, impl: str) -> int:
        """The calls of `impl`'s op (`mae_core.fused.KERNEL` or `ONEDNN`)."""
        return self.kernel if impl == "kernel" else self.linear


def fused_calls_per_forward(impl: str, depth: int) -> int:
    """How often a fused forward of `depth` blocks calls `impl`'s op: the kernel once a
    block, oneDNN's linear four times (qkv, proj, fc1 with the GELU, fc2)."""
    return depth if impl == "kernel" else 4 * depth
