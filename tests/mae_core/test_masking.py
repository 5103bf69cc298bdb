"""Random masking: the shuffle, its inverse, the count kept, reproducibility."""

from __future__ import annotations

import pytest
import torch

from mae_core import random_masking
from mae_core.masking import num_visible


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_keeps_len_keep_and_ids_restore_inverts_the_shuffle(ratio: float) -> None:
    x = torch.randn(4, 16, 8)
    m = random_masking(x, ratio)
    len_keep = int(16 * (1 - ratio))
    assert m.x_masked.shape == (4, len_keep, 8)
    assert torch.equal((1 - m.mask).sum(1), torch.full((4,), float(len_keep)))
    ids_shuffle = torch.argsort(m.ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :len_keep], m.ids_keep)
    shuffled = torch.gather(x, 1, ids_shuffle[..., None].expand(-1, -1, 8))
    restored = torch.gather(shuffled, 1, m.ids_restore[..., None].expand(-1, -1, 8))
    assert torch.equal(restored, x)
    # The kept tokens are the input's tokens at ids_keep, and exactly those are unmasked.
    assert torch.equal(m.x_masked, torch.gather(x, 1, m.ids_keep[..., None].expand(-1, -1, 8)))
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)


def test_masks_differ_per_sample() -> None:
    m = random_masking(torch.randn(8, 64, 4), 0.75)
    assert len({tuple(row.tolist()) for row in m.mask}) > 1


def test_same_noise_same_mask_and_smallest_noise_kept() -> None:
    x = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    a, b = random_masking(x, 0.75, noise=noise), random_masking(x, 0.75, noise=noise.clone())
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    kept = torch.argsort(noise, dim=1)[:, :4]
    assert torch.equal(a.ids_keep, kept)


def test_same_generator_seed_same_mask() -> None:
    x = torch.randn(2, 16, 4)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(
        random_masking(x, 0.5, generator=g1).mask, random_masking(x, 0.5, generator=g2).mask
    )
    g3 = torch.Generator().manual_seed(8)
    assert not torch.equal(
        random_masking(x, 0.5, generator=g1).mask, random_masking(x, 0.5, generator=g3).mask
    )


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_range_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        random_masking(torch.randn(1, 4, 4), ratio)


def test_noise_of_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"noise must have shape \(N, L\) = \(2, 16\)"):
        random_masking(torch.randn(2, 16, 4), 0.75, noise=torch.rand(2, 15))


def test_len_keep_is_the_official_truncation() -> None:
    assert num_visible(196, 0.75) == 49
    assert num_visible(10, 0.75) == 2  # int(2.5), not round
