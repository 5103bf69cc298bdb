"""The weight gradient of a linear layer at the MAE's shapes (N rows, in, out): oneDNN copying the
output gradient transposed (current = the old way), copying the smaller operand (swapped,
when out > in: onednn._weight_grad), and MKL (g.T @ x); 2 threads, median of 5 x 30 calls.

    .venv/bin/python bench/results/weight-grad-shapes-2026-12-03.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import time

import torch

from mae_core.onednn import _product

torch.manual_seed(0)
shapes = [
    (1088, 192, 576),
    (1088, 192, 192),
    (1088, 192, 768),
    (1088, 768, 192),
    (4160, 128, 384),
    (4160, 128, 128),
    (4160, 128, 512),
    (4160, 512, 128),
]


def cur(g, x):
    return _product(g.t(), x.t())


def swp(g, x):
    return _product(x.t(), g.t()).t().contiguous()


def mkl(g, x):
    return g.t() @ x


def tm(f, *a, n=30):
    for _ in range(3):
        f(*a)
    ts = []
    for _r in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f(*a)
        ts.append((time.perf_counter() - t0) / n)
    return sorted(ts)[2] * 1e3


for N, i, o in shapes:
    x = torch.randn(N, i)
    g = torch.randn(N, o)
    a, b, c = cur(g, x), swp(g, x), mkl(g, x)
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-4) and torch.allclose(a, c, atol=1e-3, rtol=1e-4)
    t1, t2, t3 = tm(cur, g, x), tm(swp, g, x), tm(mkl, g, x)
    print(
        f"N={N} in={i} out={o}: current {t1:.3f} ms, swapped {t2:.3f} ({t1 / t2:.2f}x), mkl {t3:.3f} (cur/mkl {t3 / t1:.2f}x, swp/mkl {t3 / t2:.2f}x)"
    )
