"""The encoder's unmasked forward for inference on the CPU, in float32 or bfloat16, with
each block's work in fewer, faster kernels than the plain forward's; two ways:

- **oneDNN linears** (float32, where torch has oneDNN): the block's four projections through
  oneDNN's linear (`mkldnn::_linear_pointwise`, the op inductor's CPU code calls, the GELU
  fused into the first MLP layer), the attention through `scaled_dot_product_attention`.
  torch's own float32 `addmm` goes to MKL, whose sgemm runs a slower code path on AMD
  CPUs; on this project's AMD EPYC oneDNN's is about 2x faster at the encoder's shapes,
  and the whole forward 1.55-1.89x (BENCHMARKS.md). The results are the same to about 1e-6.
- **the encoder-layer kernel** (bfloat16; float32 where oneDNN is missing or off): each
  block as one call of `aten::_transformer_encoder_layer_fwd`, the op behind
  `nn.TransformerEncoderLayer`'s inference fast path (since PyTorch 1.12). A timm `Block`
  as MAE builds it (pre-norm, one qkv projection with bias, no layer scale, no q/k norm,
  exact GELU) computes what that kernel computes. One call per block instead of about
  twenty: the default model's forward calls into torch 29 times from Python instead of
  245. Its bf16 matrix products are oneDNN's already, and there it is the faster way.
  `nn.TransformerEncoderLayer` keeps an odd number of heads (ViT-Ti has 3) off its fast
  path, for the sake of its *masked* softmax; the encoder here has no mask, and the
  kernel's own CPU path has no rule on the head count, so the kernel is called directly.

Both ops are private to torch: a signature may change in a release. So every
`FusedEncoder` is checked against the model's own forward when it is built
(`fused_encoder`), and any failure there (a changed signature included) tries the next
way, then keeps the plain forward, with the reasons. A call with gradients on, under
autocast or in training mode runs the plain forward too: neither op has a backward or an
autocast rule.

With `pack` (what `inference_forward` asks for: the server and `mae eval`), oneDNN's
way reads copies of the four projection weights of each block in oneDNN's blocked layout
(`onednn.packed_weight`): the same results, 1.03-1.14x the forward (batch 64 down to 1),
for about the fp32 encoder's memory again; in-place changes to those weights no longer
reach it. Where packing fails, the way runs on the weights as they are, and says why.

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
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

from . import onednn
from .model import MaskedAutoencoder
from .onednn import linear_op as _onednn_linear

# Agreement asked of the fused forward with the model's own, on a random batch: the same
# bound the ONNX export is held to (fp32 kernels that add in another order differ by
# about 1e-6 here).
MAX_ABS_DIFF = 1e-4
# In bfloat16 (8 bits of mantissa) every token of the default model keeps a cosine above
# 0.9999 to the float32 forward; bf16 autocast's, above 0.99998.
MIN_BF16_COSINE = 0.999
DTYPES = (torch.float32, torch.bfloat16)


# The two ways, as `FusedEncoder.impl` names them, and as the log says them.
ONEDNN, KERNEL = "onednn", "kernel"
IMPLS = {ONEDNN: "oneDNN linears", KERNEL: "encoder-layer kernel"}


def _kernel() -> Any:
    # torch's own binding (not torch.ops.aten's packet): no Python frame of its own, and it
    # leaves the GIL for the whole layer, as every torch function does while it computes.
    return getattr(torch, "_transformer_encoder_layer_fwd", None)


def impls_for(dtype: torch.dtype) -> tuple[str, ...]:
    """The ways to try for `dtype`, best first: oneDNN's linears beat MKL's sgemm in
    float32; in bfloat16 the kernel's products are oneDNN's already, in one call a block."""
    return (ONEDNN, KERNEL) if dtype == torch.float32 else (KERNEL,)


def _impl_problem(impl: str, dtype: torch.dtype) -> str | None:
    """Why this torch cannot run `impl` in `dtype` here, or None."""
    if impl == ONEDNN:  # the same conditions as the training linears'
        return onednn.why_not(torch.device("cpu"), dtype)
    if _kernel() is None:
        return f"torch {torch.__version__} has no fused encoder-layer kernel"
    if not torch.backends.mha.get_fastpath_enabled():
        return "torch's fast path is turned off (torch.backends.mha.set_fastpath_enabled)"
    return None


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


def why_not_fused(
    model: MaskedAutoencoder, device: torch.device, dtype: torch.dtype, impl: str | None = None
) -> str | None:
    """Why `FusedEncoder` does not cover this model where and as it runs, or None; `impl`:
    one way only (else any of `impls_for(dtype)`)."""
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: one of {', '.join(IMPLS)}")
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
    problems = {i: _impl_problem(i, dtype) for i in ((impl,) if impl else impls_for(dtype))}
    if any(p is None for p in problems.values()):
        return None
    if len(problems) == 1:
        return next(iter(problems.values()))
    return "; ".join(f"{IMPLS[i]}: {p}" for i, p in problems.items())


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _encoder_in(model: MaskedAutoencoder, dtype: torch.dtype) -> MaskedAutoencoder:
    """An encoder-only copy of `model` with its weights in `dtype`, for inference."""
    twin = MaskedAutoencoder(model.config, with_decoder=False)
    twin.load_state_dict(model.encoder_state_dict())
    twin.learned_tables = set(model.learned_tables)
    return twin.to(dtype).eval().requires_grad_(False)


class FusedEncoder:
    """`model.forward_features` with each block in fewer, faster kernels (`impl`: oneDNN's
    linears or the encoder-layer kernel, see the module), for inference, in float32 on the
    model's own weights (with `pack`, packed copies of the projections') or in bfloat16 on
    an encoder-only copy of them.

    In float32 it holds the model's own weight tensors (no copies): changes made to them
    in place reach it, but weights *replaced* (`load_state_dict(assign=True)`,
    `model.to(...)`) do not; build a new one then. With `pack` (oneDNN's way) the weights
    of each block's four projections are packed copies instead (`packed` says whether they
    are; `pack_problem` why not, where packing failed), which no change to the model's
    reaches, while the biases, norms, embeddings and tables stay the model's own: build a
    new one after changing weights. Packed copies are opaque oneDNN tensors: such an
    encoder cannot be deep-copied or saved. In bfloat16 every block runs in bf16
    (not autocast's mix, whose residual stream stays fp32), from a copy made once; the
    output is bf16. With gradients on or the model in training mode a call runs the
    model's plain forward, and under autocast too in float32: neither op has a backward
    or an autocast rule."""

    def __init__(
        self,
        model: MaskedAutoencoder,
        dtype: torch.dtype = torch.float32,
        impl: str | None = None,
        pack: bool = False,
    ) -> None:
        self.impl = impl or impls_for(dtype)[0]
        if self.impl not in IMPLS:
            raise ValueError(f"impl={self.impl!r}: one of {', '.join(IMPLS)}")
        problem = _impl_problem(self.impl, dtype)
        if problem:
            raise ValueError(f"{IMPLS[self.impl]} in {_name(dtype)}: {problem}")
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
        self.packed, self.pack_problem = False, None
        if self.impl == ONEDNN:
            self._linear, self._blocks = _onednn_linear(), self._onednn_blocks
            if pack:
                self._pack()
        else:
            self._layer, self._blocks = _kernel(), self._kernel_blocks

    def _pack(self) -> None:
        """Each projection's weight as a packed copy, where this torch makes them all; else
        the weights as they are, and `pack_problem` says why."""
        layers = []
        try:
            for (qw, qb), (pw, pb), eps, norms, (w1, b1, w2, b2) in self.layers:
                q, p, f1, f2 = (onednn.packed_weight(w) for w in (qw, pw, w1, w2))
                if q is None or p is None or f1 is None or f2 is None:
                    self.pack_problem = f"torch {torch.__version__} cannot pack them"
                    return
                layers.append(((q, qb), (p, pb), eps, norms, (f1, b1, f2, b2)))
        except Exception as exc:  # a private op: another signature in this torch, say
            first = (str(exc).splitlines() or [""])[0]
            self.pack_problem = f"packing failed: {type(exc).__name__}: {first}"
            return
        self.layers, self.packed = layers, True

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> tokens (N, 1+L, D) after the final norm, in `self.dtype`
        (under autocast too); float32 from the fallback to the model's own forward."""
        autocast = self.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
        if torch.is_grad_enabled() or self.source.training or autocast:
            return self.source.forward_features(imgs)
        m = self.model
        x, pos, _grid = m._embed_patches(imgs.to(self.dtype))
        return m.norm(self._blocks(m._prepend_cls(x, pos)))

    def _kernel_blocks(self, x: torch.Tensor) -> torch.Tensor:
        d, h = self.dim, self.heads
        for qkv, proj, eps, norms, ffn in self.layers:
            # (src, embed_dim, num_heads, qkv, proj, use_gelu, norm_first, eps, norms, ffn,
            # mask, mask_type)
            x = self._layer(x, d, h, *qkv, *proj, True, True, eps, *norms, *ffn, None, None)
        return x

    def _onednn_blocks(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, d = x.shape
        h, linear, shape = self.heads, self._linear, (d,)
        heads = (n, tokens, 3, h, d // h)
        x = x.reshape(n * tokens, d)  # the residual stream, one row a token
        for (qw, qb), (pw, pb), eps, (n1w, n1b, n2w, n2b), (w1, b1, w2, b2) in self.layers:
            y = F.layer_norm(x, shape, n1w, n1b, eps)
            # (n*t, 3d) -> q, k, v (n, h, t, d/h); the block's scale is 1/sqrt(d/h), checked
            q, k, v = linear(y, qw, qb, "none", [], "").view(heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n * tokens, d)
            x = x + linear(y, pw, pb, "none", [], "")
            y = linear(F.layer_norm(x, shape, n2w, n2b, eps), w1, b1, "gelu", [], "none")
            x = x + linear(y, w2, b2, "none", [], "")
        return x.view(n, tokens, d)


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
    model: MaskedAutoencoder,
    device: torch.device,
    dtype: torch.dtype,
    impl: str | None = None,
    pack: bool = False,
) -> tuple[FusedEncoder | None, str]:
    """(the checked fused forward, what the check found and which way it runs) or (None,
    why not). Each way of `impls_for(dtype)` (or `impl` alone) is tried in turn: float32
    must agree with the plain forward to `MAX_ABS_DIFF`; bfloat16, token by token, to a
    cosine of `MIN_BF16_COSINE`. `pack`: oneDNN's way on packed weight copies (checked as
    packed)."""
    reason = why_not_fused(model, device, dtype, impl)
    if reason:
        return None, reason
    failed = []
    for way in (impl,) if impl else impls_for(dtype):
        said = _impl_problem(way, dtype)
        if said is None:
            fused, said = _checked(model, dtype, way, pack)
            if fused is None and pack and way == ONEDNN:  # the way may still run unpacked
                fused, unpacked = _checked(model, dtype, way)
                said = f"{unpacked}, weights not packed ({said})" if fused else said
            if fused is not None:  # and the ways before it, why not (a changed op, say)
                before = "".join(f"; {IMPLS[w]}: {why}" for w, why in failed)
                return fused, f"{said} ({IMPLS[way]}{before})"
        failed.append((way, said))
    if len(failed) == 1:
        return None, failed[0][1]
    return None, "; ".join(f"{IMPLS[way]}: {said}" for way, said in failed)


def _checked(
    model: MaskedAutoencoder, dtype: torch.dtype, impl: str, pack: bool = False
) -> tuple[FusedEncoder | None, str]:
    """One way built and checked against the plain forward: (it, what the check found) or
    (None, why not)."""
    op = "oneDNN linear" if impl == ONEDNN else "fused kernel"
    try:
        fused = FusedEncoder(model, dtype, impl, pack)
    except Exception as exc:  # making the bf16 copy of the encoder, say
        return None, f"could not build it in {_name(dtype)}: {type(exc).__name__}: {exc}"
    try:
        diff, cosine = fused_agreement(fused)
    except Exception as exc:  # a private op: another signature in this torch, say
        first = (str(exc).splitlines() or [""])[0]
        return None, f"the {op} failed: {type(exc).__name__}: {first}"
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
    packed = ", weights packed" if fused.packed else ""
    if fused.pack_problem:
        packed = f", weights not packed ({fused.pack_problem})"
    return fused, f"checked against the plain forward: max abs difference {diff:.1e}{packed}"


def describe(forward: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype) -> str:
    """What runs `forward` (from `inference_forward`, asked for `dtype`), in a few words for
    a table or a JSON record: "fused layers (oneDNN linears, packed weights), float32",
    "plain, bf16 autocast"."""
    if isinstance(forward, FusedEncoder):
        packed = ", packed weights" if forward.packed else ""
        return f"fused layers ({IMPLS[forward.impl]}{packed}), {_name(forward.dtype)}"
    return "plain, bf16 autocast" if dtype == torch.bfloat16 else f"plain, {_name(dtype)}"


def inference_forward(
    model: MaskedAutoencoder,
    device: torch.device,
    dtype: torch.dtype,
    log: logging.Logger,
    pack: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The checked fused forward where it applies (on packed weights unless `pack` is
    false: for serving and evaluation, which never change the weights), else
    `model.forward_features`; `log` says which, and why (at INFO)."""
    fused, said = fused_encoder(model, device, dtype, pack=pack)
    log.info("fused encoder layers %s: %s", "on" if fused else "off", said)
    return fused or model.forward_features
