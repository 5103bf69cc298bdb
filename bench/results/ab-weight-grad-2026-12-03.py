"""A/B of mae_core.onednn._weight_grad inside a real MAE training step (oneDNN linears,
AdamW), the old way (always copy the output gradient transposed) and the new one (copy the
smaller operand) alternating step by step in one process, 15 steps each after 3 warm-up
steps; medians. The script that produced ab-weight-grad-2026-12-03.txt:

    .venv/bin/python bench/results/ab-weight-grad-2026-12-03.py mae_vit_tiny_patch8 64
    .venv/bin/python bench/results/ab-weight-grad-2026-12-03.py mae_vit_tiny_patch4 32
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import mae_core.onednn as o
from mae_core import create_model

new_wg = o._weight_grad


def old_wg(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return o._product(grad.t(), rows.t())


torch.manual_seed(0)
variant, size = sys.argv[1], int(sys.argv[2])
m = create_model(variant, img_size=size).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05)
x = torch.randn(64, 3, size, size)


def step() -> None:
    noise = torch.rand(64, m.config.num_patches)
    with o.onednn_linears(True):
        loss = m(x, mask_ratio=0.75, noise=noise).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


t: dict[str, list[float]] = {"old": [], "new": []}
for _ in range(3):
    step()
for r in range(15):
    order = (("old", old_wg), ("new", new_wg)) if r % 2 == 0 else (("new", new_wg), ("old", old_wg))
    for name, f in order:
        o._weight_grad = f
        t0 = time.perf_counter()
        step()
        t[name].append(time.perf_counter() - t0)
mo, mn = statistics.median(t["old"]), statistics.median(t["new"])
print(
    f"{variant} {size}px batch 64: old {mo * 1e3:.1f} ms, new {mn * 1e3:.1f} ms, old/new {mo / mn:.3f}"
)
