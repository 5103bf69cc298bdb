"""The fused float32 forward (oneDNN's linears) of the default model on its own weights and
on packed copies (`mae_core.onednn.packed_weight`, what `inference_forward` builds for the
server and `mae eval`), 1 math thread, the two alternating round by round in one process,
12 rounds; medians. The script that produced packed-weights-2026-12-03.txt:

    .venv/bin/python bench/results/packed-weights-2026-12-03.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from mae_core import load_model
from mae_core.fused import FusedEncoder
from mae_core.hub import resolve_local

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)
m = load_model(resolve_local("mae/vit-tiny-tinyimagenet", root=ROOT / "models")).eval()
plain = FusedEncoder(m, torch.float32, "onednn")
packed = FusedEncoder(m, torch.float32, "onednn", pack=True)
assert packed.packed
for batch in (1, 8, 17, 64):
    x = torch.randn(batch, 3, 64, 64)
    calls = max(1, 40 // batch)
    t: dict[str, list[float]] = {"plain": [], "packed": []}
    with torch.inference_mode():
        diff = (plain(x) - packed(x)).abs().max().item()
        for r in range(12):
            order = (("plain", plain), ("packed", packed))
            for name, forward in order if r % 2 else order[::-1]:
                t0 = time.perf_counter()
                for _ in range(calls):
                    forward(x)
                t[name].append((time.perf_counter() - t0) / calls)
    p, q = statistics.median(t["plain"]), statistics.median(t["packed"])
    print(
        f"batch {batch}: own weights {p * 1e3:.2f} ms, packed {q * 1e3:.2f} ms, "
        f"own / packed {p / q:.3f}, max abs difference {diff:.1e}"
    )
