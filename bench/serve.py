"""Serving throughput and latency: a real `mae serve` over HTTP against the raw encoder.

Starts `mae serve` in a subprocess on 127.0.0.1 (default model: a random-init
`mae_vit_tiny_patch8` at 64 px saved to a temporary folder), waits for `/ready`, then
sends `POST /v1/embeddings` requests from an httpx AsyncClient (keep-alive) at each
concurrency level. Each request holds one real JPEG photo (scikit-image's sample photos,
encoded once) as base64 JSON, so every request pays base64 + JSON + JPEG decode + resize
+ HTTP on top of the forward. The mean batch the server's batcher formed comes from
`/metrics` (`mae_batch_images_sum / _count`, taken over the timed requests only).

The peer, in the same run: the server is stopped, then the same weights' `model.embed`
runs in this process on the same device, on preprocessed tensors of the same photos, at
the batch size the server formed at that level: the in-process upper bound. The last
column is server img/s over raw img/s (1.00: no serving overhead at all).

    .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py --concurrency 1,16,64 --requests 256 --json serve.json
    .venv/bin/python bench/serve.py --variant mae_vit_base_patch16 --device cuda --requests 2048
    .venv/bin/python bench/serve.py --model path/to/model-folder   # or local:<ns>/<name>

Prints a Markdown table. The client runs on the same machine as the server and takes
CPU from it: on a small CPU box that is part of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skimage.data
import torch

# bench/ is on sys.path when a script here runs: share the timer
from features import timed
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import mae_core
from mae_core.data import eval_transform
from service.engine import pick_dtype
from service.imaging import center_square
from service.settings import Settings

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")  # 300x451 to 512x512 RGB
JPEG_QUALITY = 90


# -- inputs -------------------------------------------------------------------------------
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def request_bodies(jpegs: list[bytes], encoding_format: str) -> list[bytes]:
    """One JSON body per photo, encoded once (the client's JSON cost stays out of the way)."""
    return [
        json.dumps(
            {
                "input": [base64.b64encode(data).decode("ascii")],
                "encoding_format": encoding_format,
            }
        ).encode()
        for data in jpegs
    ]


# -- the server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str, port: int, args: argparse.Namespace, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if args.max_batch_images is not None:
        env["MAE_MAX_BATCH_IMAGES"] = str(args.max_batch_images)
    if args.max_batch_wait_ms is not None:
        env["MAE_MAX_BATCH_WAIT_MS"] = str(args.max_batch_wait_ms)
    cmd = [
        *(sys.executable, "-m", "mae_core.cli", "serve", model),
        *("--host", "127.0.0.1", "--port", str(port), "--device", args.device),
        *("--dtype", args.dtype, "--log-level", "warning"),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mae serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"mae serve not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def batch_totals(client: httpx.AsyncClient) -> tuple[float, float]:
    """(images, forwards) so far, summed over the served models."""
    text = (await client.get("/metrics")).text
    totals = {"mae_batch_images_sum": 0.0, "mae_batch_images_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["mae_batch_images_sum"], totals["mae_batch_images_count"]


# -- the client ---------------------------------------------------------------------------
async def load(
    client: httpx.AsyncClient, bodies: list[bytes], concurrency: int, n: int
) -> tuple[float, list[float]]:
    """`n` requests, `concurrency` at a time -> (wall seconds, latency of each request)."""
    latencies: list[float] = []
    next_index = 0
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            r = await client.post(
                "/v1/embeddings", content=bodies[i % len(bodies)], headers=headers
            )
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"request {i}: HTTP {r.status_code}: {r.text[:500]}")
            if len(r.json()["data"]) != 1:
                raise SystemExit(f"request {i}: expected one embedding, got {r.text[:500]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies


async def measure_server(
    url: str, pid: int, bodies: list[bytes], args: argparse.Namespace
) -> list[dict]:
    top = max(args.concurrency)
    limits = httpx.Limits(max_connections=top, max_keepalive_connections=top)
    rows = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for c in args.concurrency:
            await load(client, bodies, c, max(args.warmup_requests, 2 * c))
            images0, forwards0 = await batch_totals(client)
            cpu0 = cpu_seconds(pid)
            wall, lat = await load(client, bodies, c, args.requests)
            cpu1 = cpu_seconds(pid)
            images1, forwards1 = await batch_totals(client)
            ms = np.asarray(lat) * 1000
            rows.append(
                {
                    "concurrency": c,
                    "requests": args.requests,
                    "server_img_s": args.requests / wall,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "mean_batch": (images1 - images0) / max(forwards1 - forwards0, 1),
                    "server_cpu_ms_per_img": None
                    if cpu0 is None or cpu1 is None
                    else 1000 * (cpu1 - cpu0) / args.requests,
                }
            )
    return rows


# -- the peer -----------------------------------------------------------------------------
def measure_raw(model_id: str, imgs: list[Image.Image], rows: list[dict], args) -> None:
    """Adds `raw_img_s` (model.embed, same device and dtype) at each row's mean batch, and
    the CPU time this process spent per image (all threads, warm-up calls included)."""
    dev = args.device
    model = mae_core.load_model(model_id, with_decoder=False).to(dev).eval()
    model.requires_grad_(False)
    dtype = pick_dtype(args.dtype, torch.device(dev))
    tensors = [eval_transform(center_square(img), model.config) for img in imgs]
    for row in rows:
        b = max(1, round(row["mean_batch"]))
        x = torch.stack([tensors[i % len(tensors)] for i in range(b)]).to(dev)  # (b, 3, S, S)
        cpu0 = time.process_time()
        with torch.inference_mode(), torch.autocast(dev, dtype, enabled=dtype != torch.float32):
            seconds = timed(lambda x=x: model.embed(x), args.steps, args.warmup, dev)
        calls = args.steps + args.warmup
        row["raw_batch"] = b
        row["raw_img_s"] = b / seconds
        row["raw_cpu_ms_per_img"] = 1000 * (time.process_time() - cpu0) / (calls * b)
        row["server_over_raw"] = row["server_img_s"] / row["raw_img_s"]


def device_name(dev: str) -> str:
    if dev == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", metavar="ID", help="model id to serve (default: a random init)")
    ap.add_argument(
        "--variant", default="mae_vit_tiny_patch8", help="random-init variant (default %(default)s)"
    )
    ap.add_argument("--img-size", type=int, default=64, help="random-init image size (default 64)")
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="for the server and the raw encoder (default: cuda when present)",
    )
    ap.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="MAE_DTYPE, for both (default auto: bfloat16 on CUDA, else float32)",
    )
    ap.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 16, 64],
        help="requests in flight, comma-separated levels (default 1,16,64)",
    )
    ap.add_argument(
        "--requests", type=int, default=256, help="timed requests per level (default 256)"
    )
    ap.add_argument(
        "--warmup-requests",
        type=int,
        default=16,
        help="untimed requests per level (at least 2 x the level)",
    )
    ap.add_argument("--max-batch-images", type=int, help="MAE_MAX_BATCH_IMAGES (default 32)")
    ap.add_argument("--max-batch-wait-ms", type=float, help="MAE_MAX_BATCH_WAIT_MS (default 0)")
    ap.add_argument(
        "--encoding-format",
        choices=("float", "base64"),
        default="float",
        help="of the embeddings in the answers (default float)",
    )
    ap.add_argument(
        "--steps", type=int, default=10, help="raw encoder: timed calls per batch (default 10)"
    )
    ap.add_argument("--warmup", type=int, default=3, help="raw encoder: warm-up calls (default 3)")
    ap.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /ready")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()

    imgs = photos()
    jpegs = [jpeg(img) for img in imgs]
    bodies = request_bodies(jpegs, args.encoding_format)
    with tempfile.TemporaryDirectory() as tmp:
        model_id = args.model
        if model_id is None:
            torch.manual_seed(0)
            model_id = f"{tmp}/{args.variant}-{args.img_size}"
            mae_core.create_model(args.variant, img_size=args.img_size).save_pretrained(model_id)
        port, log = free_port(), Path(tmp) / "serve.log"
        url = f"http://127.0.0.1:{port}"
        proc = start_server(model_id, port, args, log)
        try:
            wait_ready(url, proc, log, args.ready_timeout)
            info = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
            rows = asyncio.run(measure_server(url, proc.pid, bodies, args))
        finally:
            stop_server(proc)
        measure_raw(model_id, imgs, rows, args)

    sizes = ", ".join(f"{len(b) // 1024} KiB" for b in jpegs)
    fields = Settings.model_fields  # what the server ran with: flag, else environment, else default
    batch_images = args.max_batch_images or int(
        os.environ.get("MAE_MAX_BATCH_IMAGES", fields["max_batch_images"].default)
    )
    wait_ms = float(os.environ.get("MAE_MAX_BATCH_WAIT_MS", fields["max_batch_wait_ms"].default))
    wait_ms = wait_ms if args.max_batch_wait_ms is None else args.max_batch_wait_ms
    head = (
        f"{args.variant if args.model is None else args.model} ({info['image_size']} px, "
        f"{info['dtype']}), {device_name(args.device)}, torch {torch.__version__}, "
        f"{datetime.date.today()}; one JPEG per request ({sizes}; {', '.join(PHOTOS)}), "
        f"base64 JSON, encoding_format {args.encoding_format}; {args.requests} timed requests "
        f"per level after warm-up; MAE_MAX_BATCH_IMAGES={batch_images}, "
        f"MAE_MAX_BATCH_WAIT_MS={wait_ms:g}; raw encoder: median of {args.steps} after "
        f"{args.warmup}"
    )
    print(head)
    print(
        "| concurrency | server img/s | p50 ms | p99 ms | mean batch | server CPU ms/img "
        "| raw encoder img/s (batch) | raw CPU ms/img | server / raw |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cpu = r["server_cpu_ms_per_img"]
        print(
            f"| {r['concurrency']} | {r['server_img_s']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {'-' if cpu is None else f'{cpu:.1f}'} "
            f"| {r['raw_img_s']:.0f} ({r['raw_batch']}) | {r['raw_cpu_ms_per_img']:.1f} | "
            f"{r['server_over_raw']:.2f} |"
        )
    if args.json:
        out = {"setup": head, "model": info, "args": vars(args), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
