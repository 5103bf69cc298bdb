"""Under load, overload and a long run, no answer is lost or mixed up and memory stays flat.

Starts a real `mae serve` in a subprocess on 127.0.0.1, the way bench/serve.py does (a
free port, then wait for `/ready`; default model: a random-init `mae_vit_tiny_patch8`
saved to a temporary folder, or `--model ID`), and sends it base64 JSON requests from an
httpx AsyncClient. The images are distinct real JPEGs: random square crops of
scikit-image's sample photos, about half of them mirrored (or the JPEGs of `--images DIR`).

1. Correctness: first the solo answer of every image (one request at a time, both
   poolings); the solo answers of two different images must differ by 10 x the tolerance
   at least, or a mix-up could pass for a match. Then `--requests` requests at each
   concurrency level (1, 16, 64), each of 1 to 4 random images with a random pooling and
   encoding, in random order. Every request must be answered 200, and every row must equal
   the solo answer of its own image (max |difference| below `--tolerance`): sharing a
   forward with other requests must neither change a vector nor hand it to another
   request. The server's /metrics say how many forwards did hold several requests.
2. Overload: a second server with a small queue (MAE_MAX_QUEUE_IMAGES, `--queue`) gets
   `--burst` requests at once. Every answer must be a correct 200 or a 429 with a
   Retry-After header, nothing else (no 5xx, no dropped connection); the latency of the
   429s is reported. Afterwards /ready must answer 200 with an empty queue and one more
   request must get a correct answer.
3. Soak: `--soak` requests at concurrency 16 on the first server, every answer checked,
   the server process's resident memory (VmRSS) sampled 20 times along the way. Its growth
   from the end of the warm-up (the first 10% of the requests) to the end must stay below
   `--max-rss-growth` %; the server must be healthy afterwards, as above.

Any line with ERROR or a traceback in a server's log also fails the run. Prints a
Markdown summary, writes `--json`, and exits 1 if a check failed.

    .venv/bin/python bench/load.py
    .venv/bin/python bench/load.py --soak 50000 --json bench/results/load-cpu.json
    .venv/bin/python bench/load.py --model local:mae/vit-tiny-tinyimagenet --soak 5000
    .venv/bin/python bench/load.py --img-size 32 --depth 2 --distinct 24 --requests 150 \\
        --burst 64 --soak 600          # the CI size (tests/test_load.py)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

import mae_core

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import (  # bench/serve.py: the same server start, the same photos
    device_name,
    free_port,
    jpeg,
    photos,
    start_server,
    stop_server,
    wait_ready,
)

POOLINGS = ("mean", "cls")
ENCODINGS = ("float", "base64")
ROUTE = "/v1/embeddings"
JSON = "application/json"


# -- images -------------------------------------------------------------------------------
def crops(n: int, size: int, seed: int) -> list[bytes]:
    """`n` distinct JPEGs: random square crops (35-90% of the shorter side, anywhere in
    the photo), about half of them mirrored, resized to `size` px. The server centre-crops and
    resizes too, so each crop still shows a different part of a photo to the model."""
    rng = random.Random(seed)
    sources = photos()
    out, seen = [], set()
    while len(out) < n:
        img = sources[len(out) % len(sources)]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.35, 0.9))
        x, y = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = img.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        data = jpeg(crop)
        if data not in seen:
            seen.add(data)
            out.append(data)
    return out


def folder_jpegs(folder: Path, n: int, seed: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    random.Random(seed).shuffle(files)
    out = list({p.read_bytes(): None for p in files})[:n]  # distinct bytes, in that order
    if len(out) < n:
        raise SystemExit(f"{folder} holds {len(out)} distinct JPEGs, fewer than --distinct {n}")
    return out


# -- requests and their checks ------------------------------------------------------------
@dataclass
class Spec:
    """One request: which images (indices), which pooling, which encoding."""

    images: list[int]
    pooling: str
    encoding: str

    def body(self, b64: list[str]) -> bytes:
        doc = {
            "input": [b64[i] for i in self.images],
            "pooling": self.pooling,
            "encoding_format": self.encoding,
        }
        return json.dumps(doc).encode()


def random_specs(n: int, images: int, rng: random.Random) -> list[Spec]:
    return [
        Spec(
            rng.sample(range(images), rng.randint(1, min(4, images))),
            rng.choice(POOLINGS),
            rng.choice(ENCODINGS),
        )
        for _ in range(n)
    ]


def vector(value: object, encoding: str) -> np.ndarray | None:
    try:
        if encoding == "base64":
            return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None


@dataclass
class Tally:
    """What one phase sent and what came back."""

    requests: int = 0
    answered: int = 0  # an HTTP answer of any status
    correct: int = 0  # 200, and every row equal to its image's solo answer
    rows_checked: int = 0
    mismatches: int = 0  # rows wrong, missing or extra, in 200 answers
    mixed_up: int = 0  # of those, rows that are another image's (or pooling's) solo answer
    max_diff: float = 0.0  # largest |row - solo answer| of a row that matched
    statuses: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)  # no answer: exception names
    retry_after_missing: int = 0  # 429s without a valid Retry-After
    retry_after: Counter = field(default_factory=Counter)
    latency_ms: dict[int, list[float]] = field(default_factory=dict)  # by status
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first few, for the report

    def problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    @property
    def lost(self) -> int:
        return self.requests - self.answered

    def summary(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "latency_ms"}
        out["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        out["retry_after"] = {str(k): v for k, v in sorted(self.retry_after.items())}
        out["transport_errors"] = dict(self.transport_errors)
        out["lost"] = self.lost
        out["server_errors"] = sum(v for k, v in self.statuses.items() if k >= 500)
        for status, values in sorted(self.latency_ms.items()):
            ms = np.asarray(values)
            out[f"p50_ms_{status}"] = float(np.percentile(ms, 50))
            out[f"p99_ms_{status}"] = float(np.percentile(ms, 99))
        return out


class Checker:
    """Sends requests and checks every answer against the solo answers."""

    def __init__(self, b64: list[str], tolerance: float, timeout: float) -> None:
        self.b64, self.tolerance, self.timeout = b64, tolerance, timeout
        self.solo: dict[tuple[int, str], np.ndarray] = {}

    def client(self, url: str, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=url, limits=limits, timeout=self.timeout, headers={"Content-Type": JSON}
        )

    async def solo_answers(self, url: str) -> None:
        """Each image alone, one request at a time, in each pooling: the reference."""
        async with self.client(url, 1) as client:
            for i in range(len(self.b64)):
                for pooling in POOLINGS:
                    r = await client.post(ROUTE, content=Spec([i], pooling, "float").body(self.b64))
                    r.raise_for_status()
                    self.solo[i, pooling] = vector(r.json()["data"][0]["embedding"], "float")

    def distinctness(self) -> dict[str, float]:
        """Per pooling, the smallest max |difference| between two images' solo answers."""
        out = {}
        for pooling in POOLINGS:
            m = np.stack([self.solo[i, pooling] for i in range(len(self.b64))])
            diff = np.abs(m[:, None, :] - m[None, :, :]).max(axis=2)
            np.fill_diagonal(diff, np.inf)
            out[pooling] = float(diff.min())
        return out

    async def send(self, client: httpx.AsyncClient, spec: Spec, t: Tally) -> None:
        t.requests += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(ROUTE, content=spec.body(self.b64))
        except httpx.HTTPError as exc:
            t.transport_errors[type(exc).__name__] += 1
            t.problem(f"no answer: {type(exc).__name__}: {exc}")
            return
        t.latency_ms.setdefault(r.status_code, []).append(1000 * (time.perf_counter() - t0))
        t.answered += 1
        t.statuses[r.status_code] += 1
        if r.status_code == 429:
            value = r.headers.get("Retry-After", "")
            t.retry_after[value] += 1
            if not (value.isdigit() and int(value) >= 1):
                t.retry_after_missing += 1
                t.problem(f"429 with Retry-After {value!r}")
            return
        if r.status_code != 200:
            t.problem(f"HTTP {r.status_code}: {r.text[:300]}")
            return
        if self.check(spec, r, t):
            t.correct += 1

    def check(self, spec: Spec, r: httpx.Response, t: Tally) -> bool:
        try:
            data = r.json()["data"]
            assert isinstance(data, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            t.mismatches += len(spec.images)
            t.problem(f"200 without a data list: {r.text[:300]}")
            return False
        t.rows_checked += len(spec.images)
        bad = max(0, len(data) - len(spec.images))  # extra rows
        for i, image in enumerate(spec.images):
            row = data[i] if i < len(data) and isinstance(data[i], dict) else None
            got = None if row is None else vector(row.get("embedding"), spec.encoding)
            want = self.solo[image, spec.pooling]
            if row is None or row.get("index") != i or got is None or got.shape != want.shape:
                bad += 1
                t.problem(f"request {spec}: row {i} missing or malformed")
                continue
            diff = float(np.abs(got - want).max())
            if diff < self.tolerance:
                t.max_diff = max(t.max_diff, diff)
                continue
            bad += 1
            other = [
                k for k, v in self.solo.items() if float(np.abs(got - v).max()) < self.tolerance
            ]
            t.mixed_up += bool(other)
            t.problem(
                f"request {spec}: row {i} differs from its solo answer by {diff:.3g}"
                + (f"; it is the solo answer of {other}" if other else "")
            )
        t.mismatches += bad
        return bad == 0

    async def drive(
        self,
        url: str,
        specs: list[Spec],
        concurrency: int,
        t: Tally,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """`specs` in order, `concurrency` in flight at a time."""
        pending = iter(specs)

        async def worker(client: httpx.AsyncClient) -> None:
            for spec in pending:  # one iterator, shared: each spec goes out once
                await self.send(client, spec, t)
                if on_done is not None:
                    on_done()

        async with self.client(url, concurrency) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
            t.wall_s = time.perf_counter() - t0

    async def burst(self, url: str, specs: list[Spec], t: Tally) -> None:
        """Every spec at once, each on a connection of its own."""
        async with self.client(url, len(specs)) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(self.send(client, s, t) for s in specs))
            t.wall_s = time.perf_counter() - t0

    async def healthy(self, url: str) -> dict:
        """/ready's status and queue, and whether one more request gets a correct answer."""
        async with self.client(url, 1) as client:
            ready = await client.get("/ready")
            queued = ready.json().get("queued_images", {}) if ready.status_code == 200 else {}
            t = Tally()
            spec = Spec(list(range(min(2, len(self.b64)))), "mean", "float")
            await self.send(client, spec, t)
        ok = ready.status_code == 200 and not any(queued.values()) and t.correct == 1
        return {
            "ready_status": ready.status_code,
            "queued_images": queued,
            "answer_correct": t.correct == 1,
            "ok": ok,
        }


# -- the server ---------------------------------------------------------------------------
class Server:
    """A `mae serve` subprocess (bench/serve.py's start, stop and readiness wait)."""

    def __init__(self, model: str, args: argparse.Namespace, folder: Path, env: list[str]):
        self.port, self.log = free_port(), folder / f"serve-{len(env)}-{time.time_ns()}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        opts = argparse.Namespace(
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            server_env=[*args.server_env, *env],
        )
        self.proc = start_server(model, self.port, opts, self.log)
        try:
            wait_ready(self.url, self.proc, self.log, args.ready_timeout)
        except BaseException:
            stop_server(self.proc)
            raise

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def batches(self) -> dict[str, float]:
        """Forwards so far, and of them those that held more than one request."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        out = {"forwards": 0.0, "images": 0.0, "single_request": 0.0}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "mae_batch_images_count":
                    out["forwards"] += s.value
                elif s.name == "mae_batch_images_sum":
                    out["images"] += s.value
                elif s.name == "mae_batch_requests_bucket" and s.labels.get("le") == "1.0":
                    out["single_request"] += s.value
        return out

    def log_errors(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [ln for ln in lines if "ERROR" in ln or "Traceback" in ln][:10]

    def stop(self) -> None:
        stop_server(self.proc)


def batch_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    forwards = after["forwards"] - before["forwards"]
    shared = forwards - (after["single_request"] - before["single_request"])
    return {
        "forwards": forwards,
        "mean_batch_images": (after["images"] - before["images"]) / max(forwards, 1),
        "shared_forwards": shared,  # forwards that held two requests or more
    }


# -- the phases ---------------------------------------------------------------------------
def correctness(server: Server, checker: Checker, args: argparse.Namespace) -> list[dict]:
    rng = random.Random(args.seed + 1)
    rows = []
    for c in args.concurrency:
        t = Tally()
        before = server.batches()
        specs = random_specs(args.requests, len(checker.b64), rng)
        asyncio.run(checker.drive(server.url, specs, c, t))
        rows.append({"concurrency": c, **t.summary(), **batch_delta(before, server.batches())})
    return rows


def overload(model: str, checker: Checker, args: argparse.Namespace, folder: Path) -> dict:
    env = [
        f"MAE_MAX_QUEUE_IMAGES={args.queue}",
        f"MAE_MAX_IMAGES_PER_REQUEST={min(4, args.queue)}",  # may not exceed the queue
    ]
    server = Server(model, args, folder, env)
    try:
        t = Tally()
        specs = random_specs(args.burst, len(checker.b64), random.Random(args.seed + 2))
        asyncio.run(checker.burst(server.url, specs, t))
        after = asyncio.run(checker.healthy(server.url))
        errors = server.log_errors()
    finally:
        server.stop()
    return {"queue_images": args.queue, **t.summary(), "healthy_after": after, "log_errors": errors}


def soak(server: Server, checker: Checker, args: argparse.Namespace) -> dict:
    n = args.soak
    marks = sorted({max(1, round(n * k / 20)) for k in range(1, 21)})
    warm_mark = max(1, round(n * 0.1))
    samples = [{"requests": 0, "seconds": 0.0, "rss_kib": server.rss_kib()}]
    done, t0 = 0, time.perf_counter()

    def on_done() -> None:
        nonlocal done
        done += 1
        if done in marks or done == warm_mark:
            sample = {"requests": done, "seconds": time.perf_counter() - t0}
            samples.append({**sample, "rss_kib": server.rss_kib()})

    t = Tally()
    before = server.batches()
    specs = random_specs(n, len(checker.b64), random.Random(args.seed + 3))
    asyncio.run(checker.drive(server.url, specs, args.soak_concurrency, t, on_done))
    warm = next(s["rss_kib"] for s in samples if s["requests"] == warm_mark)
    after_warm = [s["rss_kib"] for s in samples if s["requests"] >= warm_mark]
    end = samples[-1]["rss_kib"]
    return {
        "concurrency": args.soak_concurrency,
        **t.summary(),
        **batch_delta(before, server.batches()),
        "rss_start_kib": samples[0]["rss_kib"],
        "rss_warm_kib": warm,
        "rss_end_kib": end,
        "rss_peak_after_warm_kib": max(after_warm),
        "rss_growth_pct": 100 * (end - warm) / warm,
        "rss_growth_kib_per_request": (end - warm) / max(n - warm_mark, 1),
        "rss_samples": samples,
    }


# -- verdict and report -------------------------------------------------------------------
def failures(result: dict, args: argparse.Namespace) -> list[str]:
    out = []
    for pooling, d in result["distinct_min_diff"].items():
        if d < 10 * args.tolerance:
            out.append(
                f"two images' solo answers ({pooling}) differ by only {d:.3g}: a mix-up "
                "between them could not be told from a match"
            )
    phases = [(f"concurrency {r['concurrency']}", r) for r in result["correctness"]]
    if result.get("soak"):
        phases.append(("soak", result["soak"]))
    for name, r in phases:
        if r["correct"] != r["requests"]:
            out.append(
                f"{name}: {r['correct']} of {r['requests']} requests answered correctly "
                f"({r['lost']} lost, {r['mismatches']} mismatched rows, statuses {r['statuses']})"
            )
    if result.get("overload"):
        o = result["overload"]
        other = {k: v for k, v in o["statuses"].items() if k not in ("200", "429")}
        if o["lost"] or other:
            out.append(f"overload: {o['lost']} lost, other statuses {other}")
        if o["statuses"].get("200", 0) != o["correct"]:
            out.append(f"overload: {o['mismatches']} mismatched rows in 200 answers")
        if not o["statuses"].get("429"):
            out.append("overload: no 429 at all: the burst did not fill the queue")
        if not o["statuses"].get("200"):
            out.append("overload: no 200 at all: nothing got through")
        if o["retry_after_missing"]:
            out.append(f"overload: {o['retry_after_missing']} 429s without a valid Retry-After")
        if not o["healthy_after"]["ok"]:
            out.append(f"overload: not healthy afterwards: {o['healthy_after']}")
        if o["log_errors"]:
            out.append(f"overload server logged errors: {o['log_errors'][:3]}")
    if result.get("soak"):
        s = result["soak"]
        if s["rss_growth_pct"] >= args.max_rss_growth:
            out.append(
                f"soak: resident memory grew {s['rss_growth_pct']:.1f}% after warm-up "
                f"(limit {args.max_rss_growth}%)"
            )
    if not result["healthy_after"]["ok"]:
        out.append(f"not healthy at the end: {result['healthy_after']}")
    if result["log_errors"]:
        out.append(f"server logged errors: {result['log_errors'][:3]}")
    return out


def _ms(r: dict, status: int, q: int) -> str:
    value = r.get(f"p{q}_ms_{status}")
    return "-" if value is None else f"{value:.1f}"


def report(result: dict) -> str:
    lines = [
        result["setup"],
        "",
        "| phase | concurrency | requests | answered | lost | correct | rows checked | "
        "mismatches | 429 | 5xx | req/s | mean batch | shared forwards | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |",
    ]
    phases = [("load", r) for r in result["correctness"]]
    if result.get("overload"):
        phases.append(("overload", {**result["overload"], "concurrency": "burst"}))
    if result.get("soak"):
        phases.append(("soak", result["soak"]))
    for name, r in phases:
        batch, shared = r.get("mean_batch_images"), r.get("shared_forwards")
        lines.append(
            f"| {name} | {r['concurrency']} | {r['requests']} | {r['answered']} | {r['lost']} "
            f"| {r['correct']} | {r['rows_checked']} | {r['mismatches']} "
            f"| {r['statuses'].get('429', 0)} | {r['server_errors']} "
            f"| {r['requests'] / max(r['wall_s'], 1e-9):.0f} "
            f"| {'-' if batch is None else f'{batch:.1f}'} "
            f"| {'-' if shared is None else f'{shared:.0f}'} "
            f"| {_ms(r, 200, 50)} | {_ms(r, 200, 99)} |"
        )
    lines.append("")
    d = result["distinct_min_diff"]
    worst = max(r["max_diff"] for _, r in phases)
    lines.append(
        f"Largest |answer - solo answer| of a matching row: {worst:.3g} (tolerance "
        f"{result['tolerance']:g}); closest two images' solo answers differ by "
        + ", ".join(f"{v:.3g} ({k})" for k, v in d.items())
        + "."
    )
    if result.get("overload"):
        o = result["overload"]
        lines.append(
            f"Overload (queue {o['queue_images']} images, {o['requests']} requests at once): "
            f"429 in {_ms(o, 429, 50)} ms p50, {_ms(o, 429, 99)} ms p99 (200 in "
            f"{_ms(o, 200, 50)} / {_ms(o, 200, 99)} ms); Retry-After {o['retry_after']}; "
            f"healthy afterwards: {o['healthy_after']['ok']}."
        )
    if result.get("soak"):
        s = result["soak"]
        mib = [f"{x['rss_kib'] / 1024:.1f}" for x in s["rss_samples"]]
        lines.append(
            f"Soak RSS: start {s['rss_start_kib'] / 1024:.1f} MiB, after warm-up "
            f"{s['rss_warm_kib'] / 1024:.1f} MiB, end {s['rss_end_kib'] / 1024:.1f} MiB, growth "
            f"{s['rss_growth_pct']:+.2f}%, {s['rss_growth_kib_per_request']:+.2f} KiB per request "
            f"(peak after warm-up "
            f"{s['rss_peak_after_warm_kib'] / 1024:.1f} MiB); samples (MiB): {' '.join(mib)}."
        )
    lines.append(
        f"Healthy at the end: {result['healthy_after']['ok']}. Wall time {result['wall_s']:.0f} s."
    )
    lines.append("")
    lines.append(
        "PASS" if not result["failures"] else "FAIL:\n- " + "\n- ".join(result["failures"])
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", metavar="ID", help="model id to serve (default: a random init)")
    ap.add_argument(
        "--variant", default="mae_vit_tiny_patch8", help="random-init variant (default %(default)s)"
    )
    ap.add_argument("--img-size", type=int, default=64, help="random-init image size (default 64)")
    ap.add_argument("--depth", type=int, help="random-init encoder blocks (default: the variant's)")
    ap.add_argument(
        "--images", type=Path, metavar="DIR", help="JPEGs to use (default: crops of photos)"
    )
    ap.add_argument("--distinct", type=int, default=64, help="distinct images (default 64)")
    ap.add_argument(
        "--photo-size", type=int, default=128, help="side of the photo crops in px (default 128)"
    )
    ap.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 16, 64],
        help="correctness levels, comma-separated (default 1,16,64)",
    )
    ap.add_argument(
        "--requests", type=int, default=500, help="requests per correctness level (default 500)"
    )
    ap.add_argument(
        "--queue", type=int, default=8, help="overload: MAE_MAX_QUEUE_IMAGES (default 8)"
    )
    ap.add_argument(
        "--burst", type=int, default=256, help="overload: requests at once (0: skip; default 256)"
    )
    ap.add_argument(
        "--soak", type=int, default=20000, help="soak requests (0: skip; default 20000)"
    )
    ap.add_argument("--soak-concurrency", type=int, default=16, help="soak: in flight (default 16)")
    ap.add_argument(
        "--max-rss-growth",
        type=float,
        default=5.0,
        help="soak: largest RSS growth after warm-up, %% (default 5)",
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="largest |answer - solo answer| of one float32 value (default 1e-5)",
    )
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="the server's (default cpu)"
    )
    ap.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="float32",
        help="MAE_DTYPE (default float32: the tolerance is a float32 one)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="MAE_TORCH_THREADS (default: all cores)",
    )
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the servers (repeatable), e.g. MAE_MAX_BATCH_WAIT_MS=2",
    )
    ap.add_argument("--timeout", type=float, default=120, help="client timeout per request, s")
    ap.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /ready")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.images is not None:
        jpegs = folder_jpegs(args.images, args.distinct, args.seed)
    else:
        jpegs = crops(args.distinct, args.photo_size, args.seed)
    checker = Checker([base64.b64encode(b).decode() for b in jpegs], args.tolerance, args.timeout)
    result: dict = {"args": vars(args), "tolerance": args.tolerance}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model
        if model is None:
            torch.manual_seed(0)
            extra = {} if args.depth is None else {"depth": args.depth}
            model = str(folder / f"{args.variant}-{args.img_size}")
            mae_core.create_model(args.variant, img_size=args.img_size, **extra).save_pretrained(
                model
            )
        server = Server(model, args, folder, [])
        try:
            info = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]
            asyncio.run(checker.solo_answers(server.url))
            result["distinct_min_diff"] = checker.distinctness()
            result["correctness"] = correctness(server, checker, args)
            result["soak"] = soak(server, checker, args) if args.soak else None
            result["healthy_after"] = asyncio.run(checker.healthy(server.url))
            result["log_errors"] = server.log_errors()
        finally:
            server.stop()
        result["overload"] = overload(model, checker, args, folder) if args.burst else None
    name = args.variant if args.model is None else args.model
    depth = "" if args.depth is None or args.model else f", {args.depth} blocks"
    source = (
        str(args.images) if args.images else f"{args.photo_size} px crops of {len(photos())} photos"
    )
    result["setup"] = (
        f"{name} ({info['image_size']} px{depth}, {info['dtype']}, {info['backend']}), "
        f"{device_name(args.device, args.threads)}, torch {torch.__version__}, "
        f"{datetime.date.today()}; {len(jpegs)} distinct JPEGs ({source}), base64 JSON, "
        f"1-4 images per request, random pooling and encoding"
    )
    result["model"] = info
    result["wall_s"] = time.perf_counter() - t_start
    result["failures"] = failures(result, args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
