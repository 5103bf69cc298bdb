"""JPEG decoding for serving, measured before it is built: the server's path against
torchvision's batched `decode_jpeg`, on the GPU (nvJPEG) when there is one.

- `server`: what `mae serve` does per image on the CPU: Pillow with DCT-scaled ("draft")
  decoding to about the size needed (`service.imaging.decode`), then `center_square` and
  `eval_transform` (resize the shorter side, centre-crop, normalise), stacked.
- `torchvision-<device>`: `torchvision.io.decode_jpeg` on the whole batch at full size on
  DEVICE, then the same resize, crop and normalise there (torchvision's tensor ops), and
  for the CPU device the batch stays on the CPU.

Each row: images/s of the whole path from JPEG bytes to the model's input batch, and the
largest and mean absolute difference from the server's tensors (normalised units; the
two decoders' IDCTs and the draft scaling differ, so the tensors are close, not equal).
The paths are interleaved round by round, so the machine's state cannot favour one. A GPU
decode setting for `mae serve` is worth building only where this shows the GPU path ahead
at the server's batch sizes, including the copy of the bytes to the device.

    .venv/bin/python bench/decode.py --batch 1,16,64 --rounds 5
    .venv/bin/python bench/decode.py --device cuda --img-size 224 --json bench/results/gpu-decode.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import skimage.data
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae_core.config import MAEConfig
from mae_core.data import eval_transform
from service.imaging import center_square, decode

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")  # 300x451 to 512x512 RGB, as serve.py
JPEG_QUALITY = 90
MAX_BYTES, MAX_PIXELS = 20 << 20, 40_000_000


def jpegs(count: int, upscale: float) -> list[bytes]:
    """`count` JPEGs cycling through the sample photos, each scaled by `upscale` first (2:
    about 1000 px, a phone photo's scale-down is where draft decoding pays)."""
    out = []
    for i in range(count):
        img = Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()).convert("RGB")
        if upscale != 1:
            img = img.resize((round(img.width * upscale), round(img.height * upscale)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


def server_path(data: list[bytes], cfg: MAEConfig) -> torch.Tensor:
    short = math.floor(cfg.img_size / cfg.crop_pct)
    images = [decode(b, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, min_side=short) for b in data]
    return torch.stack([eval_transform(center_square(img), cfg) for img in images])


def torchvision_path(data: list[bytes], cfg: MAEConfig, device: torch.device) -> torch.Tensor:
    import torchvision.transforms.v2.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    short = math.floor(cfg.img_size / cfg.crop_pct)
    mean = torch.tensor(cfg.mean, device=device).view(3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(3, 1, 1)
    interp = F.InterpolationMode(cfg.interpolation)
    out = []
    for img in decoded:
        img = F.resize(img, [short], interpolation=interp, antialias=True)
        img = F.center_crop(img, [cfg.img_size, cfg.img_size])
        out.append((img.float() / 255 - mean) / std)
    return torch.stack(out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,16,64", help="batch sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per path and batch")
    p.add_argument("--img-size", type=int, default=224, help="the model's input size")
    p.add_argument("--upscale", type=float, default=1.0, help="scale the sample photos first")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, help="torch math threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = MAEConfig(img_size=args.img_size, patch_size=16, decoder_depth=0)
    batches = [int(b) for b in args.batch.split(",")]
    devices = [torch.device("cpu")] + ([dev] if dev.type == "cuda" else [])
    paths = {"server": lambda d: server_path(d, cfg)}
    for d in devices:
        paths[f"torchvision-{d.type}"] = lambda data, d=d: torchvision_path(data, cfg, d)
    rows = []
    for batch in batches:
        data = jpegs(batch, args.upscale)
        want = server_path(data, cfg)
        times: dict[str, list[float]] = {name: [] for name in paths}
        diffs = {}
        for name, fn in paths.items():  # a warm-up call each, and the tensors compared
            got = fn(data)
            sync(got.device)
            delta = (got.cpu() - want).abs()
            diffs[name] = (float(delta.max()), float(delta.mean()))
        for _ in range(args.rounds):
            for name, fn in paths.items():
                t0 = time.perf_counter()
                out = fn(data)
                sync(out.device)
                times[name].append(time.perf_counter() - t0)
        server_rate = batch / statistics.median(times["server"])
        for name in paths:
            rate = batch / statistics.median(times[name])
            rows.append(
                {
                    "path": name,
                    "batch": batch,
                    "images_per_s": rate,
                    "vs_server": rate / server_rate,
                    "max_abs_diff": diffs[name][0],
                    "mean_abs_diff": diffs[name][1],
                }
            )
    sizes = ", ".join(f"{len(b) // 1024} KiB" for b in jpegs(len(PHOTOS), args.upscale))
    print(
        f"JPEG -> {args.img_size} px input batch; photos {sizes}; {platform.processor() or 'cpu'}"
        f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "")
    )
    print("| path | batch | img/s | / server | max abs diff | mean abs diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['path']} | {r['batch']} | {r['images_per_s']:.0f} | {r['vs_server']:.2f} "
            f"| {r['max_abs_diff']:.3f} | {r['mean_abs_diff']:.4f} |"
        )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"args": vars(args), "device": str(dev), "rows": rows}
        out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
