"""float32 linear layers through oneDNN on the CPU, forward and backward, for training.

torch's float32 `nn.Linear` (`F.linear`, `addmm`, `mm`) goes to MKL on x86, and MKL's sgemm
runs a slower code path on AMD CPUs: on this project's AMD EPYC, at the shapes of a ViT-Ti
MAE, oneDNN's linear (`mkldnn::_linear_pointwise`, the op inductor's CPU code calls) is
about 2x faster forward and for the input's gradient, 1.4-1.9x for the weight's (its
transposed copy made of the smaller operand, `_weight_grad`), with the same results to
float32 rounding. `onednn_linears()` is a context in which every float32
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


def packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """A copy of a float32 linear weight (out, in) in oneDNN's own blocked layout, which
    `linear_op` reads faster (1.03-1.14x the fused forward, batch 64 down to 1); None where
    this torch cannot make one. An opaque copy: later changes to `weight` do not reach it."""
    packet = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    reorder = getattr(packet, "default", None)
    if reorder is None:
        return None
    with torch.no_grad():
        return reorder(weight.detach(), None)


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


def _product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """(rows, in) -> (rows, out) = x @ weight.T (+ bias) through oneDNN."""
    return linear_op()(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """`F.linear(rows, weight, bias)` on 2-D `rows` (N, in), with the product and both
    gradients' products through oneDNN: dx = g @ W and dW = g.T @ x as oneDNN linears of
    the transposed operands. `linear` reshapes other inputs around it. No double backward
    (`once_differentiable`), and activation checkpointing must recompute inside the
    context too."""

    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        need_x, need_w, _ = ctx.needs_input_grad
        # each gradient needs the other operand only: keep what will be used
        ctx.save_for_backward(rows if need_w else None, weight if need_x else None)
        ctx.has_bias = bias is not None
        return _product(rows, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = _product(grad, weight.t()) if need_x else None
        dw = _weight_grad(grad, rows) if need_w else None
        db = grad.sum(0) if ctx.has_bias and need_b else None
        return dx, dw, db


def _weight_grad(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """dW = grad.T @ rows, (out, in), through oneDNN. The product sums over the N rows,
    which lie along the slow axis of both operands: oneDNN reads its weight operand
    transposed for free, but its input must be copied transposed. Copied is the smaller
    one: grad (N x out) as it stands, or rows (N x in) for dW.T = rows.T @ grad, whose
    (in x out) result is then transposed once more. On the 2-core AMD EPYC that made the
    weight gradients with out > in (qkv, fc1, the decoder's prediction layer) 1.02-1.53x
    faster and left the others as they were."""
    n, out = grad.shape
    width = rows.shape[1]
    if width * (n + out) < n * out:
        return _product(rows.t(), grad.t()).t().contiguous()
    return _product(grad.t(), rows.t())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` through `OneDNNLinear`, for an input of any number of dimensions."""
    out = OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def _applies(x: Any, weight: Any, bias: Any) -> bool:
    """A float32 CPU linear of the plain kind (a 2-D weight, the input's last side its
    width, a 1-D bias of its height or none), not under autocast (which casts it to a lower
    precision whose products are oneDNN's already); anything else stays torch's."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    return (
        all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and weight.dim() == 2
        and weight.shape[0] > 0
        and x.dim() >= 1
        and x.numel() > 0
        and x.shape[-1] == weight.shape[1]
        and (bias is None or tuple(bias.shape) == (weight.shape[0],))
        and not torch.is_autocast_enabled("cpu")
    )


_ARGS = ("input", "weight", "bias")


class _Linears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            given = dict(zip(_ARGS, args, strict=False)) | kwargs
            x, weight, bias = given.get("input"), given.get("weight"), given.get("bias")
            if set(given) <= set(_ARGS) and _applies(x, weight, bias):
                return linear(x, weight, None if bias is None else bias.contiguous())
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
