"""Feature-extraction throughput against the peers, same weights, inputs and process.

mae_core `forward_features` (no masking) vs timm's ViT loaded from our `save_pretrained`
folder vs transformers' ViTMAEModel at mask ratio 0. (Training: bench/pretrain.py.)

    .venv/bin/python bench/features.py --variant mae_vit_tiny_patch8 --batch 64
    .venv/bin/python bench/features.py --variant mae_vit_base_patch16 --batch 128 --device cuda

Prints a Markdown table: images/s of each, and each peer's time over ours (a ratio above 1
means we are faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

import mae_core


def hf_encoder_fields(cfg: mae_core.MAEConfig) -> dict:
    """The encoder's sizes as transformers' ViT configs name them (ViTMAEConfig, ViTConfig)."""
    return dict(
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.in_chans,
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        layer_norm_eps=1e-6,
    )


def hf_config(cfg: mae_core.MAEConfig, mask_ratio: float) -> ViTMAEConfig:
    return ViTMAEConfig(
        **hf_encoder_fields(cfg),
        decoder_hidden_size=cfg.decoder_embed_dim,
        decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        norm_pix_loss=cfg.norm_pix_loss,
        mask_ratio=mask_ratio,
    )


def timed(
    fns: dict[str, Callable[[], object]], steps: int, warmup: int, device: str
) -> dict[str, float]:
    """Median seconds per call of each function, called in turn (a, b, c, a, b, c, ...):
    drift on a shared machine then hits every implementation alike, and the order they
    are listed in cannot decide a ratio."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", default="mae_vit_tiny_patch8")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    dev = args.device

    torch.manual_seed(0)
    hf = ViTMAEForPreTraining(hf_config(mae_core.variant_config(args.variant), 0.75))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = mae_core.load_model(d)  # the same weights in our model
        ours.save_pretrained(d + "/ours")
        vit = timm.create_model(f"local-dir:{d}/ours", pretrained=True)
    hf_feat = ViTMAEForPreTraining(hf_config(ours.config, 0.0)).vit
    hf_feat.load_state_dict(hf.vit.state_dict())
    for m in (ours, vit, hf_feat):
        m.to(dev)

    cfg = ours.config
    x = torch.randn(args.batch, 3, cfg.img_size, cfg.img_size, device=dev)

    for m in (ours, vit, hf_feat):
        m.eval()
    with torch.inference_mode():
        t = timed(
            {
                "ours": lambda: ours.forward_features(x),
                "timm": lambda: vit.forward_features(x),
                "transformers": lambda: hf_feat(pixel_values=x),
            },
            args.steps,
            args.warmup,
            dev,
        )
    rows = [
        ("features, no masking", "timm VisionTransformer (local-dir)", t["ours"], t["timm"]),
        (
            "features, no masking",
            "transformers ViTMAEModel (ratio 0)",
            t["ours"],
            t["transformers"],
        ),
    ]

    name = (
        torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    head = (
        f"{args.variant}, {cfg.img_size} px, batch {args.batch}, fp32, {name}, "
        f"torch {torch.__version__}, median of {args.steps} interleaved calls after "
        f"{args.warmup} warm-up"
    )
    print(head)
    print("| work | peer | mae_core img/s | peer img/s | peer time / ours |")
    print("| --- | --- | ---: | ---: | ---: |")
    for work, peer, ours_s, peer_s in rows:
        print(
            f"| {work} | {peer} | {args.batch / ours_s:.0f} | {args.batch / peer_s:.0f} | "
            f"{peer_s / ours_s:.2f} |"
        )

    if args.json:
        out = {
            "setup": head,
            "args": vars(args),
            "rows": [
                {"work": w, "peer": p, "ours_img_s": args.batch / o, "peer_img_s": args.batch / q}
                for w, p, o, q in rows
            ],
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
