"""Which patches the encoder sees: per-sample random masking (the paper's Sec. 3) and the
other sampling strategies of its ablation (Fig. 6, Table 1(f)).

Every strategy keeps exactly `len_keep = int(L * (1 - mask_ratio))` patches of each sample
(so the encoder batches) and returns the same `Masking` as `random_masking`. Each one is a
function of the (N, L) uniform `noise` alone: give the same `noise`, or a generator in the
same state (it draws the noise), and the mask is the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .errors import MAEValueError

MASK_STRATEGIES = ("random", "block", "grid", "centre")


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


def check_mask_strategy(strategy: str) -> str:
    """`strategy` if it names one of `MASK_STRATEGIES`, else `MAEValueError` listing them."""
    if strategy in MASK_STRATEGIES:
        return strategy
    from .config import did_you_mean  # config imports this module: import at call time

    hint = did_you_mean(str(strategy), MASK_STRATEGIES)
    raise MAEValueError(
        f"unknown mask strategy {strategy!r}{hint}; choose one of: {', '.join(MASK_STRATEGIES)}"
    )


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


def _noise_for(
    x: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """The (N, L) noise a masking of x (N, L, D) uses: `noise` checked, or a fresh draw."""
    n, length, _ = x.shape
    if noise is None:
        noise = make_noise(n, length, device=x.device, generator=generator)
    elif noise.shape != (n, length):
        raise ValueError(
            f"noise must have shape (N, L) = ({n}, {length}), got {tuple(noise.shape)}"
        )
    return noise.to(x.device)


def _apply_shuffle(x: torch.Tensor, ids_shuffle: torch.Tensor, len_keep: int) -> Masking:
    """Keep the first `len_keep` tokens of `ids_shuffle` (N, L) (a permutation per sample)."""
    n, length, dim = x.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, len_keep, D)

    mask = torch.ones(n, length, device=x.device)  # float32 even under autocast
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to the original patch order
    return Masking(x_masked, mask, ids_restore, ids_keep)


def _shuffle_by(rank: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """ids_shuffle (N, L): patches by ascending `rank` (N, L), equal ranks by ascending noise.

    The first len_keep are kept, so a strategy ranks the patches it wants visible lowest,
    and the noise decides at random among the patches of the rank the count cuts through.
    """
    by_noise = torch.argsort(noise, dim=1, stable=True)
    by_rank = torch.argsort(torch.gather(rank, 1, by_noise), dim=1, stable=True)
    return torch.gather(by_noise, 1, by_rank)


def _grid_of(length: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is None:
        side = math.isqrt(length)
        if side * side != length:
            raise MAEValueError(f"{length} patches is not a square grid; pass grid_size=(h, w)")
        return side, side
    h, w = int(grid_size[0]), int(grid_size[1])
    if h * w != length:
        raise MAEValueError(f"grid_size {h}x{w} does not hold the {length} patches of x")
    return h, w


def _rows_cols(grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (L,) of each patch in row-major order."""
    ids = torch.arange(grid[0] * grid[1], device=device)
    return ids // grid[1], ids % grid[1]


# -- random ---------------------------------------------------------------------------------
def random_masking(
    x: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """Keep a random `len_keep` of the L tokens of each sample.

    x: (N, L, D). Tokens with the smallest noise are kept, so the same `noise` (N, L) or a
    generator in the same state gives the same mask. The paper's choice: 75% random masking
    fine-tunes ViT-L to 84.9% on ImageNet-1K (Table 1(f)).
    """
    len_keep = num_visible(x.shape[1], mask_ratio)
    noise = _noise_for(x, noise, generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    return _apply_shuffle(x, ids_shuffle, len_keep)


# -- block-wise ------------------------------------------------------------------------------
# BEiT's settings on its 14x14 grid: blocks of at least 16 patches (scaled here with L),
# aspect ratios in [0.3, 1/0.3].
_BLOCK_MIN_AREA = 16 / 196
_BLOCK_ASPECT = 0.3
# Blocks drawn per sample, a fixed number so that no step waits on the device. Hiding 75%
# of 196 patches takes about 14 (many land on hidden patches); with 48, no sample of 4096
# fell short at 75%; at 90%, one in three fell short, by 3 patches on average (topped up).
_BLOCK_DRAWS = 48


def block_masking(
    x: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grid_size: tuple[int, int] | None = None,
) -> Masking:
    """Hide rectangles of patches: BEiT's block-wise masking (Bao et al. 2021, Algorithm 1).

    x: (N, L, D) on a grid `grid_size` (h, w) (default: square). For each sample,
    rectangles are added until the number to hide is reached: each of area uniform
    between min(L/12.25, what is left) and what is left (BEiT: at least 16 of 196
    patches), aspect ratio log-uniform in [0.3, 1/0.3] (tall and wide equally likely),
    placed uniformly on the grid.
    The last rectangle's overshoot is trimmed at random, and a sample still short after
    48 rectangles is topped up with random patches. The rectangles come from an integer
    hash of each sample's `noise` row, the trim and top-up from the noise itself (a CPU
    and a GPU may round a block's size differently in rare ties).

    MAE paper, Fig. 6 and Table 1(f): block masking fine-tunes ViT-L to 83.9% at 50% and
    82.8% at 75% (random 75%: 84.9%); at 75% the task is too hard and the
    reconstructions blurry.
    """
    length = x.shape[1]
    len_keep = num_visible(length, mask_ratio)
    grid = _grid_of(length, grid_size)
    noise = _noise_for(x, noise, generator)
    hidden_at = _block_draws(noise, grid, length - len_keep)
    # Kept first: patches no block covers, then those of the latest blocks.
    return _apply_shuffle(x, _shuffle_by(-hidden_at.float(), noise), len_keep)


def _block_draws(noise: torch.Tensor, grid: tuple[int, int], num_mask: int) -> torch.Tensor:
    """(N, L) long: the index of the block that first covers each patch (_BLOCK_DRAWS for
    none), blocks added per sample until `num_mask` patches are covered. No host sync."""
    n, length = noise.shape
    h, w = grid
    draws = _hashed_uniforms(noise, 4 * _BLOCK_DRAWS).view(n, _BLOCK_DRAWS, 4)
    u_area, u_aspect, u_top, u_left = draws.unbind(-1)  # each (N, draws)
    log_lo, log_hi = math.log(_BLOCK_ASPECT), math.log(1 / _BLOCK_ASPECT)
    aspect = torch.exp(log_lo + u_aspect * (log_hi - log_lo))  # height / width
    min_area = max(1.0, round(_BLOCK_MIN_AREA * length))
    row_ids = torch.arange(h, device=noise.device)
    col_ids = torch.arange(w, device=noise.device)
    first = torch.full((n, length), _BLOCK_DRAWS, dtype=torch.long, device=noise.device)
    covered = torch.zeros(n, device=noise.device)
    for k in range(_BLOCK_DRAWS):
        left = (num_mask - covered).clamp_min(0)  # (N,) still to hide
        low = left.clamp(max=min_area)
        area = low + u_area[:, k] * (left - low)
        bh = (area * aspect[:, k]).sqrt().round().clamp(1, h)
        bw = (area / aspect[:, k]).sqrt().round().clamp(1, w)
        top = (u_top[:, k] * (h - bh + 1)).floor()
        start = (u_left[:, k] * (w - bw + 1)).floor()
        in_rows = (row_ids >= top[:, None]) & (row_ids < (top + bh)[:, None])  # (N, h)
        in_cols = (col_ids >= start[:, None]) & (col_ids < (start + bw)[:, None])  # (N, w)
        inside = (in_rows[:, :, None] & in_cols[:, None, :]).view(n, length)
        new = inside & (first == _BLOCK_DRAWS) & (left > 0)[:, None]
        first.masked_fill_(new, k)
        covered = covered + new.sum(dim=1)
    return first


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), without overflowing int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _hashed_uniforms(noise: torch.Tensor, count: int) -> torch.Tensor:
    """(N, count) uniforms in [0, 1) that are a function of each row of `noise` (N, L).

    A strategy that needs more random numbers than L (block shapes and places) draws
    them here, so its mask still depends on the noise alone, on any device.
    """
    bits = noise.float().contiguous().view(torch.int32).long() & _M32  # (N, L)
    where = _fmix32(torch.arange(noise.shape[1], device=noise.device) + 1)
    key = _fmix32(_fmix32((bits + where) & _M32).sum(dim=1) & _M32)  # (N,)
    counter = _mul32(torch.arange(count, device=noise.device) + 1, 0x9E3779B9)
    h = _fmix32((key[:, None] + counter) & _M32)  # (N, count)
    return (h >> 8).float() / 2**24  # 24 bits: exact in float32, never 1.0


# -- grid -----------------------------------------------------------------------------------
def grid_masking(
    x: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grid_size: tuple[int, int] | None = None,
) -> Masking:
    """Keep one patch of every 2x2 cell, all at the same offset: the paper's regular grid
    sampling, defined for mask_ratio 0.75 on an even grid.

    x: (N, L, D) on a grid `grid_size` (h, w) (default: square). The offset is random per
    sample: that of the patch with the smallest noise, so each of the four is equally
    likely. MAE paper, Fig. 6 and Table 1(f): grid masking fine-tunes ViT-L to 84.0%
    (random 75%: 84.9%); the task is easier (lower training loss, sharper
    reconstructions) but the representation is worse.
    """
    ratio = check_mask_ratio(mask_ratio)
    length = x.shape[1]
    h, w = _grid_of(length, grid_size)
    check_grid_masking(ratio, (h, w))
    noise = _noise_for(x, noise, generator)
    rows, cols = _rows_cols((h, w), noise.device)
    offset = noise.argmin(dim=1)  # (N,) a patch whose place in its cell is the offset
    off_row, off_col = (offset // w) % 2, (offset % w) % 2
    hidden = (rows % 2 != off_row[:, None]) | (cols % 2 != off_col[:, None])  # (N, L)
    return _apply_shuffle(x, _shuffle_by(hidden.float(), noise), length // 4)


def check_grid_masking(mask_ratio: float, grid_size: tuple[int, int]) -> None:
    """`MAEValueError` naming the fix unless grid masking is defined for this ratio and grid."""
    h, w = grid_size
    if mask_ratio != 0.75:
        raise MAEValueError(
            f"grid masking keeps one patch of every 2x2 cell, i.e. mask_ratio 0.75; got "
            f"{mask_ratio}: use mask_ratio=0.75, or mask strategy 'random' or 'block'"
        )
    if h % 2 or w % 2:
        raise MAEValueError(
            f"grid masking needs an even patch grid (2x2 cells), got {h}x{w}: use an image "
            "size that is an even multiple of the patch size, or another mask strategy"
        )


# -- centre ---------------------------------------------------------------------------------
def centre_masking(
    x: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grid_size: tuple[int, int] | None = None,
) -> Masking:
    """Hide a centred square of patches and keep the border around it.

    x: (N, L, D) on a grid `grid_size` (h, w) (default: square). Patches are hidden by
    their Chebyshev distance to the grid's centre, nearest first: the hidden set is the
    largest centred square that fits the count (even sides on an even grid, odd on an
    odd one), topped up with patches of the ring around it chosen at random by the noise.
    On a non-square grid the square is clipped by the short side. Not in the MAE paper,
    whose Table 1(f) compares random, block and grid sampling; a missing central region
    is the classic inpainting task (Pathak et al. 2016, Context Encoders), here for
    comparison.
    """
    length = x.shape[1]
    len_keep = num_visible(length, mask_ratio)
    h, w = _grid_of(length, grid_size)
    noise = _noise_for(x, noise, generator)
    rows, cols = _rows_cols((h, w), noise.device)
    ring = torch.maximum((rows - (h - 1) / 2).abs(), (cols - (w - 1) / 2).abs())  # (L,)
    # Kept first: the outermost rings.
    return _apply_shuffle(x, _shuffle_by((-ring).expand_as(noise), noise), len_keep)


# -- by name ----------------------------------------------------------------------------------
def sample_mask(
    x: torch.Tensor,
    mask_ratio: float,
    strategy: str = "random",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grid_size: tuple[int, int] | None = None,
) -> Masking:
    """The masking of x (N, L, D) by the strategy named `strategy` (`MASK_STRATEGIES`).

    `grid_size` (h, w) is the patch grid (default: square); random masking ignores it.
    """
    strategy = check_mask_strategy(strategy)
    if strategy == "random":
        return random_masking(x, mask_ratio, noise=noise, generator=generator)
    by_name = {"block": block_masking, "grid": grid_masking, "centre": centre_masking}
    return by_name[strategy](x, mask_ratio, noise=noise, generator=generator, grid_size=grid_size)
