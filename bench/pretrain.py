"""Training-step throughput: mae_core vs transformers' ViTMAEForPreTraining.

Same configuration, same initial weights, same batch, same masking noise, same optimiser
(AdamW 0.9/0.95, the recipe's weight-decay groups; by default the implementation `mae
train` picks for the device, `schedule.adamw_options`, for both), in one process, one
step of each in turn (so neither gains from going first), both in the same precision
(`--dtype`: by default bf16 autocast on CUDA and fp32 on a CPU, as `mae train --precision
auto`). On CUDA the model FLOPs utilisation (MFU) is reported against the device's
measured bf16 matmul peak (an 8192^3 GEMM), not a datasheet number. Ours runs as `mae
train` runs it: in fp32 on a CPU its linear layers go through oneDNN (`mae_core.onednn`,
`--onednn-linears`), and the same run then also times ours with torch's own linears
(`mae_core, torch linears`).

    .venv/bin/python bench/pretrain.py --variant mae_vit_tiny_patch8 --batch 64
    .venv/bin/python bench/pretrain.py --variant mae_vit_tiny_patch8 --batch 64 --dtype bf16
    .venv/bin/python bench/pretrain.py --variant mae_vit_base_patch16 --batch 256 --device cuda

Prints a Markdown table; the last column is transformers' time over ours (above 1: we are
faster).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

# bench/ is on sys.path when a script here runs: share the peer config and the timer
from features import hf_config, timed
from transformers import ViTMAEForPreTraining

import mae_core
from mae_core.config import PRECISIONS
from mae_core.distributed import uses_bf16
from mae_core.onednn import onednn_linears, why_not
from mae_core.schedule import adamw_options, param_groups


def step_flops(cfg: mae_core.MAEConfig, batch: int) -> float:
    """Matmul FLOPs of one training step (forward x 3), counted from the shapes."""
    L, keep = cfg.num_patches, int(cfg.num_patches * (1 - cfg.mask_ratio))

    def blocks(tokens: int, dim: int, depth: int) -> float:
        dense = 2 * tokens * dim * dim * (4 + 2 * cfg.mlp_ratio)  # qkv, proj, mlp
        attn = 2 * 2 * tokens * tokens * dim  # scores and weighted sum
        return depth * (dense + attn)

    fwd = (
        2 * L * cfg.embed_dim * cfg.patch_size**2 * cfg.in_chans  # patch embedding
        + blocks(1 + keep, cfg.embed_dim, cfg.depth)
        + 2 * (1 + keep) * cfg.embed_dim * cfg.decoder_embed_dim
        + blocks(1 + L, cfg.decoder_embed_dim, cfg.decoder_depth)
        + 2 * (1 + L) * cfg.decoder_embed_dim * cfg.patch_size**2 * cfg.in_chans
    )
    return 3 * fwd * batch


def bf16_peak(device: str) -> float:
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", default="mae_vit_tiny_patch8")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile our model (the forward and backward of the step)",
    )
    ap.add_argument(
        "--adamw",
        default="mae",
        help="AdamW implementation(s) for ours, comma-separated: mae (what mae train uses "
        "on the device, the default), default (torch's), for-loop, foreach, fused; several "
        "are timed side by side, interleaved; the peer gets the first",
    )
    ap.add_argument(
        "--dtype",
        choices=PRECISIONS,
        default="auto",
        help="precision of both: auto (bf16 autocast on CUDA, fp32 on a CPU), fp32 or bf16",
    )
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    dev = args.device
    bf16 = uses_bf16(args.dtype, torch.device(dev))  # as `mae train --precision` decides

    torch.manual_seed(0)
    hf = ViTMAEForPreTraining(
        hf_config(cfg := mae_core.variant_config(args.variant), cfg.mask_ratio)
    )
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = mae_core.load_model(d)
    hf.to(dev).train()
    ours.to(dev).train()
    cfg = ours.config
    x = torch.randn(args.batch, 3, cfg.img_size, cfg.img_size, device=dev)
    noise = torch.rand(args.batch, cfg.num_patches, device=dev)
    autocast = torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=bf16)

    impls = {
        "mae": adamw_options(torch.device(dev)),
        "default": {},
        "for-loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }

    dtype = torch.bfloat16 if bf16 else torch.float32
    onednn = why_not(torch.device(dev), dtype, compiled=args.compile) is None

    def stepper(
        model: torch.nn.Module,
        loss_of: Callable[[], torch.Tensor],
        adamw: str = "default",
        linears: bool = False,
    ) -> Callable[[], None]:
        opt = torch.optim.AdamW(
            param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), **impls[adamw]
        )

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast, onednn_linears(linears):
                loss = loss_of()
            loss.backward()
            opt.step()

        return step

    net = torch.compile(ours) if args.compile else ours  # the optimiser keeps ours' params
    adamws = args.adamw.split(",")
    unknown = [a for a in adamws if a not in impls]
    if unknown:
        ap.error(f"--adamw: unknown {unknown}; choose from {', '.join(impls)}")
    ours_steps = {
        "ours" if len(adamws) == 1 else f"ours, AdamW {a}": stepper(
            ours, lambda: net(x, mask_ratio=0.75, noise=noise).loss, a, onednn
        )
        for a in adamws
    }
    if onednn:  # the same run with torch's own linears (mae train --no-onednn-linears)
        ours_steps["ours, torch linears"] = stepper(
            ours, lambda: net(x, mask_ratio=0.75, noise=noise).loss, adamws[0]
        )
    t = timed(
        {
            **ours_steps,
            "transformers": stepper(hf, lambda: hf(pixel_values=x, noise=noise).loss, adamws[0]),
        },
        args.steps,
        args.warmup,
        dev,
    )
    t_ours, t_hf = t[next(iter(ours_steps))], t["transformers"]

    def adamw_name(choice: str) -> str:
        if choice != "mae":
            return choice
        return (
            "fused (mae train's)" if impls["mae"].get("fused") else "torch's default (mae train's)"
        )

    flops = step_flops(cfg, args.batch)
    precision = "bf16 autocast" if bf16 else "fp32"
    if dev.startswith("cuda") and bf16:  # MFU against the bf16 peak only for bf16 work
        peak = bf16_peak(dev)
        name = (
            f"{torch.cuda.get_device_name()}, {precision}, measured bf16 peak "
            f"{peak / 1e12:.0f} TFLOP/s"
        )
    elif dev.startswith("cuda"):
        peak, name = None, f"{torch.cuda.get_device_name()}, {precision}"
    else:
        peak, name = None, f"CPU, {torch.get_num_threads()} threads, {precision}"
    head = (
        f"{args.variant}, {cfg.img_size} px, batch {args.batch}, {name}, torch "
        f"{torch.__version__}{', ours compiled' if args.compile else ''}"
        f"{', ours with oneDNN linears' if onednn else ''}, AdamW {adamw_name(adamws[0])} for "
        f"the peer{' and ours' if len(adamws) == 1 else ''}, median of "
        f"{args.steps} interleaved steps after {args.warmup} warm-up"
    )
    print(head)
    print("| implementation | img/s | TFLOP/s | MFU | transformers time / ours |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = [(name.replace("ours", "mae_core"), t[name]) for name in ours_steps] + [
        ("transformers ViTMAEForPreTraining", t_hf)
    ]
    for label, secs in rows:
        mfu = f"{flops / secs / peak:.1%}" if peak else "-"
        print(
            f"| {label} | {args.batch / secs:.0f} | {flops / secs / 1e12:.2f} | {mfu} "
            f"| {t_hf / secs:.2f} |"
        )

    if args.json:
        out = {
            "setup": head,
            "args": vars(args),
            "img_s": {"ours": args.batch / t_ours, "transformers": args.batch / t_hf},
            "img_s_by_adamw": {name: args.batch / t[name] for name in ours_steps},
            "tflops": {"ours": flops / t_ours / 1e12, "transformers": flops / t_hf / 1e12},
            "mfu": None if not peak else {"ours": flops / t_ours / peak},
            "transformers_over_ours": t_hf / t_ours,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
