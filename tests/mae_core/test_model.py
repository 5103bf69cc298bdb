"""MaskedAutoencoder invariants: the loss, gradients, fixed tables, reproducibility, shapes."""

from __future__ import annotations

import json

import pytest
import torch

from mae_core import VARIANTS, MaskedAutoencoder, create_model, load_model, sincos_2d
from mae_core.config import MAEConfig
from mae_core.masking import sample_mask
from mae_core.targets import PCABasisMissing, fit_pca_basis
from tests.reference import TINY, perturb_


def test_output_shapes(tiny_model: MaskedAutoencoder, imgs: torch.Tensor) -> None:
    out = tiny_model(imgs, mask_ratio=0.75)
    assert out.loss.shape == ()
    assert out.pred.shape == (3, 16, 8 * 8 * 3)
    assert out.mask.shape == out.ids_restore.shape == (3, 16)
    assert torch.equal(out.mask.sum(1), torch.full((3,), 12.0))


def test_patchify_roundtrip_and_layout(tiny_model: MaskedAutoencoder, imgs: torch.Tensor) -> None:
    patches = tiny_model.patchify(imgs)
    assert patches.shape == (3, 16, 192)
    assert torch.equal(tiny_model.unpatchify(patches), imgs)
    # Patch 5 is grid row 1, column 1; its first entry is pixel (8, 8), channel 0.
    assert patches[0, 5, 0] == imgs[0, 0, 8, 8]
    assert patches[0, 5, 1] == imgs[0, 1, 8, 8]  # channels vary fastest
    rect = torch.randn(1, 3, 16, 40)
    assert torch.equal(tiny_model.unpatchify(tiny_model.patchify(rect), (2, 5)), rect)


def test_loss_is_mse_on_masked_patches_only(
    tiny_model: MaskedAutoencoder, imgs: torch.Tensor
) -> None:
    out = tiny_model(imgs, mask_ratio=0.75)
    pred = out.pred.detach().clone()
    visible = out.mask == 0
    changed = pred.clone()
    changed[visible] += 100.0
    assert torch.allclose(tiny_model.forward_loss(imgs, changed, out.mask), out.loss)
    changed_masked = pred.clone()
    changed_masked[~visible] += 1.0
    assert tiny_model.forward_loss(imgs, changed_masked, out.mask) > out.loss + 0.5
    # And it is the per-patch-normalised MSE written out by hand.
    target = tiny_model.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    manual = (((pred - target) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    assert torch.allclose(manual, out.loss, atol=1e-6)


def test_raw_pixel_loss_when_norm_pix_off(tiny_cfg: MAEConfig, imgs: torch.Tensor) -> None:
    model = MaskedAutoencoder(tiny_cfg.replace(norm_pix_loss=False))
    out = model(imgs)
    manual = (((out.pred - model.patchify(imgs)) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    assert torch.allclose(manual, out.loss, atol=1e-6)


def test_mask_ratio_zero_gives_zero_loss_not_nan(tiny_model: MaskedAutoencoder, imgs) -> None:
    out = tiny_model(imgs, mask_ratio=0.0)
    assert out.mask.sum() == 0 and out.loss.item() == 0.0


def test_every_trainable_parameter_gets_a_gradient(tiny_cfg: MAEConfig, imgs) -> None:
    model = MaskedAutoencoder(tiny_cfg).train()
    model(imgs).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, name


def test_position_tables_are_not_trained(tiny_cfg: MAEConfig, imgs) -> None:
    model = MaskedAutoencoder(tiny_cfg).train()
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    before = model.pos_embed.clone(), model.decoder_pos_embed.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(imgs).loss.backward()
        opt.step()
    assert torch.equal(model.pos_embed, before[0])
    assert torch.equal(model.decoder_pos_embed, before[1])
    # ... and they are saved with the weights, under timm's and the official names.
    assert {"pos_embed", "decoder_pos_embed"} <= set(model.state_dict())


def test_same_noise_or_generator_same_mask_and_loss(tiny_model: MaskedAutoencoder, imgs) -> None:
    noise = torch.rand(3, 16)
    a, b = tiny_model(imgs, noise=noise), tiny_model(imgs, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)
    g = [torch.Generator().manual_seed(3) for _ in range(2)]
    c, d = tiny_model(imgs, generator=g[0]), tiny_model(imgs, generator=g[1])
    assert torch.equal(c.mask, d.mask) and torch.equal(c.loss, d.loss)
    assert not torch.equal(a.mask, c.mask)


def test_official_initialisation(tiny_cfg: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny_cfg)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
            assert mod.eps == 1e-6
        if isinstance(mod, torch.nn.Linear):
            assert torch.all(mod.bias == 0), name
            bound = (6 / sum(mod.weight.shape)) ** 0.5  # xavier uniform
            assert mod.weight.abs().max() <= bound, name
    assert 0.01 < model.cls_token.std() < 0.04 and 0.01 < model.mask_token.std() < 0.04
    assert all(blk.attn.qkv.bias is not None for blk in model.blocks)


def test_forward_features_keeps_patch_order(tiny_model: MaskedAutoencoder, imgs) -> None:
    feats = tiny_model.forward_features(imgs)
    assert feats.shape == (3, 17, 32)
    # The masked path with increasing noise keeps every patch in its own order: same tokens.
    identity_noise = torch.arange(16.0).expand(3, 16)
    latent, m = tiny_model.forward_encoder(imgs, 0.0, noise=identity_noise)
    assert torch.equal(m.ids_restore, torch.arange(16).expand(3, 16))
    assert torch.allclose(latent, feats, atol=1e-6)
    # A change to one patch of the image moves that patch's token most.
    edited = imgs.clone()
    edited[:, :, 8:16, 16:24] += 3.0  # grid row 1, column 2 -> patch 6
    delta = (tiny_model.forward_features(edited) - feats)[:, 1:].norm(dim=-1)
    assert torch.all(delta.argmax(dim=1) == 6)


def test_embed_pooling(tiny_model: MaskedAutoencoder, imgs) -> None:
    feats = tiny_model.forward_features(imgs)
    assert torch.allclose(tiny_model.embed(imgs, "cls"), feats[:, 0])
    assert torch.allclose(tiny_model.embed(imgs, "mean"), feats[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean'"):
        tiny_model.embed(imgs, "max")


def test_other_image_sizes_use_a_recomputed_table(tiny_model: MaskedAutoencoder) -> None:
    big = torch.randn(2, 3, 48, 40)
    assert tiny_model.forward_features(big).shape == (2, 1 + 6 * 5, 32)
    out = tiny_model(big)
    assert out.pred.shape == (2, 30, 192) and torch.isfinite(out.loss)
    table = tiny_model._table("pos_embed", (6, 5))
    assert torch.allclose(table[0], sincos_2d(32, (6, 5)))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 1, 32, 32), "model expects 3 channels, got 1"),
        ((2, 3, 30, 32), "image size 30x32 is not a positive multiple of the patch size 8"),
        ((2, 3, 4, 4), "image size 4x4 is not a positive multiple"),
        ((3, 32, 32), r"imgs must have shape \(N, C, H, W\)"),
    ],
)
def test_bad_images_are_named(tiny_model: MaskedAutoencoder, shape, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.randn(*shape))
    with pytest.raises(ValueError, match=message):
        tiny_model.forward_features(torch.randn(*shape))


def test_integer_images_are_refused(tiny_model: MaskedAutoencoder) -> None:
    with pytest.raises(ValueError, match="normalised float tensor"):
        tiny_model.embed(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("ratio", [1.0, -0.5])
def test_bad_mask_ratio(tiny_model: MaskedAutoencoder, imgs, ratio: float) -> None:
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        tiny_model(imgs, mask_ratio=ratio)


def test_encoder_only_model(tiny_cfg: MAEConfig, imgs) -> None:
    model = MaskedAutoencoder(tiny_cfg, with_decoder=False)
    assert model.embed(imgs).shape == (3, 32)
    assert model.num_params()["decoder"] == 0
    with pytest.raises(RuntimeError, match="needs the MAE decoder"):
        model(imgs)
    full = MaskedAutoencoder(tiny_cfg)
    enc_keys = set(full.encoder_state_dict())
    full.drop_decoder()
    assert set(full.state_dict()) == enc_keys and not full.has_decoder
    assert "mask_token" not in enc_keys


def test_variants_table() -> None:
    assert len(VARIANTS) == 20
    dims = {
        "tiny": (192, 12, 3, 128, 4, 4),
        "small": (384, 12, 6, 256, 4, 8),
        "base": (768, 12, 12, 512, 8, 16),
        "large": (1024, 24, 16, 512, 8, 16),
        "huge": (1280, 32, 16, 512, 8, 16),
    }
    for size, d in dims.items():
        for patch, img in ((4, 32), (8, 64), (14, 224), (16, 224)):
            c = VARIANTS[f"mae_vit_{size}_patch{patch}"]
            assert (
                c.embed_dim,
                c.depth,
                c.num_heads,
                c.decoder_embed_dim,
                c.decoder_depth,
                c.decoder_num_heads,
            ) == d
            assert (c.patch_size, c.img_size) == (patch, img)
    assert create_model("mae_vit_tiny_patch8", img_size=96).config.img_size == 96
    with pytest.raises(ValueError, match="unknown MAE variant 'mae_vit_giant_patch16'"):
        create_model("mae_vit_giant_patch16")


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("mae_vit_base_patch16", 85.8),
        ("mae_vit_large_patch16", 303.3),
        ("mae_vit_huge_patch14", 630.8),
    ],
)
def test_encoder_sizes_match_the_paper(name: str, millions: float) -> None:
    with torch.device("meta"):
        model = create_model(name)
    assert abs(model.num_params()["encoder"] / 1e6 - millions) < 0.5


def test_invalid_config_is_named() -> None:
    with pytest.raises(ValueError, match="img_size 30 is not a multiple of patch_size 8"):
        MAEConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="embed_dim 30 is not divisible by num_heads 4"):
        MAEConfig(embed_dim=30, num_heads=4)


@pytest.mark.parametrize("strategy", ["random", "block", "grid", "centre"])
def test_forward_uses_the_mask_strategy(tiny_model: MaskedAutoencoder, imgs, strategy) -> None:
    noise = torch.rand(3, 16)
    out = tiny_model(imgs, mask_ratio=0.75, noise=noise, mask_strategy=strategy)
    assert out.pred.shape == (3, 16, 192) and torch.isfinite(out.loss)
    assert torch.equal(out.mask.sum(1), torch.full((3,), 12.0))
    # The model's mask is the masking function's for the same noise on the same grid.
    expected = sample_mask(torch.zeros(3, 16, 1), 0.75, strategy, noise=noise, grid_size=(4, 4))
    assert torch.equal(out.mask, expected.mask)
    assert torch.equal(out.ids_restore, expected.ids_restore)
    # The loss still counts the hidden patches only, whichever they are.
    per_patch = ((out.pred - tiny_model.patch_targets(imgs)) ** 2).mean(-1)
    assert torch.allclose((per_patch * out.mask).sum() / out.mask.sum(), out.loss, atol=1e-6)


def test_forward_default_strategy_is_random_and_unchanged(
    tiny_model: MaskedAutoencoder, imgs
) -> None:
    noise = torch.rand(3, 16)
    out = tiny_model(imgs, noise=noise)
    assert torch.equal(out.ids_restore, torch.argsort(torch.argsort(noise, dim=1), dim=1))
    assert torch.equal(out.loss, tiny_model(imgs, noise=noise, mask_strategy="random").loss)


def test_config_strategy_is_the_default_and_non_square_grids_work(tiny_cfg: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny_cfg.replace(mask_strategy="grid")).eval()
    imgs = torch.randn(2, 3, 32, 48)  # a 4x6 grid
    g = [torch.Generator().manual_seed(1) for _ in range(2)]
    a, b = model(imgs, generator=g[0]), model(imgs, generator=g[1], mask_strategy="grid")
    assert torch.equal(a.mask, b.mask)
    cells = (a.mask == 0).view(2, 2, 2, 3, 2).sum(dim=(2, 4))  # visible per 2x2 cell
    assert torch.all(cells == 1)
    # Asked for another strategy, the call's wins.
    c = model(imgs, generator=torch.Generator().manual_seed(1), mask_strategy="centre")
    assert not torch.equal(a.mask, c.mask)


def test_bad_mask_strategy_in_forward(tiny_model: MaskedAutoencoder, imgs) -> None:
    with pytest.raises(
        ValueError, match=r"unknown mask strategy 'center' \(did you mean centre\?\)"
    ):
        tiny_model(imgs, mask_strategy="center")
    with pytest.raises(ValueError, match=r"grid masking .*mask_ratio 0\.75; got 0\.5"):
        tiny_model(imgs, mask_ratio=0.5, mask_strategy="grid")
    with pytest.raises(ValueError, match=r"even patch grid \(2x2 cells\), got 3x3"):
        tiny_model(torch.randn(1, 3, 24, 24), mask_strategy="grid")


def test_config_mask_strategy_is_checked_and_saved(tiny_cfg: MAEConfig, tmp_path) -> None:
    assert MAEConfig().mask_strategy == "random"
    assert tiny_cfg.replace(mask_strategy="block").to_dict()["mask_strategy"] == "block"
    with pytest.raises(
        ValueError, match="mask_strategy must be one of random, block, grid, centre"
    ):
        tiny_cfg.replace(mask_strategy="blocks")
    with pytest.raises(ValueError, match=r"invalid MAEConfig: grid masking .*got 0\.6"):
        tiny_cfg.replace(mask_strategy="grid", mask_ratio=0.6)
    with pytest.raises(ValueError, match=r"even patch grid \(2x2 cells\), got 7x7"):
        tiny_cfg.replace(mask_strategy="grid", img_size=56)
    # Saved in mae_config.json and read back with the weights.
    model = MaskedAutoencoder(tiny_cfg.replace(mask_strategy="centre"))
    model.save_pretrained(tmp_path / "centre")
    saved = json.loads((tmp_path / "centre" / "mae_config.json").read_text())
    assert saved["mask_strategy"] == "centre"
    assert load_model(tmp_path / "centre").config.mask_strategy == "centre"
    # An older mae_config.json, written before the field existed: random masking.
    del saved["mask_strategy"]
    (tmp_path / "centre" / "mae_config.json").write_text(json.dumps(saved))
    old = load_model(tmp_path / "centre")
    assert old.config.mask_strategy == "random" and "mask_strategy" not in old.config.extra
    assert MAEConfig.from_dict({"img_size": 32, "patch_size": 8}).mask_strategy == "random"


# -- reconstruction targets and encoder mask tokens (the paper's Table 1(c), 1(d)) -------
def _seeded(cfg: MAEConfig) -> tuple[MaskedAutoencoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = perturb_(MaskedAutoencoder(cfg)).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(2))
    return model, x, noise


@pytest.mark.parametrize(
    ("target", "loss", "grads"),
    [
        # Captured from the code before the targets and encoder mask tokens existed.
        ("norm_pix", 1.3124308586120605, {"cls_token": 0.05160454595937009}),
        ("pixel", 1.3228880167007446, {"patch_embed.proj.weight": 0.05427238649136121}),
    ],
)
def test_default_path_is_unchanged(target: str, loss: float, grads: dict[str, float]) -> None:
    model, x, noise = _seeded(TINY.replace(target=target))
    assert not hasattr(model, "encoder_mask_token") and not hasattr(model, "target_pca_mean")
    with torch.no_grad():
        out = model(x, noise=noise)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5)
    assert out.pred.double().sum().item() == pytest.approx(-382.3488254651893, rel=1e-4)
    assert out.pred.double().abs().sum().item() == pytest.approx(4224.456208528252, rel=1e-5)
    torch.manual_seed(5)
    model.train()(x, noise=noise).loss.backward()
    for name, norm in grads.items():
        assert model.get_parameter(name).grad.norm().item() == pytest.approx(norm, rel=1e-4)
    if target == "norm_pix":
        assert model.mask_token.grad.norm().item() == pytest.approx(0.1401799021982934, rel=1e-4)


def test_pixel_and_norm_pix_losses_by_hand(imgs: torch.Tensor) -> None:
    norm, _, noise = _seeded(TINY)
    imgs = imgs * 2.0 + 1.0  # patches whose mean and spread are far from 0 and 1
    pixel = MaskedAutoencoder(TINY.replace(target="pixel")).eval()
    pixel.load_state_dict(norm.state_dict())  # same weights: same predictions
    a, b = norm(imgs, noise=noise), pixel(imgs, noise=noise)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask)
    x = norm.patchify(imgs).double()
    m = a.mask.double()
    for out, target in (
        (a, (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6).sqrt()),
        (b, x),
    ):
        manual = (((out.pred.double() - target) ** 2).mean(-1) * m).sum() / m.sum()
        assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert b.loss.item() > a.loss.item() + 1.0


def _pca_model(k: int = 12) -> MaskedAutoencoder:
    model = perturb_(MaskedAutoencoder(TINY.replace(target="pca", pca_components=k))).eval()
    patches = torch.randn(400, 192, generator=torch.Generator().manual_seed(3))
    patches[:, :24] *= 4.0  # a few directions carry more variance
    model.set_pca_basis(*fit_pca_basis(patches, k))
    return model


def test_pca_loss_is_mse_of_coefficients_on_masked_patches(imgs: torch.Tensor) -> None:
    model = _pca_model()
    assert model.decoder_pred.weight.shape == (12, 16) and model.target_dim == 12
    out = model(imgs, noise=torch.rand(3, 16))
    assert out.pred.shape == (3, 16, 12)
    # By hand, in float64: coefficients of each (not per-patch normalised) patch.
    mean = model.target_pca_mean.double()
    comps = model.target_pca_components.double()
    coeffs = torch.einsum("nlp,kp->nlk", model.patchify(imgs).double() - mean, comps)
    m = out.mask.double()
    manual = (((out.pred.double() - coeffs) ** 2).mean(-1) * m).sum() / m.sum()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    torch.testing.assert_close(model.patch_targets(imgs).double(), coeffs, atol=1e-4, rtol=1e-5)
    # Visible patches do not count.
    changed = out.pred.detach().clone()
    changed[out.mask == 0] += 50.0
    assert torch.allclose(model.forward_loss(imgs, changed, out.mask), out.loss)


def test_pca_without_a_basis_refuses_to_compute_a_loss(imgs: torch.Tensor) -> None:
    model = MaskedAutoencoder(TINY.replace(target="pca", pca_components=8))
    assert not model.has_pca_basis
    with pytest.raises(PCABasisMissing, match=r"no PCA basis: fit one .*fit_pca_target"):
        model(imgs)
    with pytest.raises(RuntimeError, match="no PCA basis"):
        model.pred_to_pixels(torch.zeros(1, 16, 8))
    # A loaded state dict without a basis (all zeros) is refused again.
    good = _pca_model(8)
    assert good.has_pca_basis and torch.isfinite(good(imgs).loss)
    good.load_state_dict(model.state_dict())
    assert not good.has_pca_basis


def test_set_pca_basis_checks_what_it_is_given() -> None:
    model = MaskedAutoencoder(TINY.replace(target="pca", pca_components=4))
    mean, comps = torch.zeros(192), torch.eye(192)[:4]
    with pytest.raises(ValueError, match=r"mean \(192,\) and components \(4, 192\); got"):
        model.set_pca_basis(mean, torch.eye(192)[:5])
    with pytest.raises(ValueError, match="orthonormal rows"):
        model.set_pca_basis(mean, comps * 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.set_pca_basis(torch.full((192,), float("nan")), comps)
    with pytest.raises(ValueError, match="set_pca_basis is for target 'pca'"):
        MaskedAutoencoder(TINY).set_pca_basis(mean, comps)
    model.set_pca_basis(mean, comps)
    assert model.has_pca_basis
    assert not MaskedAutoencoder(TINY.replace(target="pca"), with_decoder=False).has_pca_basis


def test_target_config_and_the_older_norm_pix_loss_switch() -> None:
    assert (MAEConfig().target, MAEConfig().norm_pix_loss) == ("norm_pix", True)
    assert MAEConfig(norm_pix_loss=False).target == "pixel"
    assert MAEConfig(norm_pix_loss=False) == MAEConfig(target="pixel")
    assert MAEConfig(target="pca").norm_pix_loss is False
    assert MAEConfig(target="pixel", norm_pix_loss=False).target == "pixel"  # agreeing
    with pytest.raises(ValueError, match="norm_pix_loss=True contradicts target 'pca'"):
        MAEConfig(target="pca", norm_pix_loss=True)
    with pytest.raises(ValueError, match="norm_pix_loss=False contradicts target 'norm_pix'"):
        MAEConfig(target="norm_pix", norm_pix_loss=False)
    # replace() changes one and re-derives the other.
    assert TINY.replace(norm_pix_loss=False).target == "pixel"
    pca = TINY.replace(target="pca")
    assert (pca.target, pca.norm_pix_loss) == ("pca", False)
    assert pca.replace(norm_pix_loss=False).target == "pca"  # already not norm-pix
    assert pca.replace(norm_pix_loss=True).target == "norm_pix"
    assert TINY.replace(target="pixel").replace(target="norm_pix").norm_pix_loss is True
    # Older files: norm_pix_loss only.
    old = TINY.to_dict()
    for k in ("target", "pca_components", "encoder_mask_tokens"):
        del old[k]
    assert MAEConfig.from_dict(old) == TINY
    assert MAEConfig.from_dict({**old, "norm_pix_loss": False}).target == "pixel"
    new = TINY.replace(target="pca", pca_components=7, encoder_mask_tokens=True)
    d = new.to_dict()
    assert (d["target"], d["norm_pix_loss"], d["pca_components"]) == ("pca", False, 7)
    assert d["encoder_mask_tokens"] is True and MAEConfig.from_dict(d) == new


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "tokens"}, r"target must be one of norm_pix, pixel, pca, got 'tokens'"),
        ({"target": "pixels"}, r"got 'pixels' \(did you mean pixel\?\)"),
        ({"target": "pca", "pca_components": 0}, "pca_components must be a positive integer"),
        ({"pca_components": -3}, "pca_components must be a positive integer, got -3"),
        (
            {"target": "pca", "pca_components": 193},
            r"pca_components must be in 1\.\.192 .* for target 'pca', got 193",
        ),
        ({"encoder_mask_tokens": "yes"}, "encoder_mask_tokens must be true or false"),
    ],
)
def test_bad_target_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TINY.replace(**changes)


def _mask_token_pair() -> tuple[MaskedAutoencoder, MaskedAutoencoder]:
    """The default model and an encoder-mask-token model with the same shared weights."""
    base, _, _ = _seeded(TINY)
    with_m = MaskedAutoencoder(TINY.replace(encoder_mask_tokens=True)).eval()
    shared = {k: v for k, v in base.state_dict().items() if k != "mask_token"}
    token = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(4))
    with_m.load_state_dict({**shared, "encoder_mask_token": token})
    return base, with_m


def test_encoder_mask_tokens_run_the_encoder_on_every_patch(imgs: torch.Tensor) -> None:
    base, model = _mask_token_pair()
    assert "encoder_mask_token" in dict(model.named_parameters())
    assert not hasattr(model, "mask_token")  # the decoder inserts none
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    noise = torch.rand(3, 16)
    latent, masking = model.forward_encoder(imgs, 0.75, noise=noise)
    hook.remove()
    assert seen == [(3, 17, 32)] and latent.shape == (3, 17, 32)
    base_latent, _ = base.forward_encoder(imgs, 0.75, noise=noise)
    assert base_latent.shape == (3, 5, 32)
    # A hidden patch's pixels never reach the encoder: the mask token stands in for them.
    hidden = int(masking.mask[0].nonzero()[0])
    r, c = divmod(hidden, 4)
    edited = imgs.clone()
    edited[0, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += 5.0
    assert torch.equal(model.forward_encoder(edited, 0.75, noise=noise)[0], latent)
    out, ref = model(imgs, noise=noise), base(imgs, noise=noise)
    assert out.pred.shape == ref.pred.shape == (3, 16, 192)
    assert torch.equal(out.mask, ref.mask)
    assert not torch.allclose(out.pred, ref.pred, atol=1e-3)
    # With no patch hidden the two paths are the same computation.
    ident = torch.arange(16.0).expand(3, 16)
    a, b = model(imgs, mask_ratio=0.0, noise=ident), base(imgs, mask_ratio=0.0, noise=ident)
    decoder_input = model.forward_encoder(imgs, 0.0, noise=ident)[0]
    assert torch.allclose(decoder_input, base.forward_encoder(imgs, 0.0, noise=ident)[0])
    assert a.loss.item() == b.loss.item() == 0.0


def test_encoder_mask_token_gets_a_gradient(imgs: torch.Tensor) -> None:
    model = MaskedAutoencoder(TINY.replace(encoder_mask_tokens=True)).train()
    out = model(imgs)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert model.encoder_mask_token.grad.norm() > 0
    assert model.num_params()["encoder"] == MaskedAutoencoder(TINY).num_params()["encoder"]
    with pytest.raises(ValueError, match="holds all 1\\+L = 17 tokens, got 5"):
        model.forward_decoder(torch.randn(3, 5, 32), out.ids_restore)
    # Features need no mask token: an encoder-only copy embeds, and refuses masking clearly.
    enc = MaskedAutoencoder(TINY.replace(encoder_mask_tokens=True), with_decoder=False)
    assert enc.embed(imgs).shape == (3, 32)
    with pytest.raises(RuntimeError, match="encoder_mask_tokens needs the MAE decoder"):
        enc.forward_encoder(imgs, 0.75)
