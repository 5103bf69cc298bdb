"""WebDataset shards: how long `mae shard` takes to write a data set, and how long every
training process then spends indexing the shards at start.

The peer, in the same run: the same shards indexed without the `dataset.json` that
`mae shard` writes, as for shards written by another tool: then each image's header is
also opened once to check it. The ratio is that time over ours (above 1: we are faster).
Shards are read from the page cache after the first pass; on network storage the
difference grows with the cost of opening each image.

    .venv/bin/python bench/shards.py                       # cifar10:train, 5000 per shard
    .venv/bin/python bench/shards.py --source tinyimagenet:train --max-images 10000
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mae_core.shard import write_shards
from mae_core.sources import index_source


def timed_index(pattern: str, repeats: int) -> tuple[int, float]:
    times, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = len(index_source(pattern))
        times.append(time.perf_counter() - t0)
    return n, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="cifar10:train", help="any --data source")
    ap.add_argument("--max-images", type=int, default=5000, help="images per shard")
    ap.add_argument("--repeats", type=int, default=3, help="index timings (median)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        t0 = time.perf_counter()
        summary = write_shards(args.source, out, max_images=args.max_images, progress=False)
        write_s = time.perf_counter() - t0
        n, ours = timed_index(summary.pattern, args.repeats)
        shutil.move(out / "dataset.json", Path(tmp) / "dataset.json")
        _, peer = timed_index(summary.pattern, args.repeats)
    print(
        f"{args.source}, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; median of {args.repeats}"
    )
    print("| images | shards | MB | write s | index s (ours) | index s (no dataset.json) | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {n} | {len(summary.shard_files)} | {summary.total_bytes / 1e6:.1f} | {write_s:.1f} "
        f"| {ours:.2f} | {peer:.2f} | {peer / ours:.2f} |"
    )


if __name__ == "__main__":
    main()
