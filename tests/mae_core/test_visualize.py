"""Reconstruction panels: layout, reproducibility, and no leak of hidden pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from mae_core import MaskedAutoencoder
from mae_core.targets import fit_pca_target
from mae_core.visualize import (
    GREY,
    Panels,
    interpolate_patch_stats,
    panels_figure,
    preprocess,
    reconstruction_panels,
    save_panels,
)
from tests.reference import TINY, perturb_

P = TINY.patch_size
GRID = TINY.grid_size
L = TINY.num_patches


def patch_pixels(mask: np.ndarray) -> np.ndarray:
    """(L,) mask -> (H, W) bool, True on hidden pixels."""
    return mask.reshape(GRID).astype(bool).repeat(P, 0).repeat(P, 1)


@pytest.fixture
def astronaut() -> Image.Image:
    return Image.fromarray(photos.astronaut())


@pytest.fixture
def chelsea_tensor(tiny_model: MaskedAutoencoder) -> torch.Tensor:
    return preprocess(Image.fromarray(photos.chelsea()), tiny_model)


def test_panels_shapes_and_dtypes(tiny_model: MaskedAutoencoder, astronaut: Image.Image) -> None:
    pan = reconstruction_panels(tiny_model, astronaut, mask_ratio=0.75, seed=3)
    assert isinstance(pan, Panels)
    for pic in (pan.original, pan.masked, pan.reconstruction, pan.pasted):
        assert pic.shape == (32, 32, 3) and pic.dtype == np.uint8
    assert pan.mask.shape == (L,) and set(np.unique(pan.mask)) <= {0, 1}
    assert pan.patch_error.shape == (L,) and np.isfinite(pan.patch_error).all()
    assert int((pan.mask == 0).sum()) == int(L * (1 - 0.75))
    # The model's loss is the mean patch error over the hidden patches.
    assert pan.loss == pytest.approx(float(pan.patch_error[pan.mask == 1].mean()), rel=1e-5)
    assert (pan.mask_ratio, pan.seed) == (0.75, 3)
    assert "interpolated" in pan.caption and "no hidden pixel" in pan.caption


def test_masked_and_pasted_keep_visible_pixels(
    tiny_model: MaskedAutoencoder, astronaut: Image.Image
) -> None:
    pan = reconstruction_panels(tiny_model, astronaut, mask_ratio=0.5, seed=1)
    hidden = patch_pixels(pan.mask)
    assert np.array_equal(pan.pasted[~hidden], pan.original[~hidden])
    assert np.array_equal(pan.pasted[hidden], pan.reconstruction[hidden])
    assert np.array_equal(pan.masked[~hidden], pan.original[~hidden])
    assert (pan.masked[hidden] == GREY).all()


def test_rgba_and_grey_photos_convert(tiny_model: MaskedAutoencoder) -> None:
    grey = Image.fromarray(photos.camera())  # mode "L", 512 x 512
    rgba = Image.fromarray(photos.chelsea()).convert("RGBA")  # not square
    for image in (grey, rgba):
        assert reconstruction_panels(tiny_model, image).original.shape == (32, 32, 3)


def test_seed_reproducible(tiny_model: MaskedAutoencoder, chelsea_tensor: torch.Tensor) -> None:
    a = reconstruction_panels(tiny_model, chelsea_tensor, seed=7)
    b = reconstruction_panels(tiny_model, chelsea_tensor, seed=7)
    for name in ("original", "masked", "reconstruction", "pasted", "mask", "patch_error"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.loss == b.loss
    c = reconstruction_panels(tiny_model, chelsea_tensor, seed=8)
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_no_hidden_pixel_leaks(norm_pix: bool, chelsea_tensor: torch.Tensor) -> None:
    model = perturb_(MaskedAutoencoder(TINY.replace(norm_pix_loss=norm_pix))).eval()
    before = reconstruction_panels(model, chelsea_tensor, mask_ratio=0.75, seed=0)
    k = int(np.flatnonzero(before.mask)[0])  # a hidden patch
    r, c = divmod(k, GRID[1])
    changed = chelsea_tensor.clone()
    # New mean and spread for that patch: its true statistics, if used, would show.
    changed[:, r * P : (r + 1) * P, c * P : (c + 1) * P] = (
        torch.randn(3, P, P, generator=torch.Generator().manual_seed(1)) * 3.0 + 2.0
    )
    after = reconstruction_panels(model, changed, mask_ratio=0.75, seed=0)
    assert np.array_equal(before.mask, after.mask)
    assert np.array_equal(before.reconstruction, after.reconstruction)
    assert np.array_equal(before.pasted, after.pasted)
    assert np.array_equal(before.masked, after.masked)
    assert not np.array_equal(before.original, after.original)
    assert before.patch_error[k] != after.patch_error[k]
    assert before.loss != after.loss


def test_visible_patches_use_their_own_statistics(chelsea_tensor: torch.Tensor) -> None:
    """Changing a visible patch changes its own reconstruction (its stats are known)."""
    model = perturb_(MaskedAutoencoder(TINY)).eval()
    before = reconstruction_panels(model, chelsea_tensor, seed=0)
    k = int(np.flatnonzero(before.mask == 0)[0])
    r, c = divmod(k, GRID[1])
    changed = chelsea_tensor.clone()
    changed[:, r * P : (r + 1) * P, c * P : (c + 1) * P] += 1.0
    after = reconstruction_panels(model, changed, seed=0)
    sl = (slice(r * P, (r + 1) * P), slice(c * P, (c + 1) * P))
    assert not np.array_equal(before.reconstruction[sl], after.reconstruction[sl])


class OracleMAE(MaskedAutoencoder):
    """Predicts the true target of every patch: isolates the un-normalisation."""

    def forward(self, imgs, *args, **kwargs):  # type: ignore[override]
        out = super().forward(imgs, *args, **kwargs)
        return out._replace(pred=self.patch_targets(imgs))


def test_oracle_prediction_restores_the_image(chelsea_tensor: torch.Tensor) -> None:
    pan = reconstruction_panels(OracleMAE(TINY).eval(), chelsea_tensor, mask_ratio=0.5, seed=0)
    hidden = patch_pixels(pan.mask)
    diff = np.abs(pan.reconstruction.astype(int) - pan.original.astype(int))
    assert diff[~hidden].max() <= 1  # visible patches: their own statistics, exact
    # Hidden patches: right shape, estimated level and contrast; close but not exact.
    assert 0 < diff[hidden].mean() < 40
    assert np.abs(pan.patch_error).max() < 1e-10


def test_interpolate_ramp_between_neighbours() -> None:
    grid = (3, 3)
    ramp = torch.arange(3, dtype=torch.float32).repeat(3)  # value = column index
    mask = torch.ones(9)
    mask[[3, 5]] = 0  # visible: (1, 0) = 0.0 and (1, 2) = 2.0
    out = interpolate_patch_stats(ramp, mask, grid)
    assert out[4].item() == pytest.approx(1.0)  # equidistant from both
    assert 0.0 < out[1].item() < 2.0
    assert out[3].item() == 0.0 and out[5].item() == 2.0


def test_interpolate_keeps_visible_and_handles_columns() -> None:
    grid = (4, 4)
    cols = torch.arange(4, dtype=torch.float64).repeat(4)
    values = torch.stack([cols, 10 + cols], dim=1)  # (L, 2): two statistics at once
    mask = (torch.rand(16, generator=torch.Generator().manual_seed(0)) < 0.75).float()
    mask[[0, 15]] = 0
    out = interpolate_patch_stats(values, mask, grid, k=4)
    vis = mask == 0
    assert torch.equal(out[vis], values[vis])
    # Convex weights: every hidden value lies within the visible values' range.
    for j in range(2):
        lo, hi = values[vis, j].min(), values[vis, j].max()
        assert ((out[:, j] >= lo) & (out[:, j] <= hi)).all()
    # Nearest neighbours first: a hidden patch next to a visible one leans towards it.
    assert not torch.equal(out, values)


def test_interpolate_single_visible() -> None:
    values = torch.randn(16, 2)
    mask = torch.ones(16)
    mask[6] = 0
    out = interpolate_patch_stats(values, mask, (4, 4))
    assert torch.allclose(out, values[6].expand(16, 2))
    with pytest.raises(ValueError, match="no visible"):
        interpolate_patch_stats(values, torch.ones(16), (4, 4))


def test_pixel_target_model(chelsea_tensor: torch.Tensor) -> None:
    model = perturb_(MaskedAutoencoder(TINY.replace(norm_pix_loss=False))).eval()
    pan = reconstruction_panels(model, chelsea_tensor, seed=2)
    with torch.inference_mode():
        out = model(
            chelsea_tensor[None], mask_ratio=0.75, generator=torch.Generator().manual_seed(2)
        )
    assert np.array_equal(pan.mask, out.mask[0].numpy().astype(np.uint8))
    recon = model.unpatchify(out.pred)[0]
    mean, std = torch.tensor(TINY.mean)[:, None, None], torch.tensor(TINY.std)[:, None, None]
    expect = ((recon * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    assert np.array_equal(pan.reconstruction, expect.numpy())
    assert "pixel-target" in pan.caption


def test_figure_and_png_round_trip(tiny_model: MaskedAutoencoder, astronaut, tmp_path) -> None:
    pan = reconstruction_panels(tiny_model, astronaut)
    fig = panels_figure(pan)
    assert fig.mode == "RGB" and fig.width >= 4 * 256 and fig.height >= 256
    plain = panels_figure(pan, labels=False)
    assert plain.height < fig.height
    path = save_panels(pan, tmp_path / "deep" / "panels.png")
    with Image.open(path) as back:
        assert back.format == "PNG"
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(fig))
    # The upscaled original panel, sampled at each pixel's centre, is the original.
    scale = 256 // 32
    x0, y0 = 8, 8 + 20
    crop = np.asarray(fig)[y0 : y0 + 256 : scale, x0 : x0 + 256 : scale]
    assert np.array_equal(crop, pan.original)


def test_bad_inputs(tiny_model: MaskedAutoencoder, chelsea_tensor: torch.Tensor) -> None:
    encoder_only = MaskedAutoencoder(TINY, with_decoder=False)
    with pytest.raises(ValueError, match="decoder"):
        reconstruction_panels(encoder_only, chelsea_tensor)
    with pytest.raises(ValueError, match="mask_ratio"):
        reconstruction_panels(tiny_model, chelsea_tensor, mask_ratio=1.0)
    with pytest.raises(ValueError, match="no visible patch"):
        reconstruction_panels(tiny_model, chelsea_tensor, mask_ratio=0.99)  # int(16*0.01) = 0
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        reconstruction_panels(tiny_model, chelsea_tensor[None])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        reconstruction_panels(tiny_model, chelsea_tensor[:, :30, :30])


def test_panels_follow_the_mask_strategy(chelsea_tensor: torch.Tensor) -> None:
    model = perturb_(MaskedAutoencoder(TINY.replace(mask_strategy="grid"))).eval()
    pan = reconstruction_panels(model, chelsea_tensor, seed=4)  # the config's strategy
    visible = (pan.mask == 0).reshape(GRID[0] // 2, 2, GRID[1] // 2, 2).sum(axis=(1, 3))
    assert (visible == 1).all() and pan.mask_strategy == "grid"
    assert "grid masking, mask ratio 0.75, seed 4" in pan.caption
    centre = reconstruction_panels(model, chelsea_tensor, seed=4, mask_strategy="centre")
    inner = centre.mask.reshape(GRID)[1:3, 1:3]  # the 2x2 centre of the 4x4 grid
    assert inner.all() and int(centre.mask.sum()) == 12 and centre.mask_strategy == "centre"
    again = reconstruction_panels(model, chelsea_tensor, seed=4, mask_strategy="centre")
    assert np.array_equal(centre.mask, again.mask) and centre.loss == again.loss
    with pytest.raises(ValueError, match="unknown mask strategy 'square'"):
        reconstruction_panels(model, chelsea_tensor, mask_strategy="square")


def test_random_panels_caption_unchanged(tiny_model, chelsea_tensor: torch.Tensor) -> None:
    pan = reconstruction_panels(tiny_model, chelsea_tensor, seed=1)
    assert pan.mask_strategy == "random"
    assert pan.caption.startswith("12/16 patches hidden (mask ratio 0.75, seed 1); ")


# -- every target maps back to pixels through the model's pred_to_pixels -------------------
def _pca(cls: type[MaskedAutoencoder], image: torch.Tensor, k: int) -> MaskedAutoencoder:
    model = perturb_(cls(TINY.replace(target="pca", pca_components=k))).eval()
    fit_pca_target(model, [image[None]])
    return model


@pytest.mark.parametrize("k", [8, P * P * 3])
def test_pca_oracle_restores_the_image_up_to_the_truncation(
    chelsea_tensor: torch.Tensor, k: int
) -> None:
    pan = reconstruction_panels(_pca(OracleMAE, chelsea_tensor, k), chelsea_tensor, seed=0)
    diff = np.abs(pan.reconstruction.astype(int) - pan.original.astype(int))
    if k == P * P * 3:  # the full basis: exact, hidden patches included (no statistics needed)
        assert diff.max() <= 1
    else:  # 8 of 192 directions: a blurred but recognisable picture
        assert 1 < diff.mean() < 25
    assert np.abs(pan.patch_error).max() < 1e-8  # the oracle's coefficients are the targets
    assert "PCA-target model" in pan.caption and f"{k} coefficients" in pan.caption


def test_pca_panels_show_no_hidden_pixel(chelsea_tensor: torch.Tensor) -> None:
    model = _pca(MaskedAutoencoder, chelsea_tensor, 16)
    before = reconstruction_panels(model, chelsea_tensor, seed=0)
    k = int(np.flatnonzero(before.mask)[0])
    r, c = divmod(k, GRID[1])
    changed = chelsea_tensor.clone()
    changed[:, r * P : (r + 1) * P, c * P : (c + 1) * P] += 2.0
    after = reconstruction_panels(model, changed, seed=0)
    assert np.array_equal(before.reconstruction, after.reconstruction)
    assert before.patch_error[k] != after.patch_error[k]
    assert before.patch_error.shape == (L,)
    assert before.loss == pytest.approx(float(before.patch_error[before.mask == 1].mean()))


def test_encoder_mask_token_panels_show_no_hidden_pixel(chelsea_tensor: torch.Tensor) -> None:
    model = perturb_(MaskedAutoencoder(TINY.replace(encoder_mask_tokens=True))).eval()
    before = reconstruction_panels(model, chelsea_tensor, seed=0)
    k = int(np.flatnonzero(before.mask)[0])
    r, c = divmod(k, GRID[1])
    changed = chelsea_tensor.clone()
    changed[:, r * P : (r + 1) * P, c * P : (c + 1) * P] = 3.0
    after = reconstruction_panels(model, changed, seed=0)
    assert np.array_equal(before.reconstruction, after.reconstruction)
    assert "interpolated" in before.caption


class DoublingMAE(MaskedAutoencoder):
    """Maps predictions to pixels its own way: shows the panels ask the model."""

    def pred_to_pixels(self, pred, imgs=None, mask=None):  # type: ignore[override]
        return super().pred_to_pixels(pred, imgs, mask) * 0.0 + 2.0


def test_panels_take_pixels_from_the_model(chelsea_tensor: torch.Tensor) -> None:
    model = DoublingMAE(TINY.replace(target="pixel")).eval()
    pan = reconstruction_panels(model, chelsea_tensor, seed=0)
    mean, std = np.array(TINY.mean), np.array(TINY.std)
    expect = np.round(np.clip(2.0 * std + mean, 0, 1) * 255).astype(np.uint8)
    assert (pan.reconstruction == expect).all()
