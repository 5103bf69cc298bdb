"""Masking: the shuffle, its inverse, the count kept, reproducibility; random masking
unchanged, and the block, grid and centre strategies' shapes."""

from __future__ import annotations

import pytest
import torch

from mae_core import random_masking
from mae_core.errors import MAEValueError
from mae_core.masking import (
    MASK_STRATEGIES,
    centre_masking,
    grid_masking,
    num_visible,
    sample_mask,
)


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


# -- the strategies of the paper's ablation (Fig. 6, Table 1(f)) and centre masking ---------
STRUCTURED = ("block", "grid", "centre")
GRIDS = [(4, 4), (8, 8), (14, 14), (6, 10)]


def _random_masking_before(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """random_masking as it was before the other strategies came: it must not change."""
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore, ids_keep


@pytest.mark.parametrize(("length", "ratio"), [(16, 0.75), (64, 0.5), (196, 0.75), (50, 0.9)])
def test_random_masking_is_unchanged(length: int, ratio: float) -> None:
    x = torch.randn(4, length, 8)
    noise = torch.rand(4, length, generator=torch.Generator().manual_seed(length))
    before = _random_masking_before(x, ratio, noise)
    for now in (
        random_masking(x, ratio, generator=torch.Generator().manual_seed(length)),
        sample_mask(x, ratio, "random", noise=noise),
    ):
        for a, b in zip(now, before, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_random_masking_keeps_what_it_kept_for_a_seed() -> None:
    # Captured from the implementation before the other strategies came.
    m = random_masking(torch.zeros(4, 16, 8), 0.75, generator=torch.Generator().manual_seed(123))
    assert m.ids_keep.tolist() == [[4, 12, 7, 6], [13, 0, 8, 10], [4, 6, 9, 5], [14, 7, 11, 15]]
    m = sample_mask(torch.zeros(2, 64, 4), 0.5, generator=torch.Generator().manual_seed(5))
    assert m.ids_keep[:, :8].tolist() == [
        [8, 22, 32, 42, 18, 37, 12, 25],
        [48, 37, 52, 39, 30, 21, 38, 42],
    ]


def _cases() -> list[tuple[str, tuple[int, int], float]]:
    cases = [("grid", grid, 0.75) for grid in GRIDS]
    for strategy in ("block", "centre"):
        cases += [(strategy, grid, r) for grid in GRIDS for r in (0.0, 0.25, 0.5, 0.75, 0.9)]
    return cases


@pytest.mark.parametrize(("strategy", "grid", "ratio"), _cases())
def test_every_strategy_keeps_len_keep_with_random_maskings_contract(
    strategy: str, grid: tuple[int, int], ratio: float
) -> None:
    n, length, dim = 8, grid[0] * grid[1], 4
    x = torch.randn(n, length, dim)
    m = sample_mask(x, ratio, strategy, grid_size=grid)
    len_keep = int(length * (1 - ratio))
    assert m.x_masked.shape == (n, len_keep, dim)
    assert m.mask.shape == m.ids_restore.shape == (n, length) and m.mask.dtype == torch.float32
    assert m.ids_keep.shape == (n, len_keep)
    assert torch.equal((1 - m.mask).sum(1), torch.full((n,), float(len_keep)))
    ids_shuffle = torch.argsort(m.ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :len_keep], m.ids_keep)
    assert torch.equal(torch.sort(ids_shuffle, dim=1).values, torch.arange(length).expand(n, -1))
    assert torch.equal(m.x_masked, torch.gather(x, 1, m.ids_keep[..., None].expand(-1, -1, dim)))
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)


@pytest.mark.parametrize("strategy", STRUCTURED)
def test_same_noise_or_seed_same_mask(strategy: str) -> None:
    x = torch.randn(8, 64, 4)
    noise = torch.rand(8, 64)
    a = sample_mask(x, 0.75, strategy, noise=noise)
    b = sample_mask(x, 0.75, strategy, noise=noise.clone())
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    # A generator draws the (N, L) noise, as for random masking: the same mask.
    c = sample_mask(x, 0.75, strategy, generator=torch.Generator().manual_seed(4))
    drawn = torch.rand(8, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(c.mask, sample_mask(x, 0.75, strategy, noise=drawn).mask)
    d = sample_mask(x, 0.75, strategy, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(c.mask, d.mask)
    # Each sample's mask depends on its own noise row only.
    one = sample_mask(x[3:4], 0.75, strategy, noise=noise[3:4])
    assert torch.equal(one.mask[0], a.mask[3]) and torch.equal(one.ids_keep[0], a.ids_keep[3])
    # Different samples get different masks.
    assert len({tuple(row.tolist()) for row in a.mask}) > 1


def test_grid_keeps_one_patch_of_every_2x2_cell_at_one_offset() -> None:
    h, w = 8, 10
    m = grid_masking(torch.zeros(64, h * w, 2), 0.75, grid_size=(h, w))
    visible = (m.mask == 0).view(64, h // 2, 2, w // 2, 2)  # (N, cell row, dy, cell col, dx)
    per_cell = visible.sum(dim=(2, 4))  # (N, h/2, w/2)
    assert torch.all(per_cell == 1)
    offsets = set()
    for sample in visible:
        where = sample.permute(0, 2, 1, 3).reshape(-1, 2, 2).nonzero()[:, 1:]  # (cells, 2)
        assert torch.all(where == where[0])  # the same (dy, dx) in every cell
        offsets.add(tuple(where[0].tolist()))
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}  # random per sample


def _components(cells: list[list[bool]]) -> int:
    """Number of 4-connected regions of True cells."""
    h, w = len(cells), len(cells[0])
    seen, count = set(), 0
    for start in ((r, c) for r in range(h) for c in range(w) if cells[r][c]):
        if start in seen:
            continue
        count += 1
        stack = [start]
        seen.add(start)
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < h and 0 <= cc < w and cells[rr][cc] and (rr, cc) not in seen:
                    seen.add((rr, cc))
                    stack.append((rr, cc))
    return count


def _shape_stats(mask: torch.Tensor, side: int) -> tuple[float, float, float]:
    """Mean hidden regions, visible regions and hidden/visible edges per sample."""
    grids = mask.view(-1, side, side).bool()
    hidden = [_components(g.tolist()) for g in grids]
    visible = [_components((~g).tolist()) for g in grids]
    vertical = (grids[:, 1:] != grids[:, :-1]).sum((1, 2))
    horizontal = (grids[:, :, 1:] != grids[:, :, :-1]).sum((1, 2))
    edges = vertical + horizontal
    return sum(hidden) / len(hidden), sum(visible) / len(visible), edges.float().mean().item()


def test_block_hides_a_few_large_regions_where_random_scatters() -> None:
    x = torch.zeros(64, 196, 1)
    g = torch.Generator().manual_seed(0)
    blk50, rnd50 = (
        _shape_stats(sample_mask(x, 0.5, s, generator=g).mask, 14) for s in ("block", "random")
    )
    # Random 50% on 14x14: ~19 hidden regions per image; blocks: ~2.
    assert blk50[0] <= 3 and rnd50[0] >= 12
    assert blk50[2] < 0.4 * rnd50[2]
    blk75, rnd75 = (
        _shape_stats(sample_mask(x, 0.75, s, generator=g).mask, 14) for s in ("block", "random")
    )
    # At 75% random's hidden set joins up too; its visible patches stay scattered (~27).
    assert blk75[1] <= 6 and rnd75[1] >= 20
    assert blk75[2] < 0.5 * rnd75[2]


def test_the_first_block_is_a_solid_rectangle() -> None:
    from mae_core.masking import _block_draws

    first = _block_draws(torch.rand(64, 196), (14, 14), 147).view(64, 14, 14)
    for sample in first:
        rows, cols = (sample == 0).nonzero().unbind(1)
        box = sample[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert torch.all(box == 0)  # nothing else inside its bounding box
        assert box.numel() >= 10  # BEiT's blocks: at least 16 patches of 196 (before rounding)


@pytest.mark.parametrize(
    ("grid", "ratio", "inner"),
    [
        ((14, 14), 0.75, 12),
        ((8, 8), 0.75, 6),
        ((8, 8), 0.5, 4),
        ((4, 4), 0.75, 2),
        ((7, 7), 0.5, 5),
    ],
)
def test_centre_hides_a_centred_square_topped_up_at_its_edge(grid, ratio, inner) -> None:
    h, w = grid
    m = centre_masking(torch.zeros(16, h * w, 1), ratio, grid_size=grid)
    hidden = m.mask.view(16, h, w).bool()
    lo = (h - inner) // 2
    square = torch.zeros(h, w, dtype=torch.bool)
    square[lo : lo + inner, lo : lo + inner] = True
    ring = torch.zeros(h, w, dtype=torch.bool)
    ring[lo - 1 : lo + inner + 1, lo - 1 : lo + inner + 1] = True
    ring &= ~square
    extra = int(h * w - int(h * w * (1 - ratio))) - inner * inner
    assert 0 <= extra < int(ring.sum())
    for sample in hidden:
        assert torch.all(sample[square])  # the whole centred square is hidden
        assert int(sample[ring].sum()) == extra  # the rest on the ring just outside it
        assert not torch.any(sample & ~square & ~ring)  # and nothing further out
    if extra:  # which ring patches are hidden is random
        assert len({tuple(s.flatten().tolist()) for s in hidden}) > 1


def test_block_and_centre_at_ratio_zero_keep_everything() -> None:
    for strategy in ("block", "centre"):
        m = sample_mask(torch.randn(3, 16, 2), 0.0, strategy)
        assert m.mask.sum() == 0 and m.x_masked.shape == (3, 16, 2)


def test_mask_strategies_are_named() -> None:
    assert MASK_STRATEGIES == ("random", "block", "grid", "centre")
    with pytest.raises(MAEValueError, match=r"unknown mask strategy 'blocks' \(did you mean block"):
        sample_mask(torch.randn(1, 16, 2), 0.75, "blocks")
    with pytest.raises(ValueError, match="choose one of: random, block, grid, centre"):
        sample_mask(torch.randn(1, 16, 2), 0.75, "checkerboard")


def test_grid_masking_refuses_other_ratios_and_odd_grids() -> None:
    with pytest.raises(MAEValueError, match=r"mask_ratio 0\.75; got 0\.5: use mask_ratio=0\.75"):
        sample_mask(torch.randn(1, 16, 2), 0.5, "grid")
    with pytest.raises(MAEValueError, match=r"even patch grid \(2x2 cells\), got 7x7"):
        sample_mask(torch.randn(1, 49, 2), 0.75, "grid")
    with pytest.raises(MAEValueError, match=r"even patch grid \(2x2 cells\), got 6x5"):
        sample_mask(torch.randn(1, 30, 2), 0.75, "grid", grid_size=(6, 5))


@pytest.mark.parametrize("strategy", STRUCTURED)
def test_structured_strategies_refuse_bad_inputs(strategy: str) -> None:
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        sample_mask(torch.randn(1, 16, 4), 1.0, strategy)
    with pytest.raises(ValueError, match=r"noise must have shape \(N, L\) = \(2, 16\)"):
        sample_mask(torch.randn(2, 16, 4), 0.75, strategy, noise=torch.rand(2, 15))
    with pytest.raises(MAEValueError, match="12 patches is not a square grid"):
        sample_mask(torch.randn(1, 12, 4), 0.75, strategy)
    with pytest.raises(MAEValueError, match="grid_size 4x4 does not hold the 12 patches"):
        sample_mask(torch.randn(1, 12, 4), 0.75, strategy, grid_size=(4, 4))
