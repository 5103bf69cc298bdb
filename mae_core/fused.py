"""The encoder's unmasked forward with one fused kernel per block, for inference on the CPU,
in float32 or bfloat16.

A timm `Block` as MAE builds it (pre-norm, one qkv projection with bias, no layer scale,
no q/k norm, exact GELU) computes what PyTorch's native encoder-layer kernel computes:
`aten::_transformer_encoder_layer_fwd`, the op behind `nn.TransformerEncoderLayer`'s
inference fast path (in PyTorch since 1.12). One call per block instead of about twenty:
the default model's forward calls into torch 29 times from Python instead of 245, and
each block's attention and MLP run without the per-operator overhead in between. In a
server, where decoding and the event loop want the GIL too, every call into torch is a
point where the forward thread gives the GIL up and has to take it back.

`nn.TransformerEncoderLayer` itself keeps an odd number of heads (ViT-Ti has 3) off its
fast path, for the sake of its *masked* softmax; the encoder here has no mask, and the
kernel's own CPU path has no rule on the head count, so the kernel is called directly.

The kernel is private to torch: its signature may change in a release. So every
`FusedEncoder` is checked against the model's own forward when it is built
(`fused_encoder`), and any failure there (a changed signature included) keeps the plain
forward, with the reason. A call with gradients on, under autocast or in training mode
runs the plain forward too: the kernel has no backward and no autocast rule.

In bfloat16 the blocks run on an encoder-only bf16 copy of the weights (half the fp32
encoder's memory again), wholly in bf16 (autocast keeps the residual stream, and so the
LayerNorms, in fp32); the check then asks every token a cosine of `MIN_BF16_COSINE` to
the float32 forward.

    forward = inference_forward(model, torch.device("cpu"), torch.float32, log)
    tokens = forward(imgs)   # (N, 1+L, D) after the final norm, fused where it applies
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

from .model import MaskedAutoencoder

# Agreement asked of the fused forward with the model's own, on a random batch: the same
# bound the ONNX export is held to (fp32 kernels that add in another order differ by
# about 1e-6 here).
MAX_ABS_DIFF = 1e-4
# In bfloat16 (8 bits of mantissa) every token of the default model keeps a cosine above
# 0.9999 to the float32 forward; bf16 autocast's, above 0.99998.
MIN_BF16_COSINE = 0.999
DTYPES = (torch.float32, torch.bfloat16)


def _kernel() -> Any:
    # torch's own binding (not torch.ops.aten's packet): no Python frame of its own, and it
    # leaves the GIL for the whole layer, as every torch function does while it computes.
    return getattr(torch, "_transformer_encoder_layer_fwd", None)


def _block_problem(block: nn.Module, dim: int, heads: int) -> str | None:
    """Why this block is not the plain pre-norm block the kernel computes, or None."""
    if type(block) is not Block:
        return f"{type(block).__name__} is not timm's Block"
    attn, mlp = block.attn, block.mlp
    if type(attn) is not Attention or type(mlp) is not Mlp:
        return "the attention or MLP is not timm's plain one"
    for name in ("ls1", "ls2", "drop_path1", "drop_path2"):
        if not isinstance(getattr(block, name), nn.Identity):
            return f"the block has {name}"
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            return f"the attention has {name}"
    if getattr(attn, "gate", None) is not None:
        return "the attention is gated"
    if attn.num_heads != heads or attn.qkv.out_features != 3 * dim:
        return "the attention's heads or width differ from the model's"
    if not math.isclose(float(attn.scale), (dim // heads) ** -0.5):
        return "the attention's scale is not 1/sqrt(head dim)"
    if not (type(mlp.act) is nn.GELU and mlp.act.approximate == "none"):
        return "the MLP's activation is not the exact GELU"
    if not isinstance(mlp.norm, nn.Identity):
        return "the MLP has a norm"
    norms = (block.norm1, block.norm2)
    if not all(
        type(n) is nn.LayerNorm and n.weight is not None and n.bias is not None for n in norms
    ):
        return "the block's norms are not LayerNorms with weight and bias"
    if block.norm1.eps != block.norm2.eps:
        return "the block's two norms have different eps"
    linears = (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)
    if any(type(lin) is not nn.Linear or lin.bias is None for lin in linears):
        return "a projection has no bias"
    return None


def why_not_fused(model: MaskedAutoencoder, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `FusedEncoder` does not cover this model where and as it runs, or None."""
    if _kernel() is None:
        return f"torch {torch.__version__} has no fused encoder-layer kernel"
    if not torch.backends.mha.get_fastpath_enabled():
        return "torch's fast path is turned off (torch.backends.mha.set_fastpath_enabled)"
    if device.type != "cpu" or model.cls_token.device.type != "cpu":
        return "used on the CPU only (not yet measured on a GPU)"
    if dtype not in DTYPES:
        return f"the forward runs in {_name(dtype)} (fused: float32 or bfloat16)"
    if model.cls_token.dtype != torch.float32:
        return f"the weights are {_name(model.cls_token.dtype)} (fused: from float32 weights)"
    if model.training:
        return "the model is in training mode"
    dim, heads = model.config.embed_dim, model.config.num_heads
    for i, block in enumerate(model.blocks):
        problem = _block_problem(block, dim, heads)
        if problem:
            return f"block {i}: {problem}"
    return None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _encoder_in(model: MaskedAutoencoder, dtype: torch.dtype) -> MaskedAutoencoder:
    """An encoder-only copy of `model` with its weights in `dtype`, for inference."""
    twin = MaskedAutoencoder(model.config, with_decoder=False)
    twin.load_state_dict(model.encoder_state_dict())
    twin.learned_tables = set(model.learned_tables)
    return twin.to(dtype).eval().requires_grad_(False)


class FusedEncoder:
    """`model.forward_features` with each block as one kernel call, for inference, in
    float32 on the model's own weights or in bfloat16 on an encoder-only copy of them.

    In float32 it holds the model's own weight tensors (no copies): changes made to them
    in place reach it, but weights *replaced* (`load_state_dict(assign=True)`,
    `model.to(...)`) do not; build a new one then. In bfloat16 every block runs in bf16
    (not autocast's mix, whose residual stream stays fp32), from a copy made once; the
    output is bf16. With gradients on or the model in training mode a call runs the
    model's plain forward, and under autocast too in float32: the kernel has no backward
    and no autocast rule."""

    def __init__(self, model: MaskedAutoencoder, dtype: torch.dtype = torch.float32) -> None:
        self.source, self.dtype = model, dtype
        self.model = model if dtype == model.cls_token.dtype else _encoder_in(model, dtype)
        m = self.model
        self.dim, self.heads = m.config.embed_dim, m.config.num_heads
        # Per block, in the kernel's order: (qkv weight, bias), (proj weight, bias), eps,
        # (norm1 w, b, norm2 w, b), (fc1 weight, bias, fc2 weight, bias).
        self.layers = [
            (
                (b.attn.qkv.weight, b.attn.qkv.bias),
                (b.attn.proj.weight, b.attn.proj.bias),
                float(b.norm1.eps),
                (b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias),
                (b.mlp.fc1.weight, b.mlp.fc1.bias, b.mlp.fc2.weight, b.mlp.fc2.bias),
            )
            for b in m.blocks
        ]
        self._layer = _kernel()

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> tokens (N, 1+L, D) after the final norm, in `self.dtype`
        (under autocast too); float32 from the fallback to the model's own forward."""
        autocast = self.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
        if torch.is_grad_enabled() or self.source.training or autocast:
            return self.source.forward_features(imgs)
        m = self.model
        x, pos, _grid = m._embed_patches(imgs.to(self.dtype))
        x = m._prepend_cls(x, pos)
        d, h = self.dim, self.heads
        for qkv, proj, eps, norms, ffn in self.layers:
            # (src, embed_dim, num_heads, qkv, proj, use_gelu, norm_first, eps, norms, ffn,
            # mask, mask_type)
            x = self._layer(x, d, h, *qkv, *proj, True, True, eps, *norms, *ffn, None, None)
        return m.norm(x)


def fused_agreement(fused: FusedEncoder, batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """(largest |fused - plain|, smallest cosine of a token with the plain one) over a
    seeded random batch, against the model's plain float32 forward."""
    m = fused.source
    s = m.config.img_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, m.config.in_chans, s, s, generator=g).to(m.cls_token.device)
    with torch.inference_mode():
        got, want = fused(x).float(), m.forward_features(x)
        cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()
        return (got - want).abs().max().item(), cosine


def fused_encoder(
    model: MaskedAutoencoder, device: torch.device, dtype: torch.dtype
) -> tuple[FusedEncoder | None, str]:
    """(the checked fused forward, what the check found) or (None, why not). float32 must
    agree with the plain forward to `MAX_ABS_DIFF`; bfloat16, token by token, to a cosine
    of `MIN_BF16_COSINE`."""
    reason = why_not_fused(model, device, dtype)
    if reason:
        return None, reason
    try:
        fused = FusedEncoder(model, dtype)
    except Exception as exc:  # making the bf16 copy of the encoder, say
        return None, f"could not build it in {_name(dtype)}: {type(exc).__name__}: {exc}"
    try:
        diff, cosine = fused_agreement(fused)
    except Exception as exc:  # a private kernel: another signature in this torch, say
        first = (str(exc).splitlines() or [""])[0]
        return None, f"the fused kernel failed: {type(exc).__name__}: {first}"
    if dtype == torch.bfloat16:
        if not cosine >= MIN_BF16_COSINE:  # NaN fails too
            return None, (
                f"in bfloat16 a token's cosine to the float32 forward is {cosine:.5f} "
                f"(under {MIN_BF16_COSINE})"
            )
        return (
            fused,
            f"bfloat16, checked against the float32 forward: min token cosine {cosine:.5f}",
        )
    if not diff <= MAX_ABS_DIFF:  # NaN fails too
        return None, f"it differs from the plain forward by {diff:.2e} (over {MAX_ABS_DIFF:g})"
    return fused, f"checked against the plain forward: max abs difference {diff:.1e}"


def inference_forward(
    model: MaskedAutoencoder, device: torch.device, dtype: torch.dtype, log: logging.Logger
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The checked fused forward where it applies, else `model.forward_features`; `log`
    says which, and why (at INFO)."""
    fused, said = fused_encoder(model, device, dtype)
    log.info("fused encoder layers %s: %s", "on" if fused else "off", said)
    return fused or model.forward_features
