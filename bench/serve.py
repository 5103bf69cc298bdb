"""What serving costs over the bare model: a real `mae serve` against the bare encoder.

Starts `mae serve` in a subprocess on 127.0.0.1 (default model: a random-init
`mae_vit_tiny_patch8` at 64 px saved to a temporary folder), waits for `/ready`, then
sends requests from an httpx AsyncClient (keep-alive) at each concurrency level. Each
request holds one real JPEG photo (scikit-image's sample photos, encoded once), as base64
JSON to `/v1/embeddings` or as a multipart upload to `/v1/embeddings/upload` (`--body`),
so every request pays HTTP, the body, JPEG decoding and resizing on top of the forward.

With `--backend onnxruntime[-int8]` the server runs its forward in ONNX Runtime while the
peer stays the bare torch encoder, so the ratio says what the backend saves over torch.

The figure: the server process's own CPU time per image (user + system of all its
threads, from /proc/<pid>/stat: the client's share of the cores does not count) over the
bare encoder's CPU time per image at the batch size the server formed (`model.embed` under
`torch.inference_mode()` on the same photos, already preprocessed, in a separate process
with the same number of math threads). 1.00 would be serving at no cost at all. Load on a
shared machine drifts, so each level runs `--rounds` rounds, each a server burst followed
at once by a bare-encoder burst of as many images, and the table gives medians (the CPU
ratio is the median of the rounds' ratios). Also given: images/s of both, and, when the
server runs W forwards at once (`--forward-workers`, 2 by default on a CPU), a second peer
at W x the server's batch: each of W forwards holds about 1/W of what one forward would,
and a peer at the smaller batch alone could flatter the server.

A second table says where the server's CPU goes, per image, thread by thread (from
/proc/<pid>/task/*/stat; the server names its threads): the event loop (HTTP, the bodies,
the answers, the batcher), the forwards (the device threads and their math threads), the
decode threads (JPEG to input tensor) and any other thread.

    .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py --model local:mae/vit-tiny-tinyimagenet --body multipart
    .venv/bin/python bench/serve.py --concurrency 1,16,64 --requests 256 --json serve.json
    .venv/bin/python bench/serve.py --variant mae_vit_base_patch16 --device cuda --requests 2048

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skimage.data
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import mae_core
from mae_core.data import eval_transform
from mae_core.fused import inference_forward
from service.engine import pick_dtype
from service.imaging import center_square
from service.settings import Settings

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")  # 300x451 to 512x512 RGB
JPEG_QUALITY = 90
DEFAULT_MAX_BATCH = Settings.model_fields["max_batch_images"].default


# -- inputs -------------------------------------------------------------------------------
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def request_bodies(
    jpegs: list[bytes], encoding_format: str, body: str = "json"
) -> tuple[str, list[tuple[bytes, str]]]:
    """(route, [(body, content type)]): one request per photo, encoded once so that the
    client's own encoding stays out of the way."""
    if body == "json":
        out = []
        for data in jpegs:
            doc = {"input": [base64.b64encode(data).decode()], "encoding_format": encoding_format}
            out.append((json.dumps(doc).encode(), "application/json"))
        return "/v1/embeddings", out
    out = []
    for i, data in enumerate(jpegs):
        req = httpx.Request(
            "POST",
            "http://x/",
            files=[("file", (f"{i}.jpg", data, "image/jpeg"))],
            data={"encoding_format": encoding_format},
        )
        out.append((req.read(), req.headers["content-type"]))
    return "/v1/embeddings/upload", out


# -- the server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, MAE_TORCH_THREADS=str(args.threads))
    env.update(kv.split("=", 1) for kv in args.server_env)
    for flag, var in (
        ("max_batch_images", "MAE_MAX_BATCH_IMAGES"),
        ("max_batch_wait_ms", "MAE_MAX_BATCH_WAIT_MS"),
        ("decode_threads", "MAE_DECODE_THREADS"),
        ("forward_workers", "MAE_FORWARD_WORKERS"),
        ("backend", "MAE_BACKEND"),
    ):
        if getattr(args, flag, None) is not None:
            env[var] = str(getattr(args, flag))
    return env


def start_server(
    model: str, port: int, args: argparse.Namespace, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        *(sys.executable, "-m", "mae_core.cli", "serve", model),
        *("--host", "127.0.0.1", "--port", str(port), "--device", args.device),
        *("--dtype", args.dtype, "--log-level", "warning"),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=server_env(args), stdout=out, stderr=subprocess.STDOUT)


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


def stat_cpu(stat: str) -> tuple[str, float]:
    """A /proc .../stat line -> (the command name, user + system CPU seconds so far)."""
    fields = stat.rsplit(")", 1)[1].split()
    seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return stat[stat.index("(") + 1 : stat.rindex(")")], seconds


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, all its threads (Linux /proc)."""
    try:
        return stat_cpu(Path(f"/proc/{pid}/stat").read_text())[1]
    except OSError:
        return None


# The server names its pool threads (service.batcher.name_os_thread); the main thread
# runs the event loop: HTTP, the bodies, the answers, the batcher.
ROLES = ("event loop", "forwards", "decode", "other")


def role(pid: int, tid: int, comm: str) -> str:
    if tid == pid:
        return "event loop"
    if comm.startswith("mae-device"):
        return "forwards"  # the device threads and the math threads they started
    if comm.startswith("mae-decode"):
        return "decode"
    return "other"


def thread_cpu(pid: int) -> dict[int, tuple[str, float]] | None:
    """{thread id: (role, user + system CPU seconds so far)} of every thread of a process
    (None without Linux's /proc)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    out = {}
    for task in tasks.glob("*"):
        try:
            comm, seconds = stat_cpu((task / "stat").read_text())
        except OSError:  # the thread ended
            continue
        tid = int(task.name)
        out[tid] = (role(pid, tid, comm), seconds)
    return out


def cpu_by_role(
    before: dict[int, tuple[str, float]] | None,
    after: dict[int, tuple[str, float]] | None,
    images: int,
) -> dict[str, float | None]:
    """CPU milliseconds per image of each role between two `thread_cpu` snapshots."""
    if before is None or after is None:
        return {f"{name} cpu_ms_per_img": None for name in ROLES}
    spent = dict.fromkeys(ROLES, 0.0)
    for tid, (name, seconds) in after.items():
        spent[name] += seconds - before.get(tid, (name, 0.0))[1]
    return {f"{name} cpu_ms_per_img": 1000 * t / max(images, 1) for name, t in spent.items()}


# -- the client ---------------------------------------------------------------------------
async def load(
    client: httpx.AsyncClient,
    route: str,
    bodies: list[tuple[bytes, str]],
    concurrency: int,
    n: int,
) -> tuple[float, list[float]]:
    """`n` requests, `concurrency` at a time -> (wall seconds, latency of each request)."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            content, kind = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            r = await client.post(route, content=content, headers={"Content-Type": kind})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"request {i}: HTTP {r.status_code}: {r.text[:500]}")
            if len(r.json()["data"]) != 1:
                raise SystemExit(f"request {i}: expected one embedding, got {r.text[:500]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies


class Wrk:
    """wrk (C, epoll) as the load. A Python client at 64 connections takes a core of its
    own and starves the server of requests (batches of 1-2); wrk takes a small share, so
    the server, not the client, sets the pace. It cycles through the same bodies."""

    def __init__(self, url: str, route: str, bodies: list[tuple[bytes, str]], folder: Path):
        self.url, self.script = url, folder / "post.lua"
        lines = ["local bodies, kinds = {}, {}"]
        for i, (content, kind) in enumerate(bodies):
            path = folder / f"body{i}"
            path.write_bytes(content)
            lines += [
                f'do local f = io.open("{path}", "rb"); bodies[{i + 1}] = f:read("*all"); f:close() end',
                f'kinds[{i + 1}] = "{kind}"',
            ]
        lines += [
            "local n = 0",
            "request = function()",
            f"  n = n % {len(bodies)} + 1",
            f'  return wrk.format("POST", "{route}", {{["Content-Type"] = kinds[n]}}, bodies[n])',
            "end",
        ]
        self.script.write_text("\n".join(lines) + "\n")

    def run(self, concurrency: int, seconds: int) -> tuple[int, float, float, float]:
        """-> (requests answered, seconds, p50 ms, p99 ms)."""
        cmd = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(self.script),
            self.url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: (.*)", out)
        if bad or errors:
            raise SystemExit(f"wrk saw failed requests:\n{out}")
        done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
        wall = float(done.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
        return int(done.group(1)), wall, _wrk_ms(out, "50%"), _wrk_ms(out, "99%")


def _wrk_ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"^\s*{pct}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


async def httpx_round(
    url: str, route: str, bodies: list[tuple[bytes, str]], c: int, n: int, warm: int
) -> tuple[int, float, float, float]:
    """`n` requests from a fresh httpx client (after `warm` untimed ones)."""
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        await load(client, route, bodies, c, warm)
        wall, lat = await load(client, route, bodies, c, n)
    ms = np.asarray(lat) * 1000
    return n, wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def batch_totals(url: str) -> tuple[float, float]:
    """(images, forwards) so far, summed over the served models."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals = {"mae_batch_images_sum": 0.0, "mae_batch_images_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["mae_batch_images_sum"], totals["mae_batch_images_count"]


def measure(
    url: str,
    pid: int,
    route: str,
    bodies: list[tuple[bytes, str]],
    bare: BareEncoder,
    wrk: Wrk | None,
    args: argparse.Namespace,
    workers: int = 1,
) -> list[dict]:
    rows = []
    for c in args.concurrency:
        rounds = []
        for r in range(args.rounds):
            warm = max(args.warmup_requests, 2 * c) if r == 0 else c
            if wrk is not None and r == 0:
                wrk.run(c, 2)  # warm-up
            images0, forwards0 = batch_totals(url)
            cpu0, threads0 = cpu_seconds(pid), thread_cpu(pid)
            if wrk is not None:
                n, wall, p50, p99 = wrk.run(c, args.seconds)
            else:
                n, wall, p50, p99 = asyncio.run(
                    httpx_round(url, route, bodies, c, args.requests, warm)
                )
            cpu1, threads1 = cpu_seconds(pid), thread_cpu(pid)
            images1, forwards1 = batch_totals(url)
            images = images1 - images0  # with httpx the warm-up's are in: per image is fair
            batch = images / max(forwards1 - forwards0, 1)
            peer = bare.measure(max(1, round(batch)), n)
            # With W forwards at once each holds about 1/W of what one forward would: the
            # bare encoder at W x the batch is the peer of a one-forward server.
            whole = min(max(1, round(batch * workers)), args.max_batch_images or DEFAULT_MAX_BATCH)
            full = peer if workers == 1 else bare.measure(whole, n)
            server_cpu = None if cpu0 is None else 1000 * (cpu1 - cpu0) / images
            rounds.append(
                {
                    "requests": n,
                    "server_img_s": n / wall,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "mean_batch": batch,
                    "server_cpu_ms_per_img": server_cpu,
                    **peer,
                    "cpu_ratio": None
                    if server_cpu is None
                    else server_cpu / peer["bare_cpu_ms_per_img"],
                    "whole_batch": full["bare_batch"],
                    "whole_bare_cpu_ms_per_img": full["bare_cpu_ms_per_img"],
                    "whole_cpu_ratio": None
                    if server_cpu is None
                    else server_cpu / full["bare_cpu_ms_per_img"],
                    **cpu_by_role(threads0, threads1, images),
                }
            )
        row: dict = {"concurrency": c, "rounds": rounds}
        for key in rounds[0]:
            values = [r[key] for r in rounds if r[key] is not None]
            if values and isinstance(values[0], str):  # bare_forward: the same every round
                row[key] = values[0]
                continue
            row[key] = statistics.median(values) if values else None
        row["img_s_ratio"] = row["server_img_s"] / row["bare_img_s"]
        rows.append(row)
    return rows


# -- the peer -----------------------------------------------------------------------------
class BareEncoder:
    """The bare encoder in a process of its own (this script with --bare-worker), with the
    server's device, dtype and math threads (and, for the fused forward, the server's
    packing of the weights: `packed`); asked for one burst at a time over a pipe, so it
    idles while the server works and the other way round."""

    def __init__(self, model_id: str, args: argparse.Namespace, packed: bool = True) -> None:
        cmd = [
            *(sys.executable, __file__, "--bare-worker", "--model", model_id),
            *("--device", args.device, "--dtype", args.peer_dtype or args.dtype),
            *("--threads", str(args.threads), "--peer-forward", args.peer_forward),
            *(() if packed else ("--peer-unpacked",)),
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._ask({})  # loaded and warm

    def _ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the bare-encoder process exited ({self.proc.wait()})")
        return json.loads(line)

    def measure(self, batch: int, images: int) -> dict:
        """Forwards of `batch` images until about `images` are done (3 calls at least)."""
        return self._ask({"batch": batch, "calls": max(3, -(-images // batch))})

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def bare_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dev = args.device
    model = mae_core.load_model(args.model, with_decoder=False).to(dev).eval()
    model.requires_grad_(False)
    dtype = pick_dtype(args.dtype, torch.device(dev))
    tensors = [eval_transform(center_square(img), model.config) for img in photos()]
    embed = model.embed  # the model as a user runs it by hand: the plain forward, class token
    ran = "plain"
    if args.peer_forward == "fused":  # the forward the torch backend serves with
        said = logging.getLogger("bench.bare")
        said.addHandler(logging.StreamHandler(sys.stderr))  # the check's line, for the record
        said.setLevel(logging.INFO)
        forward = inference_forward(
            model, torch.device(dev), dtype, said, pack=not args.peer_unpacked
        )
        if forward is model.forward_features:
            raise SystemExit("--peer-forward fused: the fused forward does not apply here")
        ran = f"fused ({forward.impl}{', packed' if forward.packed else ''})"

        def embed(x: torch.Tensor) -> torch.Tensor:
            return forward(x)[:, 0]

    fused_dtype = args.peer_forward == "fused" and dtype == torch.bfloat16
    autocast = torch.autocast(dev, dtype, enabled=dtype != torch.float32 and not fused_dtype)
    for line in sys.stdin:
        request = json.loads(line)
        answer: dict = {}
        if request:
            b, calls = request["batch"], request["calls"]
            x = torch.stack([tensors[i % len(tensors)] for i in range(b)]).to(dev)
            with torch.inference_mode(), autocast:
                for _ in range(2):
                    embed(x)
                if dev == "cuda":
                    torch.cuda.synchronize()
                cpu0, t0 = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    embed(x)
                if dev == "cuda":
                    torch.cuda.synchronize()
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            answer = {
                "bare_batch": b,
                "bare_img_s": calls * b / wall,
                "bare_cpu_ms_per_img": 1000 * cpu / (calls * b),
                "bare_forward": ran,
            }
        print(json.dumps(answer), flush=True)


def device_name(dev: str, threads: int) -> str:
    if dev == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {threads} math threads"


def parse_args() -> argparse.Namespace:
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
        help="for the server and the bare encoder (default: cuda when present)",
    )
    ap.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="MAE_DTYPE, for both (default auto: bfloat16 on CUDA, else float32)",
    )
    ap.add_argument(
        "--peer-dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="the bare encoder's dtype when not --dtype's: --dtype bfloat16 --peer-dtype "
        "float32 says what bf16 serving costs against the model run by hand in fp32",
    )
    ap.add_argument(
        "--peer-forward",
        choices=("plain", "fused"),
        default="plain",
        help="the bare encoder's forward: plain (default; model.embed, the model as a user "
        "runs it by hand) or fused (the checked fused forward the torch backend serves with, "
        "mae_core.fused): what the server costs around its own forward",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="math threads of the server's forward (MAE_TORCH_THREADS) and of the bare "
        "encoder (default: all cores)",
    )
    ap.add_argument(
        "--forward-workers",
        type=int,
        help="MAE_FORWARD_WORKERS: forwards at once, sharing --threads (default: 2 for torch "
        "on a CPU, else 1); the bare encoder stays one loop on all --threads",
    )
    ap.add_argument(
        "--decode-threads", type=int, help="MAE_DECODE_THREADS (default: half the cores)"
    )
    ap.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "onnxruntime-int8"),
        help="MAE_BACKEND of the server (the bare encoder is always torch: the ratio is "
        "against the bare torch model)",
    )
    ap.add_argument(
        "--body",
        choices=("json", "multipart"),
        default="json",
        help="base64 JSON to /v1/embeddings, or a file upload to /v1/embeddings/upload",
    )
    ap.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 16, 64],
        help="requests in flight, comma-separated levels (default 1,16,64)",
    )
    ap.add_argument(
        "--requests", type=int, default=256, help="httpx: timed requests per round (default 256)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds per level (default 3)")
    ap.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="the load: wrk when installed (apt install wrk), else an httpx client",
    )
    ap.add_argument(
        "--seconds", type=int, default=5, help="wrk: whole seconds per round (default 5)"
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
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the server only (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE",
    )
    ap.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /ready")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-unpacked", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.bare_worker:
        bare_worker(args)
        return
    jpegs = [jpeg(img) for img in photos()]
    route, bodies = request_bodies(jpegs, args.encoding_format, args.body)
    with tempfile.TemporaryDirectory() as tmp:
        model_id = args.model
        if model_id is None:
            torch.manual_seed(0)
            model_id = f"{tmp}/{args.variant}-{args.img_size}"
            mae_core.create_model(args.variant, img_size=args.img_size).save_pretrained(model_id)
        port, log = free_port(), Path(tmp) / "serve.log"
        url = f"http://127.0.0.1:{port}"
        proc = start_server(model_id, port, args, log)
        bare = None
        try:
            wait_ready(url, proc, log, args.ready_timeout)
            info = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
            if args.peer_forward == "fused" and not info.get("fused_layers"):
                raise SystemExit(
                    "--peer-forward fused: the server does not run the fused forward "
                    f"(backend {info.get('backend')}, fused_layers {info.get('fused_layers')})"
                )
            # a fused fp32 peer goes without packed weights where the server does
            # (MAE_PACK_WEIGHTS=false); packing is oneDNN's fp32 way only, so a peer in
            # another dtype than the server's keeps its default
            unpacked = (
                info.get("dtype") == "float32"
                and info.get("fused_layers")
                and not info.get("packed_weights", True)
            )
            bare = BareEncoder(model_id, args, packed=not unpacked)
            use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
            wrk = Wrk(url, route, bodies, Path(tmp)) if use_wrk else None
            layout = re.search(r"threads: (\d+) forwards at once", log.read_text())
            workers = int(layout.group(1)) if layout else 1
            rows = measure(url, proc.pid, route, bodies, bare, wrk, args, workers)
        finally:
            if bare is not None:
                bare.close()
            stop_server(proc)

        text = log.read_text()
        started = re.search(r"threads: .*? images", text)
        errors = text.count("Traceback (most recent call last)")
        if errors:  # wrk closing its connections must be the clients' 499s, never 500s
            last = re.findall(r"^\S[^\n]*(?:Error|Exception)\b[^\n]*$", text, re.MULTILINE)
            print(
                f"warning: the server logged {errors} traceback(s), the last: "
                f"{last[-1] if last else '?'}",
                file=sys.stderr,
            )
    sizes = ", ".join(f"{len(b) // 1024} KiB" for b in jpegs)
    body = "base64 JSON" if args.body == "json" else "multipart upload"
    head = (
        f"{args.variant if args.model is None else args.model} ({info['image_size']} px, "
        f"{info['dtype']}{', ' + info['backend'] if 'backend' in info else ''}"
        f"{', weights packed' if info.get('packed_weights') else ''}"
        f"{'; bare encoder ' + args.peer_dtype if args.peer_dtype else ''}"
        f"{'; bare encoder: the fused forward' if args.peer_forward == 'fused' else ''}), "
        f"{device_name(args.device, args.threads)}, torch {torch.__version__}, "
        f"{datetime.date.today()}; one JPEG per request ({sizes}; {', '.join(PHOTOS)}), "
        f"{body}, encoding_format {args.encoding_format}; load from "
        f"{'wrk, ' + format(args.seconds, 'g') + ' s' if wrk else 'httpx, ' + str(args.requests) + ' requests'}"
        f" per round, {args.rounds} rounds per level after warm-up, medians; server "
        f"{started.group(0) if started else 'threads: ?'}; server env "
        + " ".join(
            f"{k}={v}"
            for k, v in sorted(server_env(args).items())
            if k.startswith("MAE_") or k in dict(kv.split("=", 1) for kv in args.server_env)
        )
    )
    print(head)
    print(
        "| concurrency | server img/s | p50 ms | p99 ms | mean batch | server CPU ms/img "
        "| bare CPU ms/img | server CPU / bare | bare img/s | server img/s / bare "
        f"| bare CPU ms/img at {workers} x the batch | server CPU / that |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cpu, ratio, strict = r["server_cpu_ms_per_img"], r["cpu_ratio"], r["whole_cpu_ratio"]
        print(
            f"| {r['concurrency']} | {r['server_img_s']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {'-' if cpu is None else f'{cpu:.1f}'} "
            f"| {r['bare_cpu_ms_per_img']:.1f} | {'-' if ratio is None else f'{ratio:.2f}'} "
            f"| {r['bare_img_s']:.0f} | {r['img_s_ratio']:.2f} "
            f"| {r['whole_bare_cpu_ms_per_img']:.1f} | {'-' if strict is None else f'{strict:.2f}'} |"
        )
    print()
    print(
        "Where the server's CPU goes, ms per image (medians; `forwards` includes their math threads):"
    )
    print("| concurrency | " + " | ".join(ROLES) + " | all threads |")
    print("| ---: |" + " ---: |" * (len(ROLES) + 1))
    for r in rows:
        cpu = r["server_cpu_ms_per_img"]
        parts = " | ".join(
            "-" if r[f"{name} cpu_ms_per_img"] is None else f"{r[f'{name} cpu_ms_per_img']:.2f}"
            for name in ROLES
        )
        print(f"| {r['concurrency']} | {parts} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    if args.json:
        out = {"setup": head, "model": info, "args": vars(args), "rows": rows}
        out["server_tracebacks"] = errors
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
