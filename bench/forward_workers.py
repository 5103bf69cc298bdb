"""One forward on T math threads against W forwards at once on T/W threads each: what
`mae serve`'s MAE_FORWARD_WORKERS is measured by, without HTTP or decoding.

In this one process, for each batch size, interleaved rounds of:
- `one loop`: `model.embed` on a batch, over and over, on T threads (what a user running the
  model by hand gets with torch's default threads);
- `W loops`: W Python threads, each setting its own torch thread count to T/W (torch keeps it
  per calling thread) and running the same loop, together the same number of calls.

Each row: the process's CPU time per image (user + system, all threads) and images/s, the
medians of the rounds, and the ratios one loop / W loops (above 1: the W loops are cheaper
per image, or faster). The threads of one forward meet at every layer and spin while they
wait for each other; single-thread forwards side by side never wait.

    .venv/bin/python bench/forward_workers.py
    .venv/bin/python bench/forward_workers.py --batches 1,4,8,32 --workers 2 --rounds 7
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import threading
import time
from pathlib import Path

import torch

# bench/ is on sys.path when a script here runs: share the device description
from serve import device_name

import mae_core


def loop(model: torch.nn.Module, x: torch.Tensor, calls: int, threads: int) -> None:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for _ in range(calls):
            model.embed(x)


def timed(fn) -> tuple[float, float]:
    """-> (process CPU seconds, wall seconds) of fn()."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu0, time.perf_counter() - t0


def one_loop(model, x, calls: int, threads: int) -> tuple[float, float]:
    before = torch.get_num_threads()
    try:
        return timed(lambda: loop(model, x, calls, threads))
    finally:
        torch.set_num_threads(before)


def w_loops(model, x, calls: int, threads: int, workers: int) -> tuple[float, float]:
    each = max(1, threads // workers)
    share = [calls // workers + (i < calls % workers) for i in range(workers)]

    def run() -> None:
        pool = [threading.Thread(target=loop, args=(model, x, n, each)) for n in share]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    return timed(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="local:mae/vit-tiny-tinyimagenet", help="model id")
    ap.add_argument("--batches", default="1,4,8,32", help="batch sizes (default 1,4,8,32)")
    ap.add_argument("--workers", type=int, default=2, help="forwards at once (default 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="math threads T")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--calls", type=int, default=20, help="calls per round and layout")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    if args.workers < 2 or args.threads < 1:
        ap.error("--workers must be 2 or more and --threads 1 or more")

    model = mae_core.load_model(args.model, with_decoder=False).eval()
    model.requires_grad_(False)
    size = model.config.img_size
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, 3, size, size)
        one_loop(model, x, 2, args.threads)  # warm-up, both layouts
        w_loops(model, x, args.workers, args.threads, args.workers)
        runs: dict[str, list[tuple[float, float]]] = {"one": [], "w": []}
        for _ in range(args.rounds):
            runs["one"].append(one_loop(model, x, args.calls, args.threads))
            runs["w"].append(w_loops(model, x, args.calls, args.threads, args.workers))
        images = args.calls * batch
        row: dict = {"batch": batch}
        for key, samples in runs.items():
            row[f"{key}_cpu_ms_per_img"] = statistics.median(1000 * c / images for c, _ in samples)
            row[f"{key}_img_s"] = statistics.median(images / w for _, w in samples)
        row["cpu_ratio"] = row["one_cpu_ms_per_img"] / row["w_cpu_ms_per_img"]
        row["img_s_ratio"] = row["w_img_s"] / row["one_img_s"]
        rows.append(row)

    each = max(1, args.threads // args.workers)
    head = (
        f"{args.model} ({size} px, fp32), {device_name('cpu', args.threads)}, torch "
        f"{torch.__version__}, {datetime.date.today()}; one loop on {args.threads} threads "
        f"against {args.workers} loops on {each} each; {args.calls} calls per round, "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(head)
    print(
        "| batch | one loop CPU ms/img | W loops CPU ms/img | one / W (CPU) "
        "| one loop img/s | W loops img/s | W / one (img/s) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['batch']} | {r['one_cpu_ms_per_img']:.2f} | {r['w_cpu_ms_per_img']:.2f} "
            f"| {r['cpu_ratio']:.2f} | {r['one_img_s']:.0f} | {r['w_img_s']:.0f} "
            f"| {r['img_s_ratio']:.2f} |"
        )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps({"setup": head, "args": vars(args), "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
