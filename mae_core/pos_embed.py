"""Fixed 2-D sin-cos position tables (the MAE paper's, as in the official code).

The official code builds the grid with `np.meshgrid(grid_w, grid_h)`, so the first half of
every embedding encodes the column (w) and the second half the row (h). We keep that order
exactly: imported official weights and their decoders depend on it.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions: (M,) -> (M, dim): [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-2k/dim)."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int | tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """The (1 + H*W, dim) table, row 0 all zeros for the class token when `cls_token`.

    Patches are numbered row-major (index = h * W + w), the order `patchify` and timm's
    `PatchEmbed` use. Computed in float64, returned as float32.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    hh, ww = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )  # (H, W) each
    table = torch.cat([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], dim=1)  # (H*W, dim)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.to(torch.float32)
