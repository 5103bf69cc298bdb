"""The fused inference forward (`mae_core.fused`): the same tokens as the model's own
forward, for the default model and random ones, at any batch and image size; the cases it
does not cover say why; a fused forward that disagrees is refused; and it makes a small
fraction of the plain forward's operator calls (what it is for)."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerScale
from torch import nn
from torch.overrides import TorchFunctionMode

from mae_core import create_model, load_model
from mae_core.export import encoder_forward
from mae_core.fused import MAX_ABS_DIFF, FusedEncoder, check, fused_encoder, why_not
from mae_core.hub import parse_model_id, resolve

CPU, F32 = torch.device("cpu"), torch.float32


def _encoder(name: str = "mae_vit_tiny_patch8", **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, with_decoder=False, **overrides).eval()


@pytest.fixture(scope="module")
def default_model() -> nn.Module:
    """The embedded default model, trained weights (ViT-Ti/8 at 64 px, 3 heads)."""
    path = resolve(parse_model_id("local:mae/vit-tiny-tinyimagenet"), None)
    return load_model(path, with_decoder=False).eval()


class CountCalls(TorchFunctionMode):
    """Counts the torch functions and methods called from Python."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_the_default_model_s_tokens_are_the_plain_forward_s(
    default_model: nn.Module, batch: int
) -> None:
    fused, said = fused_encoder(default_model, CPU, F32)
    assert fused is not None, said
    assert "max abs difference" in said
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
def test_random_models_at_any_size_agree(name: str, overrides: dict, size: int) -> None:
    model = _encoder(name, **overrides)
    fused, said = fused_encoder(model, CPU, F32)
    assert fused is not None, said
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=1e-5, atol=2e-5)


def test_what_it_does_not_cover_says_why() -> None:
    model = _encoder(img_size=32, depth=2)
    assert why_not(model, CPU, F32) is None
    assert "float32 only" in why_not(model, CPU, torch.bfloat16)
    assert "CPU only" in why_not(model, torch.device("cuda"), F32)
    assert "training mode" in why_not(model.train(), CPU, F32)
    model.eval()
    assert why_not(_encoder(img_size=32, depth=2).to(torch.bfloat16), CPU, F32) == (
        "the weights are bfloat16 (fused: float32 only)"
    )
    model.blocks[1].ls1 = LayerScale(model.config.embed_dim)  # CaiT / DeiT-III blocks
    assert why_not(model, CPU, F32) == "block 1: the block has ls1"
    model.blocks[1].ls1 = nn.Identity()
    model.blocks[0].mlp.act = nn.GELU(approximate="tanh")
    assert why_not(model, CPU, F32) == "block 0: the MLP's activation is not the exact GELU"
    model.blocks[0].mlp.act = nn.GELU()
    model.blocks[0].norm2.eps = 1e-5
    assert why_not(model, CPU, F32) == "block 0: the block's two norms have different eps"
    model.blocks[0].norm2.eps = model.blocks[0].norm1.eps
    model.blocks[0].attn.q_norm = nn.LayerNorm(model.config.embed_dim // model.config.num_heads)
    assert why_not(model, CPU, F32) == "block 0: the attention has q_norm"
    fused, said = fused_encoder(model, CPU, F32)
    assert fused is None and said == "block 0: the attention has q_norm"


def test_a_fused_forward_that_disagrees_is_refused() -> None:
    model = _encoder(img_size=32, depth=2)
    fused = FusedEncoder(model)
    assert check(fused) <= MAX_ABS_DIFF
    # The norms' eps is read once, when the fused forward is built: change it after, and
    # the check sees the two forwards part.
    for block in model.blocks:
        block.norm1.eps = block.norm2.eps = 0.5
    assert check(fused) > MAX_ABS_DIFF
    # Broken weights: NaN is no agreement either.
    model = _encoder(img_size=32, depth=2)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    fused, said = fused_encoder(model, CPU, F32)
    assert fused is None and "differs from the plain forward by nan" in said


def test_it_reads_the_model_s_weights_not_a_copy() -> None:
    model = _encoder(img_size=32, depth=2)
    fused = FusedEncoder(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.blocks[1].mlp.fc2.bias.add_(1.0)  # e.g. weights loaded after it was built
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.forward_features(x), rtol=1e-5, atol=2e-5)


def test_it_makes_a_fraction_of_the_operator_calls(default_model: nn.Module) -> None:
    """What the fused forward is for: fewer calls into torch from Python, each a GIL hand-off
    in a server (12 blocks: one call each instead of a score)."""
    fused, _ = fused_encoder(default_model, CPU, F32)
    x = torch.randn(4, 3, 64, 64)
    counts = {}
    with torch.inference_mode():
        for name, forward in (("plain", default_model.forward_features), ("fused", fused)):
            with CountCalls() as mode:
                forward(x)
            counts[name] = mode.calls
    depth = len(default_model.blocks)
    assert counts["fused"] <= depth + 20, counts
    assert counts["plain"] >= 10 * depth, counts


def test_mae_eval_s_torch_forward_is_the_fused_one_where_it_applies() -> None:
    """`export.encoder_forward` (what `mae eval --backend torch` extracts features with):
    fused in float32 on the CPU, the plain forward under bf16 autocast."""
    model = _encoder(img_size=32, depth=2)
    assert isinstance(encoder_forward(model, "torch"), FusedEncoder)
    assert encoder_forward(model, "torch", dtype=torch.bfloat16) == model.forward_features
