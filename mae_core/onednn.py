"""float32 linear layers through oneDNN on the CPU, forward and backward, for training.

torch's float32 `nn.Linear` (`F.linear`, `addmm`, `mm`) goes to MKL on x86, and MKL's sgemm
runs a slower code path on AMD CPUs: on this project's AMD EPYC, at the shapes of a ViT-Ti
MAE, oneDNN's linear (`mkldnn::_linear_pointwise`, the op inductor's CPU code calls) is
about 2x faster forward and for the input's gradient, 1.3-1.8x for the weight's, with the
same results to float32 rounding. `onednn_linears()` is a context in which every float32
`F.linear` on the CPU runs as `OneDNNLinear` (both gradients through oneDNN too); outside
it, nothing changes. The weights stay the module's own parameters (state dicts, DDP and
optimisers see no difference). `mae train` uses it on a CPU in fp32 (`--onednn-linears`,
on by default), and `mae_core.fused` calls the same op for inference.

    with onednn_linears():            # the forward; the backward follows the graph
        loss = model(imgs, noise=noise).loss
    loss.backward()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


def linear_op() -> Any:
    """oneDNN's linear with a fused activation, `(x, weight, bias, attr, scalars,
    algorithm)`; None where this torch has no oneDNN ops."""
    packet = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    return getattr(packet, "default", None)


def why_not(device: torch.device, dtype: torch.dtype, compiled: bool = False) -> str | None:
    """Why `onednn_linears` would change nothing for a model on `device` computing in
    `dtype`, or None."""
    if device.type != "cpu":
        return "CPU only"
    if dtype != torch.float32:
        return f"float32 only ({str(dtype).removeprefix('torch.')} products are oneDNN's already)"
    if compiled:
        return "the model is compiled (inductor picks its own kernels)"
    if linear_op() is None or not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} has no oneDNN linear"
    if not torch.backends.mkldnn.enabled:
        return "torch's oneDNN is turned off (torch.backends.mkldnn)"
    return None


def _plain(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(rows, in) -> (rows, out) = x @ weight.T through oneDNN, no bias."""
    return linear_op()(x, weight, None, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """`F.linear(x, weight, bias)` with the product and both gradients' products through
    oneDNN: dx = g @ W and dW = g.T @ x as oneDNN linears of the transposed operands."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.in_shape, ctx.has_bias = x.shape, bias is not None
        out = linear_op()(rows, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = _plain(g, weight.t()).view(ctx.in_shape) if need_x else None
        dw = _plain(g.t(), rows.t()) if need_w else None
        db = g.sum(0) if ctx.has_bias and need_b else None
        return dx, dw, db


def _applies(x: Any, weight: Any, bias: Any) -> bool:
    """A float32 CPU linear of the plain kind, not under autocast (which casts it to a
    lower precision whose products are oneDNN's already)."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        all(isinstance(t, torch.Tensor) for t in tensors)
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and weight.dim() == 2
        and x.dim() >= 1
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


class _Linears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            if _applies(x, weight, bias):
                return OneDNNLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linears(enabled: bool = True) -> Iterator[None]:
    """Inside: every float32 `F.linear` on the CPU through oneDNN (`OneDNNLinear`), when
    `enabled` and this torch has oneDNN; otherwise a no-op."""
    if not enabled or why_not(torch.device("cpu"), torch.float32) is not None:
        yield
        return
    with _Linears():
        yield
