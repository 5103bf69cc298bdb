"""Reconstruction targets: the PCA basis fitted on real photo patches, and the way back from
predictions to pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as photos

from mae_core import MaskedAutoencoder
from mae_core.errors import MAEValueError
from mae_core.targets import PatchMoments, fit_pca_basis, fit_pca_target
from mae_core.visualize import preprocess
from tests.reference import TINY, perturb_

P = TINY.patch_size**2 * TINY.in_chans  # 192 values per patch


@pytest.fixture(scope="module")
def photo_imgs() -> torch.Tensor:
    """Four real photos, normalised as the model sees them, 64 px: (4, 3, 64, 64)."""
    from PIL import Image

    model = MaskedAutoencoder(TINY.replace(img_size=64), with_decoder=False)
    shots = (photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket())
    return torch.stack([preprocess(Image.fromarray(s), model) for s in shots])


@pytest.fixture(scope="module")
def photo_patches(photo_imgs: torch.Tensor) -> torch.Tensor:
    """(256, 192): every 8x8 patch of the four photos, in the normalised image's space."""
    model = MaskedAutoencoder(TINY, with_decoder=False)
    return model.patchify(photo_imgs).flatten(0, 1)


def _projected_variance(patches: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(K,) variance of the patches along each unit row of `directions` (K, P)."""
    x = patches.double() - patches.double().mean(0)
    return ((x @ directions.double().T) ** 2).sum(0) / (len(x) - 1)


def test_basis_is_orthonormal_sorted_and_matches_an_svd(photo_patches: torch.Tensor) -> None:
    mean, comps = fit_pca_basis(photo_patches, 16)
    assert mean.shape == (P,) and comps.shape == (16, P)
    assert mean.dtype == comps.dtype == torch.float32
    torch.testing.assert_close(mean, photo_patches.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(comps @ comps.T, torch.eye(16), atol=1e-5, rtol=0)
    var = _projected_variance(photo_patches, comps)
    assert torch.all(var[:-1] >= var[1:])  # largest explained variance first
    # The same variances as numpy's SVD of the centred patches, written independently.
    x = photo_patches.double().numpy()
    sing = np.linalg.svd(x - x.mean(0), compute_uv=False)
    np.testing.assert_allclose(var.numpy(), sing[:16] ** 2 / (len(x) - 1), rtol=1e-4)
    # Signs fixed: the entry of largest magnitude of each component is positive.
    peak = comps.abs().argmax(dim=1)
    assert torch.all(comps[torch.arange(16), peak] > 0)


def test_basis_explains_more_than_random_directions(photo_patches: torch.Tensor) -> None:
    _, comps = fit_pca_basis(photo_patches, 8)
    pca = _projected_variance(photo_patches, comps).sum()
    total = _projected_variance(photo_patches, torch.eye(P)).sum()
    assert pca > 0.8 * total  # photos: a few smooth directions carry most of the variance
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        random, _ = torch.linalg.qr(torch.randn(P, 8, generator=g, dtype=torch.float64))
        assert pca > 3 * _projected_variance(photo_patches, random.T).sum()
    assert pca > 3 * _projected_variance(photo_patches, torch.eye(P)[:8]).sum()  # pixel axes


def test_basis_is_deterministic_and_batching_does_not_matter(photo_patches) -> None:
    a, b = fit_pca_basis(photo_patches, 12), fit_pca_basis(photo_patches.clone(), 12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Another order of the patches, or the patches streamed in uneven batches: the same basis.
    perm = torch.randperm(len(photo_patches), generator=torch.Generator().manual_seed(1))
    shuffled = fit_pca_basis(photo_patches[perm], 12)
    moments = PatchMoments()
    for chunk in (photo_patches[:7], photo_patches[7:100], photo_patches[100:]):
        moments.update(chunk)
    assert moments.count == len(photo_patches)
    streamed = moments.basis(12)
    for other in (shuffled, streamed):
        torch.testing.assert_close(other[0], a[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(other[1], a[1], atol=1e-4, rtol=0)


def test_bad_fits_are_named(photo_patches: torch.Tensor) -> None:
    with pytest.raises(MAEValueError, match=r"must be in 1\.\.192, got 0"):
        fit_pca_basis(photo_patches, 0)
    with pytest.raises(MAEValueError, match=r"must be in 1\.\.192, got 193"):
        fit_pca_basis(photo_patches, 193)
    with pytest.raises(MAEValueError, match="at least 2 patches, got 1"):
        fit_pca_basis(photo_patches[:1], 4)
    with pytest.raises(MAEValueError, match=r"\(M, P\) tensor"):
        fit_pca_basis(photo_patches[None], 4)
    bad = photo_patches.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(MAEValueError, match="NaN"):
        fit_pca_basis(bad, 4)
    moments = PatchMoments().update(photo_patches)
    with pytest.raises(MAEValueError, match="must have 192 values each, got 48"):
        moments.update(photo_patches[:, :48])


def test_fit_pca_target_uses_the_images_patches(photo_imgs: torch.Tensor) -> None:
    model = MaskedAutoencoder(TINY.replace(target="pca", pca_components=10))
    assert not model.has_pca_basis
    batches = [photo_imgs[:1], photo_imgs[1:3], photo_imgs[3:]]
    mean, comps = fit_pca_target(model, iter(batches))
    assert model.has_pca_basis
    assert torch.equal(model.target_pca_mean, mean)
    assert torch.equal(model.target_pca_components, comps)
    # The patches of the normalised image, not per-patch normalised ones.
    patches = model.patchify(photo_imgs).flatten(0, 1)
    ref = fit_pca_basis(patches, 10)
    torch.testing.assert_close(mean, ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(comps, ref[1], atol=1e-4, rtol=0)
    # max_images stops early: the basis of the first two photos only.
    first_two = MaskedAutoencoder(TINY.replace(target="pca", pca_components=10))
    mean2, _ = fit_pca_target(first_two, batches, max_images=2)
    torch.testing.assert_close(mean2, model.patchify(photo_imgs[:2]).flatten(0, 1).mean(0))
    with pytest.raises(MAEValueError, match="for target 'pca'; this model's target is 'norm_pix'"):
        fit_pca_target(MaskedAutoencoder(TINY), batches)


def test_true_coefficients_reconstruct_up_to_the_truncation(photo_imgs: torch.Tensor) -> None:
    """pred = the true coefficients -> pixels = the patch projected on the K components;
    the error is the variance left out, and falls to zero as K reaches P."""
    errors = []
    for k in (4, 16, 64, P):
        model = MaskedAutoencoder(TINY.replace(target="pca", pca_components=k)).eval()
        fit_pca_target(model, [photo_imgs])
        patches = model.patchify(photo_imgs)  # (4, 64, 192)
        coeffs = model.patch_targets(photo_imgs)
        assert coeffs.shape == (4, 64, k)
        pixels = model.pred_to_pixels(coeffs)
        assert pixels.shape == patches.shape
        err = ((pixels.double() - patches.double()) ** 2).mean().item()
        # By hand: the mean squared residual is the variance of the dropped directions.
        x = patches.flatten(0, 1).double()
        eig = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)  # descending
        dropped = eig[k:].sum().item() * (len(x) - 1) / len(x) / P
        assert err == pytest.approx(dropped, rel=1e-3, abs=1e-9)
        errors.append(err)
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[-1] < 1e-9  # all P components: exact (up to float32 rounding)


def test_pred_to_pixels_for_pixel_and_norm_pix(photo_imgs: torch.Tensor) -> None:
    imgs = photo_imgs[:, :, :32, :32]
    pixel = perturb_(MaskedAutoencoder(TINY.replace(target="pixel"))).eval()
    pred = torch.randn(4, 16, P)
    assert pixel.pred_to_pixels(pred) is pred  # pixel targets are pixels already
    norm = perturb_(MaskedAutoencoder(TINY)).eval()
    with pytest.raises(ValueError, match="need imgs and mask"):
        norm.pred_to_pixels(pred)
    # No patch hidden: each patch's own mean and std undo the normalisation exactly.
    targets = norm.patch_targets(imgs)
    back = norm.pred_to_pixels(targets, imgs, torch.zeros(4, 16))
    torch.testing.assert_close(back, norm.patchify(imgs), atol=1e-5, rtol=1e-5)
    # A hidden patch gets its neighbours' statistics, never its own.
    mask = torch.zeros(4, 16)
    mask[:, 5] = 1
    edited = imgs.clone()
    edited[:, :, 8:16, 8:16] = edited[:, :, 8:16, 8:16] * 5 + 3  # patch 5's level and spread
    a = norm.pred_to_pixels(targets, imgs, mask)
    b = norm.pred_to_pixels(targets, edited, mask)
    assert torch.equal(a[:, 5], b[:, 5])
    assert not torch.allclose(a[:, 5], norm.patchify(imgs)[:, 5], atol=1e-3)
