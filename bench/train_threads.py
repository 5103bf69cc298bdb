"""Training throughput by thread layout, on a quiet machine and on a busy one.

Runs `mae train` (a real run: data loader workers decoding real images, the optimiser,
the log) for a few steps per layout and reads its images/s from metrics.jsonl. A layout is
THREADS:WORKERS (math threads of the training process, data loader processes; "auto" is
the defaults), optionally with the OpenMP wait policy (`:passive`, `:active`) and the
precision (`:bf16`: `--precision bf16`, bf16 autocast on the CPU). With `--busy N`, N other processes
spin on the CPU while each run trains, as on a shared machine (a CI runner, a notebook
server, a second job). The layouts take turns round after round, so drift on the machine
hits all of them alike; the table gives each one's median.

    .venv/bin/python bench/train_threads.py
    .venv/bin/python bench/train_threads.py --busy 1 --layouts auto,1:1,2:1
    .venv/bin/python bench/train_threads.py --layouts 2:2,2:2:passive --rounds 3
    .venv/bin/python bench/train_threads.py --layouts auto,auto:bf16

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def spin() -> None:
    while True:
        pass


def run_layout(args: argparse.Namespace, layout: str, out: Path) -> float:
    """One short training run -> median images/s of its log records after the first."""
    parts = layout.split(":")
    cmd = [
        sys.executable, "-m", "mae_core.cli", "train", "--data", args.data,
        "--limit", str(args.limit), "--variant", args.variant, "--img-size", str(args.img_size),
        "--batch-size", str(args.batch), "--max-steps", str(args.steps), "--log-every", "5",
        "--panel-every", "0", "--device", "cpu", "--output", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if parts[0] != "auto":
        cmd += ["--threads", parts[0], "--num-workers", parts[1]]
    if "passive" in parts:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if "active" in parts:
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    if "bf16" in parts:
        cmd += ["--precision", "bf16"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    rates = [
        r["images_per_s"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "images_per_s" in r
    ]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--layouts", default="auto,2:2,2:1,1:1", help="THREADS:WORKERS[:passive][:bf16]"
    )
    ap.add_argument("--busy", type=int, default=0, help="processes spinning beside each run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the layouts (default 2)")
    ap.add_argument("--data", default="cifar10", help="training images (default cifar10)")
    ap.add_argument("--limit", type=int, default=4096, help="images (default 4096)")
    ap.add_argument("--variant", default="mae_vit_tiny_patch4", help="model (ViT-Ti/4)")
    ap.add_argument("--img-size", type=int, default=32, help="image size (default 32)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--steps", type=int, default=30, help="steps per run (default 30)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()

    layouts = args.layouts.split(",")
    rates: dict[str, list[float]] = {layout: [] for layout in layouts}
    hogs = [mp.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for h in hogs:
        h.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mae-bench-threads-") as tmp:
            for r in range(args.rounds):
                for i, layout in enumerate(layouts):
                    rate = run_layout(args, layout, Path(tmp) / f"{r}-{i}")
                    rates[layout].append(rate)
                    print(f"round {r + 1}: {layout} {rate:.0f} img/s", file=sys.stderr)
    finally:
        for h in hogs:
            h.kill()
    head = (
        f"{args.variant} at {args.img_size} px, batch {args.batch}, {args.data} "
        f"({args.limit} images), {args.steps} steps, {os.cpu_count()} cores, "
        f"{args.busy} busy process(es), {datetime.date.today()}"
    )
    print(head)
    print("| layout (threads:workers) | img/s (median) | runs |")
    print("| --- | ---: | --- |")
    for layout, rs in rates.items():
        print(f"| {layout} | {statistics.median(rs):.0f} | {', '.join(f'{x:.0f}' for x in rs)} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"setup": head, "args": vars(args), "rates": rates}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
