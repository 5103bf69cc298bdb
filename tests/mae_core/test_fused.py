"""The fused inference forward (`mae_core.fused`), both ways (oneDNN's linears and the
encoder-layer kernel): the same tokens as the model's own forward, for the default model
and random ones, at any batch and image size; the cases it does not cover say why; a
fused forward that disagrees is refused, a failing way leaves the next; and each does
what it is for: the kernel a small fraction of the plain forward's operator calls,
oneDNN's way every projection through oneDNN."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerScale
from torch import nn

from mae_core import create_model, load_model, onednn
from mae_core import fused as fused_module
from mae_core.export import encoder_forward
from mae_core.fused import (
    KERNEL,
    MAX_ABS_DIFF,
    MIN_BF16_COSINE,
    ONEDNN,
    FusedEncoder,
    fused_agreement,
    fused_encoder,
    why_not_fused,
)
from mae_core.hub import parse_model_id, resolve
from tests.torch_calls import KERNEL as KERNEL_OP
from tests.torch_calls import CountCalls, fused_calls_per_forward

CPU, F32 = torch.device("cpu"), torch.float32
# Both ways of the fused forward run in float32 (oneDNN's linears, the default, and the
# encoder-layer kernel, bfloat16's way): the tests that hold for both run for each.
ONEDNN_HERE = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)
IMPLS = pytest.mark.parametrize("impl", [pytest.param(ONEDNN, marks=ONEDNN_HERE), KERNEL])


def _encoder(name: str = "mae_vit_tiny_patch8", **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, with_decoder=False, **overrides).eval()


@pytest.fixture(scope="module")
def default_model() -> nn.Module:
    """The embedded default model, trained weights (ViT-Ti/8 at 64 px, 3 heads)."""
    path = resolve(parse_model_id("local:mae/vit-tiny-tinyimagenet"), None)
    return load_model(path, with_decoder=False).eval()


@IMPLS
@pytest.mark.parametrize("batch", [1, 5, 32])
def test_the_default_model_s_tokens_are_the_plain_forward_s(
    default_model: nn.Module, batch: int, impl: str
) -> None:
    fused, said = fused_encoder(default_model, CPU, F32, impl)
    assert fused is not None, said
    assert "max abs difference" in said and fused.impl == impl
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        want = default_model.forward_features(x)
        got = fused(x)
    assert got.shape == want.shape == (batch, 1 + 64, 192)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    # each image on its own, as in a batch: no mixing across the batch axis
    with torch.inference_mode():
        torch.testing.assert_close(fused(x[:1]), got[:1], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(
    ("name", "overrides", "size"),
    [
        ("mae_vit_tiny_patch8", {"img_size": 32, "depth": 2}, 32),
        ("mae_vit_tiny_patch8", {"img_size": 32, "depth": 2}, 48),  # another grid
        ("mae_vit_small_patch16", {"img_size": 64, "depth": 2}, 64),  # 6 heads, 384 wide
    ],
)
@IMPLS
def test_random_models_at_any_size_agree(name: str, overrides: dict, size: int, impl: str) -> None:
    model = _encoder(name, **overrides)
    fused, said = fused_encoder(model, CPU, F32, impl)
    assert fused is not None and fused.impl == impl, said
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=1e-5, atol=2e-5)


def test_what_it_does_not_cover_says_why() -> None:
    model = _encoder(img_size=32, depth=2)
    assert why_not_fused(model, CPU, F32) is None
    assert why_not_fused(model, CPU, torch.bfloat16) is None
    assert "(fused: float32 or bfloat16)" in why_not_fused(model, CPU, torch.float16)
    assert "CPU only" in why_not_fused(model, torch.device("cuda"), F32)
    assert "training mode" in why_not_fused(model.train(), CPU, F32)
    model.eval()
    assert why_not_fused(_encoder(img_size=32, depth=2).to(torch.bfloat16), CPU, F32) == (
        "the weights are bfloat16 (fused: from float32 weights)"
    )
    model.blocks[1].ls1 = LayerScale(model.config.embed_dim)  # CaiT / DeiT-III blocks
    assert why_not_fused(model, CPU, F32) == "block 1: the block has ls1"
    model.blocks[1].ls1 = nn.Identity()
    model.blocks[0].mlp.act = nn.GELU(approximate="tanh")
    assert why_not_fused(model, CPU, F32) == "block 0: the MLP's activation is not the exact GELU"
    model.blocks[0].mlp.act = nn.GELU()
    model.blocks[0].norm2.eps = 1e-5
    assert why_not_fused(model, CPU, F32) == "block 0: the block's two norms have different eps"
    model.blocks[0].norm2.eps = model.blocks[0].norm1.eps
    model.blocks[0].attn.q_norm = nn.LayerNorm(model.config.embed_dim // model.config.num_heads)
    assert why_not_fused(model, CPU, F32) == "block 0: the attention has q_norm"
    fused, said = fused_encoder(model, CPU, F32)
    assert fused is None and said == "block 0: the attention has q_norm"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda b: setattr(b.attn, "norm", nn.LayerNorm(b.attn.qkv.in_features)), "the attention has norm"),
        (lambda b: setattr(b.attn, "gate", nn.Linear(4, 4)), "the attention is gated"),
        (lambda b: setattr(b.attn, "scale", 0.5), "the attention's scale is not 1/sqrt(head dim)"),
        (lambda b: setattr(b.attn.proj, "bias", None), "a projection has no bias"),
        (lambda b: setattr(b, "norm1", nn.RMSNorm(b.attn.qkv.in_features)), "the block's norms are not LayerNorms with weight and bias"),
        (lambda b: setattr(b.mlp, "act", nn.ReLU()), "the MLP's activation is not the exact GELU"),
    ],
)  # fmt: skip
def test_every_block_it_cannot_compute_is_named(change, said: str) -> None:
    model = _encoder(img_size=32, depth=3)
    change(model.blocks[2])
    assert why_not_fused(model, CPU, F32) == f"block 2: {said}"


def test_torch_s_own_fast_path_switch_turns_it_off() -> None:
    """The kernel's way; float32 then keeps oneDNN's, bfloat16 (the kernel's alone) none."""
    model = _encoder(img_size=32, depth=2)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        assert "fast path is turned off" in why_not_fused(model, CPU, F32, KERNEL)
        # bf16 has one way: its reason alone, as fused_encoder gives it
        said = why_not_fused(model, CPU, torch.bfloat16)
        assert said.startswith("torch's fast path is turned off"), said
        assert fused_encoder(model, CPU, torch.bfloat16) == (None, said)
        fused, said = fused_encoder(model, CPU, F32)
        assert fused is not None and fused.impl == ONEDNN, said
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert why_not_fused(model, CPU, F32, KERNEL) is None


def test_an_unknown_way_or_one_that_cannot_run_is_an_error() -> None:
    model = _encoder(img_size=32, depth=2)
    with pytest.raises(ValueError, match="impl='bogus': one of onednn, kernel"):
        why_not_fused(model, CPU, F32, "bogus")
    with pytest.raises(ValueError, match="oneDNN linears in bfloat16: float32 only"):
        FusedEncoder(model, torch.bfloat16, ONEDNN)


@ONEDNN_HERE
def test_torch_s_onednn_switch_leaves_the_kernel_s_way() -> None:
    """torch.backends.mkldnn off: float32 runs the kernel's way; with the fast path off
    too, none, and the reason names both."""
    model = _encoder(img_size=32, depth=2)
    torch.backends.mkldnn.enabled = False  # (its flags() also sets TF32 and warns)
    try:
        assert "oneDNN is turned off" in why_not_fused(model, CPU, F32, ONEDNN)
        assert why_not_fused(model, CPU, F32) is None  # the kernel's way is left
        fused, said = fused_encoder(model, CPU, F32)
        assert fused is not None and fused.impl == KERNEL, said
        assert said.endswith(
            "(encoder-layer kernel; oneDNN linears: torch's oneDNN is turned off "
            "(torch.backends.mkldnn))"
        ), said
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            said = why_not_fused(model, CPU, F32)
            assert said.startswith("oneDNN linears: torch's oneDNN is turned off"), said
            assert "; encoder-layer kernel: torch's fast path is turned off" in said
            assert fused_encoder(model, CPU, F32) == (None, said)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    finally:
        torch.backends.mkldnn.enabled = True
    assert why_not_fused(model, CPU, torch.bfloat16, ONEDNN).startswith("float32 only")


@ONEDNN_HERE
def test_a_kernel_that_fails_keeps_the_plain_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is private to torch: a release that changes its signature must leave the
    plain forward running, with the reason, not a server that cannot start. (The only
    stand-in in these tests: a torch with another signature is not at hand.)"""

    def other_signature(src: torch.Tensor, embed_dim: int) -> torch.Tensor:
        return src

    monkeypatch.setattr(torch, KERNEL_OP, other_signature)
    model = _encoder(img_size=32, depth=2)
    fused, said = fused_encoder(model, CPU, F32, KERNEL)
    assert fused is None and said.startswith("the fused kernel failed: TypeError: ")
    fused, said = fused_encoder(model, CPU, torch.bfloat16)  # bf16's one way
    assert fused is None and said.startswith("the fused kernel failed: TypeError: ")
    fused, said = fused_encoder(model, CPU, F32)  # float32 runs oneDNN's way
    assert fused is not None and fused.impl == ONEDNN, said


@ONEDNN_HERE
def test_a_failing_onednn_linear_leaves_the_kernel_then_the_plain_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """oneDNN's linear is private to torch too: another signature tries the kernel's way
    next, and with both failing the plain forward runs, the reasons named."""

    def other_signature(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x

    monkeypatch.setattr(fused_module, "_onednn_linear", lambda: other_signature)
    model = _encoder(img_size=32, depth=2)
    fused, said = fused_encoder(model, CPU, F32, ONEDNN)
    assert fused is None and said.startswith("the oneDNN linear failed: TypeError: ")
    fused, said = fused_encoder(model, CPU, F32)
    assert fused is not None and fused.impl == KERNEL, said
    # the log line keeps why oneDNN's way was passed over
    passed_over = "(encoder-layer kernel; oneDNN linears: the oneDNN linear failed: TypeError: "
    assert passed_over in said, said
    monkeypatch.setattr(torch, KERNEL_OP, other_signature)
    fused, said = fused_encoder(model, CPU, F32)
    assert fused is None
    assert said.startswith("oneDNN linears: the oneDNN linear failed: TypeError: "), said
    assert "; encoder-layer kernel: the fused kernel failed: TypeError: " in said


@IMPLS
def test_each_block_keeps_its_own_eps(impl: str) -> None:
    model = _encoder(img_size=32, depth=2)
    for eps, block in zip((1e-6, 0.5), model.blocks, strict=True):
        block.norm1.eps = block.norm2.eps = eps
    fused, said = fused_encoder(model, CPU, F32, impl)
    assert fused is not None, said
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=1e-5, atol=2e-5)


@IMPLS
def test_with_gradients_autocast_or_training_it_runs_the_plain_forward(impl: str) -> None:
    """Neither op has a backward or an autocast rule: such calls take the plain path."""
    model = _encoder(img_size=32, depth=2)
    fused, _ = fused_encoder(model, CPU, F32, impl)
    x = torch.randn(2, 3, 32, 32)
    fused(x).sum().backward()  # gradients on: differentiable, as forward_features
    assert model.blocks[0].attn.qkv.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=0, atol=0)
    model.train()
    with torch.no_grad(), CountCalls() as mode:
        fused(x)
    assert mode.fused_calls(impl) == 0
    model.eval()
    with torch.no_grad(), CountCalls() as mode:
        fused(x)
    assert mode.fused_calls(impl) == fused_calls_per_forward(impl, len(model.blocks))


@IMPLS
def test_a_fused_forward_that_disagrees_is_refused(impl: str) -> None:
    model = _encoder(img_size=32, depth=2)
    fused = FusedEncoder(model, impl=impl)
    assert fused_agreement(fused)[0] <= MAX_ABS_DIFF
    # The norms' eps is read once, when the fused forward is built: change it after, and
    # the check sees the two forwards part.
    for block in model.blocks:
        block.norm1.eps = block.norm2.eps = 0.5
    assert fused_agreement(fused)[0] > MAX_ABS_DIFF
    # Broken weights: NaN is no agreement either.
    model = _encoder(img_size=32, depth=2)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    fused, said = fused_encoder(model, CPU, F32, impl)
    assert fused is None and "differs from the plain forward by nan" in said


@IMPLS
def test_it_reads_the_model_s_weights_not_a_copy(impl: str) -> None:
    model = _encoder(img_size=32, depth=2)
    fused = FusedEncoder(model, impl=impl)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.blocks[1].mlp.fc2.bias.add_(1.0)  # e.g. weights loaded after it was built
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=1e-5, atol=2e-5)


PACKING_HERE = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or onednn.packed_weight(torch.ones(1, 1)) is None,
    reason="this torch cannot pack oneDNN weights",
)


@PACKING_HERE
def test_on_packed_weights_the_same_tokens_from_copies_the_model_does_not_reach(
    default_model: nn.Module,
) -> None:
    """`pack` (what `inference_forward`, so the server and `mae eval`, asks for): oneDNN's
    way reads packed copies of the projections' weights, checked and said at build, with
    the unpacked way's tokens; changes to the model's weights no longer reach it, which is
    why a bare `FusedEncoder` does not pack."""
    fused, said = fused_encoder(default_model, CPU, F32, pack=True)
    assert fused is not None and fused.packed and said.endswith(", weights packed (oneDNN linears)")
    unpacked, _ = fused_encoder(default_model, CPU, F32)
    assert unpacked is not None and not unpacked.packed
    assert not FusedEncoder(default_model, F32, KERNEL, pack=True).packed  # oneDNN's way only
    packed_w = fused.layers[0][0][0]
    assert packed_w is not default_model.blocks[0].attn.qkv.weight
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        got, want = fused(x), unpacked(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(got, default_model.forward_features(x), rtol=1e-5, atol=2e-5)
    model = _encoder(img_size=32, depth=2)
    packed = FusedEncoder(model, pack=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = packed(x)
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight.mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), before)  # the copy, not the model's weight
        assert (FusedEncoder(model)(x) - before).abs().max() > 1e-3  # an unpacked one sees it
    served = encoder_forward(model, "torch")
    assert isinstance(served, FusedEncoder) and served.packed


@PACKING_HERE
@pytest.mark.parametrize("fault", ["raises", "wrong"])
def test_where_packing_fails_oneDNN_s_way_runs_unpacked_and_says_why(
    monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Packing is an extra: a packing op that fails, or packed weights the check refuses,
    leave oneDNN's way on the weights as they are (not the slower kernel's way)."""
    real = onednn.packed_weight

    def packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
        if fault == "raises":
            raise RuntimeError("reorder changed\nsecond line")
        return real(weight * 2)

    monkeypatch.setattr(onednn, "packed_weight", packed_weight)
    model = _encoder(img_size=32, depth=2)
    fused, said = fused_encoder(model, CPU, F32, pack=True)
    assert fused is not None and fused.impl == ONEDNN and not fused.packed, said
    assert said.endswith("(oneDNN linears)") and ", weights not packed (" in said
    why = "packing failed: RuntimeError: reorder changed)" if fault == "raises" else "differs"
    assert why in said
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=1e-5, atol=2e-5)


def test_it_makes_a_fraction_of_the_operator_calls(default_model: nn.Module) -> None:
    """What the kernel's way is for: fewer calls into torch from Python, each a GIL hand-off
    in a server (12 blocks: one call each instead of a score)."""
    fused, _ = fused_encoder(default_model, CPU, F32, KERNEL)
    x = torch.randn(4, 3, 64, 64)
    counts, kernels = {}, {}
    with torch.inference_mode():
        for name, forward in (("plain", default_model.forward_features), ("fused", fused)):
            with CountCalls() as mode:
                forward(x)
            counts[name], kernels[name] = mode.calls, mode.kernel
    depth = len(default_model.blocks)
    assert kernels == {"plain": 0, "fused": depth}, kernels
    assert counts["plain"] >= 5 * counts["fused"], counts


def test_mae_eval_s_torch_forward_is_the_fused_one_where_it_applies() -> None:
    """`export.encoder_forward` (what `mae eval --backend torch` extracts features with):
    fused on the CPU, in float32 or bf16 (as `--precision bf16` runs it), plain in float16."""
    model = _encoder(img_size=32, depth=2)
    fp32, bf16 = (encoder_forward(model, "torch", dtype=d) for d in (F32, torch.bfloat16))
    assert isinstance(fp32, FusedEncoder) and fp32.dtype == F32
    assert isinstance(bf16, FusedEncoder) and bf16.dtype == torch.bfloat16
    assert encoder_forward(model, "torch", dtype=torch.float16) == model.forward_features


def test_in_bfloat16_it_runs_on_a_copy_close_to_the_float32_forward(
    default_model: nn.Module,
) -> None:
    """bf16: an encoder-only bf16 copy, every block in bf16; each token within the cosine
    bound of the float32 forward, under bf16 autocast too (mae eval --precision bf16), and
    the model itself left in float32."""
    fused, said = fused_encoder(default_model, CPU, torch.bfloat16)
    assert fused is not None and said.startswith("bfloat16, checked against the float32 forward")
    assert fused.model is not default_model and not hasattr(fused.model, "decoder_blocks")
    assert default_model.cls_token.dtype == F32 and fused.model.cls_token.dtype == torch.bfloat16
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = default_model.forward_features(x)
        with CountCalls() as mode:
            got = fused(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), CountCalls() as under:
            under_autocast = fused(x)
    depth = len(default_model.blocks)
    assert got.dtype == torch.bfloat16 and mode.kernel == depth
    assert under_autocast.dtype == torch.bfloat16 and under.kernel == depth  # fused there too
    for out in (got, under_autocast):
        cosine = torch.nn.functional.cosine_similarity(out.float(), want, dim=-1)
        assert cosine.min() >= MIN_BF16_COSINE, cosine.min()
    assert not torch.equal(got.float(), want)  # bf16 is not fp32: it really ran in bf16
    # gradients on: the model's own float32 forward
    assert fused(x).dtype == F32 and fused(x).requires_grad


def test_in_bfloat16_a_learned_table_comes_with_the_copy_and_other_sizes_work() -> None:
    """A trained (not sin-cos) position table travels to the bf16 copy, and is resampled
    there for another image size, as the model's own forward does."""
    model = _encoder(img_size=32, depth=2)
    with torch.no_grad():
        model.pos_embed.normal_(std=0.5)
    model.learned_tables.add("pos_embed")
    fused, said = fused_encoder(model, CPU, torch.bfloat16)
    assert fused is not None, said
    assert fused.model.learned_tables == {"pos_embed"}
    x = torch.randn(3, 3, 48, 48)  # a 6 x 6 grid where the table is 4 x 4
    with torch.inference_mode():
        got, want = fused(x).float(), model.forward_features(x)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() >= MIN_BF16_COSINE, cosine.min()


@ONEDNN_HERE
def test_onednn_s_way_runs_every_projection_through_onednn(default_model: nn.Module) -> None:
    """What oneDNN's way is for: no projection left to torch's own linear (MKL's sgemm in
    float32), four oneDNN linears a block, and still fewer calls than the plain forward."""
    fused, said = fused_encoder(default_model, CPU, F32)
    assert fused is not None and fused.impl == ONEDNN and said.endswith("(oneDNN linears)")
    x = torch.randn(4, 3, 64, 64)
    counts = {}
    with torch.inference_mode():
        for name, forward in (("plain", default_model.forward_features), ("fused", fused)):
            with CountCalls() as mode:
                forward(x)
            counts[name] = (mode.calls, mode.linear, mode.names["linear"])
    depth = len(default_model.blocks)
    assert counts["fused"][1:] == (4 * depth, 0), counts
    assert counts["plain"][1:] == (0, 4 * depth), counts
    assert counts["plain"][0] > counts["fused"][0], counts
