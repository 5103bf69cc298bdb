"""What the decoder learns to predict for a hidden patch, and the way back to pixels.

The paper's ablation of reconstruction targets (Table 1(d)) compares the normalised image's
pixels ("pixel"), the same pixels normalised by each patch's own mean and std ("norm_pix",
its default) and the patch's coefficients in a PCA basis ("pca": the paper keeps the 96
largest components of a 16x16x3 patch). Here the PCA basis is fitted once, on patches of
training images exactly as the model sees them (the normalised image, not per-patch
normalised), and stored with the decoder weights.

- `fit_pca_basis(patches, k)`: (M, P) patches -> mean (P,), components (K, P).
- `PatchMoments`: the same fit from batches streamed through `update`, for data that does
  not fit in memory at once.
- `fit_pca_target(model, batches)`: the fit from batches of images, set on the model.
- `interpolate_patch_stats`: the per-patch mean/std a norm-pix picture needs for patches
  whose pixels it must not look at.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from .errors import MAEError, MAEValueError

if TYPE_CHECKING:
    from .model import MaskedAutoencoder

TARGETS = ("norm_pix", "pixel", "pca")
NORM_PIX_EPS = 1.0e-6  # added to the patch variance, as in the official code
NEIGHBOURS = 4  # visible patches a hidden patch's statistics are interpolated from


class PCABasisMissing(MAEError, RuntimeError):
    """A "pca"-target model asked for targets (a loss, a picture) before it has a basis."""


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """patches (..., P) -> mean (..., 1), std (..., 1): the statistics "norm_pix" divides
    out (unbiased variance + `NORM_PIX_EPS`, as in the official code)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + NORM_PIX_EPS) ** 0.5


# -- PCA -------------------------------------------------------------------------------
class PatchMoments:
    """Mean and scatter matrix of patches seen in batches, accumulated in float64.

    Batches are merged with the pairwise update of Chan et al., so the result does not
    depend on how the patches were split into batches (up to rounding) and no batch is
    ever centred on a stale mean.
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size  # P, fixed by the first batch when not given
        self.count = 0
        self.mean: torch.Tensor | None = None  # (P,) float64
        self.scatter: torch.Tensor | None = None  # (P, P) float64, sum of centred outer products

    def update(self, patches: torch.Tensor) -> PatchMoments:
        """Add patches (M, P) (any float dtype, any device; fitted on the CPU). Returns self."""
        x = _check_patches(patches, self.size).detach().to("cpu", torch.float64)
        self.size = x.shape[1]
        m = x.shape[0]
        if m == 0:
            return self
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        scatter_b = xc.T @ xc  # (P, P)
        if self.mean is None or self.scatter is None:
            self.count, self.mean, self.scatter = m, mean_b, scatter_b
            return self
        n = self.count + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / n)
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.count * m / n)
        self.count = n
        return self

    def covariance(self) -> torch.Tensor:
        """(P, P) float64 sample covariance of the patches seen."""
        if self.scatter is None or self.count < 2:
            raise MAEValueError(f"a PCA basis needs at least 2 patches, got {self.count}")
        return self.scatter / (self.count - 1)

    def basis(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `k` principal directions: mean (P,) and components (K, P), float32.

        Components are orthonormal rows sorted by explained variance (largest first), each
        signed so that its entry of largest magnitude is positive: the same patches give
        the same basis, bit for bit, on any run.
        """
        cov = self.covariance()
        size = cov.shape[0]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
            raise MAEValueError(f"k (pca_components) must be in 1..{size}, got {k!r}")
        _values, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues, columns
        components = vectors.flip(dims=(1,))[:, :k].T.contiguous()  # (K, P), largest first
        # An eigenvector's sign is arbitrary; fix it so the basis is reproducible.
        peak = components.abs().argmax(dim=1, keepdim=True)  # (K, 1)
        signs = torch.sign(components.gather(1, peak))  # (K, 1), never 0 for a unit vector
        components = components * signs
        assert self.mean is not None
        return self.mean.to(torch.float32), components.to(torch.float32)


def fit_pca_basis(patches: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """patches (M, P), M >= 2 -> mean (P,), components (K, P): the `k` principal directions
    (float64 fit, float32 result, orthonormal rows, sorted by explained variance, signs
    fixed; see `PatchMoments.basis`)."""
    return PatchMoments().update(patches).basis(k)


def fit_pca_target(
    model: MaskedAutoencoder, batches: Iterable[torch.Tensor], max_images: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the basis of a "pca"-target `model` on image batches and set it on the model.

    batches: normalised images (N, C, H, W), the tensors the model is trained on (every
    patch of each image is used); `max_images` stops after that many. The basis has
    `model.config.pca_components` components. Returns (mean (P,), components (K, P)).
    """
    if model.config.target != "pca":
        raise MAEValueError(
            f"fit_pca_target is for target 'pca'; this model's target is {model.config.target!r}"
        )
    moments = PatchMoments(model.config.patch_size**2 * model.config.in_chans)
    seen = 0
    for imgs in batches:
        if max_images is not None:
            imgs = imgs[: max_images - seen]
        model.check_images(imgs)
        moments.update(model.patchify(imgs).flatten(0, 1))  # (N*L, P)
        seen += imgs.shape[0]
        if max_images is not None and seen >= max_images:
            break
    mean, components = moments.basis(model.config.pca_components)
    model.set_pca_basis(mean, components)
    return mean, components


def _check_patches(patches: torch.Tensor, size: int | None) -> torch.Tensor:
    if not isinstance(patches, torch.Tensor) or patches.ndim != 2:
        shape = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches)
        raise MAEValueError(f"patches must be a (M, P) tensor, got {shape}")
    if not patches.is_floating_point():
        raise MAEValueError(f"patches must be floats, got dtype {patches.dtype}")
    if size is not None and patches.shape[1] != size:
        raise MAEValueError(f"patches must have {size} values each, got {patches.shape[1]}")
    if not bool(torch.isfinite(patches).all()):
        raise MAEValueError("patches hold NaN or infinite values")
    return patches


# -- norm-pix pictures -----------------------------------------------------------------
def interpolate_patch_stats(
    values: torch.Tensor, mask: torch.Tensor, grid_size: tuple[int, int], k: int = NEIGHBOURS
) -> torch.Tensor:
    """Replace the hidden entries of `values` by inverse-distance-weighted means of visible ones.

    values: (L, *) per-patch statistics in row-major grid order; mask: (L,) 1 = hidden;
    grid_size: (h, w) with h * w = L. Each hidden patch gets sum(v_j / d_j) / sum(1 / d_j)
    over its `k` nearest visible patches j (Euclidean distance d_j on the grid, ties broken
    by patch index). Visible entries come back unchanged. Returns a new (L, *) tensor.
    """
    h, w = grid_size
    hidden = mask.reshape(-1).bool().to(values.device)
    if hidden.numel() != h * w or values.shape[0] != h * w:
        raise ValueError(f"values {tuple(values.shape)} and mask must have h*w = {h * w} rows")
    if bool(hidden.all()):
        raise ValueError("no visible patch to interpolate from")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(values.device, torch.float64)
    vis_idx, hid_idx = (~hidden).nonzero().flatten(), hidden.nonzero().flatten()
    out = values.clone()
    if hid_idx.numel() == 0:
        return out
    dist = torch.cdist(pos[hid_idx], pos[vis_idx])  # (n_hidden, n_visible), all >= 1
    # A stable sort makes the choice among equally distant neighbours deterministic.
    near_d, near = dist.sort(dim=1, stable=True)
    kk = min(k, vis_idx.numel())
    weights = 1.0 / near_d[:, :kk]  # (n_hidden, kk)
    weights = weights / weights.sum(dim=1, keepdim=True)
    neighbour_vals = values[vis_idx[near[:, :kk]]].to(torch.float64)  # (n_hidden, kk, *)
    weights = weights.reshape(*weights.shape, *([1] * (values.ndim - 1)))
    out[hid_idx] = (weights * neighbour_vals).sum(dim=1).to(values.dtype)
    return out
