"""Reference pieces the tests share: the house tiny config, an independent sin-cos table,
and a way to make weights non-trivial."""

from __future__ import annotations

import math

import numpy as np
import torch

from mae_core.config import MAEConfig

# The house tiny config: 32 px, patch 8 (16 patches), width 32, depth 2.
TINY = MAEConfig(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=2,
    decoder_num_heads=2,
    variant="custom",
)


def reference_table(dim: int, gh: int, gw: int) -> np.ndarray:
    """Written from the formula, one entry at a time: the first dim/2 columns encode the
    column index w, the last dim/2 the row index h (the official meshgrid(w, h) order); in
    each half, k < dim/4 is sin(pos / 10000^(4k/dim)) and the next dim/4 the cosines."""
    quarter = dim // 4
    out = np.zeros((1 + gh * gw, dim))
    for h in range(gh):
        for w in range(gw):
            row = 1 + h * gw + w
            for half, pos in ((0, w), (1, h)):
                for k in range(quarter):
                    freq = 1.0 / 10000 ** (k / quarter)
                    out[row, half * 2 * quarter + k] = math.sin(pos * freq)
                    out[row, half * 2 * quarter + quarter + k] = math.cos(pos * freq)
    return out


def perturb_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Make every parameter non-trivial (LayerNorm weights off 1, biases off 0), so that
    parity tests cannot pass on a mapping that confuses a weight with its identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module
