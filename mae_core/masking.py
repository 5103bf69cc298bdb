"""Per-sample random masking by argsort of uniform noise (the paper's Sec. 3)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import MAEValueError


class Masking(NamedTuple):
    x_masked: torch.Tensor  # (N, len_keep, D) the visible tokens, in shuffled order
    mask: torch.Tensor  # (N, L) 0 = kept, 1 = removed, in the original patch order
    ids_restore: torch.Tensor  # (N, L) argsort of ids_shuffle: undoes the shuffle
    ids_keep: torch.Tensor  # (N, len_keep) original indices of the visible tokens


def check_mask_ratio(mask_ratio: float) -> float:
    ratio = float(mask_ratio)
    if not 0.0 <= ratio < 1.0:
        raise MAEValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return ratio


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """`len_keep` as the official code computes it: int(L * (1 - mask_ratio))."""
    return int(num_patches * (1 - check_mask_ratio(mask_ratio)))


def make_noise(
    n: int, num_patches: int, *, device: torch.device | str, generator: torch.Generator | None
) -> torch.Tensor:
    """(N, L) uniform noise; drawn from `generator` (on its own device) when given."""
    if generator is None:
        return torch.rand(n, num_patches, device=device)
    return torch.rand(n, num_patches, generator=generator, device=generator.device).to(device)


def random_masking(
    x: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """Keep a random `len_keep` of the L tokens of each sample.

    x: (N, L, D). Tokens with the smallest noise are kept, so the same `noise` (N, L) or a
    generator in the same state gives the same mask.
    """
    n, length, dim = x.shape
    len_keep = num_visible(length, mask_ratio)
    if noise is None:
        noise = make_noise(n, length, device=x.device, generator=generator)
    elif noise.shape != (n, length):
        raise ValueError(
            f"noise must have shape (N, L) = ({n}, {length}), got {tuple(noise.shape)}"
        )
    noise = noise.to(x.device)

    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, len_keep, D)

    mask = torch.ones(n, length, device=x.device)  # float32 even under autocast
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to the original patch order
    return Masking(x_masked, mask, ids_restore, ids_keep)
