"""The encoder in ONNX Runtime (fp32, int8), torch with fused encoder layers (both ways), and
torch in bf16 (autocast, fused), against torch eager in fp32: speed and what lower
precisions cost.

Exports the model (`mae_core.export.export_onnx`, checked against torch as it writes),
then, in this one process with the same number of math threads for all of them:

1. speed: `forward_features` in torch under `inference_mode` against the fused forward
   the torch backend serves on the CPU (`mae_core.fused`, `torch-fused`: oneDNN's linears
   where torch has them, on packed weights since 2026-12-03), the other fused way in
   float32 (`torch-fused-kernel`, the encoder-layer kernel, when `torch-fused` is not that
   already), the ONNX Runtime
   session of `model.onnx` and of `model_quantized.onnx` (and, with `--torch-bf16`, torch
   under bf16 autocast and the fused forward in bf16, `torch-fused-bf16`, what
   `mae serve --dtype bfloat16` runs), at each batch size, in interleaved rounds (torch,
   fp32, int8, torch, ...) so that drift on a shared machine hits all alike; the median
   seconds per call of each, and ratios (torch / it: above 1, it is faster than torch in
   fp32);
2. quality (`--knn`): weighted k-NN top-1 on labelled images (default CIFAR-10, an evenly
   strided subset) from each runtime's features, mean pooling: what int8 (or bf16) costs
   in points.

    .venv/bin/python bench/backends.py
    .venv/bin/python bench/backends.py --model local:mae/vit-tiny-tinyimagenet --knn --limit 5000
    .venv/bin/python bench/backends.py --torch-bf16 --knn
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# bench/ is on sys.path when a script here runs: share the device description
from serve import device_name

import mae_core
from mae_core.data import EvalDataset
from mae_core.export import (
    INPUT,
    ONNX_FILE,
    OUTPUT,
    QUANTIZED_FILE,
    export_onnx,
    photo_batch,
    session,
)
from mae_core.fused import KERNEL, fused_encoder
from mae_core.probe import knn_classify
from mae_core.sources import index_source


def bf16_features(model, x: torch.Tensor) -> torch.Tensor:
    """`forward_features` under bf16 autocast, as the torch backend runs `--dtype bfloat16`."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return model.forward_features(x).float()


def speed(
    model, sessions: dict, batches: list[int], rounds: int, calls: int, bf16: bool = False
) -> list[dict]:
    cfg = model.config
    cpu = torch.device("cpu")
    fused, said = fused_encoder(model, cpu, torch.float32, pack=True)  # as the server packs
    print(f"torch-fused: {said}" if fused else f"torch-fused left out: {said}")
    kernel = None
    if fused is None or fused.impl != KERNEL:
        kernel, said = fused_encoder(model, cpu, torch.float32, KERNEL)
        print(f"torch-fused-kernel: {said}" if kernel else f"torch-fused-kernel left out: {said}")
    fused_bf16 = None
    if bf16:
        fused_bf16, said = fused_encoder(model, cpu, torch.bfloat16)
        if fused_bf16 is None:
            print(f"torch-fused-bf16 left out: {said}")
    rows = []
    for b in batches:
        x = torch.randn(b, 3, cfg.img_size, cfg.img_size)
        xn = x.numpy()
        runners = {
            "torch": lambda x=x: model.forward_features(x),
            **({"torch-fused": lambda x=x: fused(x)} if fused else {}),
            **({"torch-fused-kernel": lambda x=x: kernel(x)} if kernel else {}),
            **({"torch-bf16": lambda x=x: bf16_features(model, x)} if bf16 else {}),
            **({"torch-fused-bf16": lambda x=x: fused_bf16(x)} if fused_bf16 else {}),
            **{
                name: (lambda s=s, xn=xn: s.run([OUTPUT], {INPUT: xn}))
                for name, s in sessions.items()
            },
        }
        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            for fn in runners.values():
                fn()  # warm-up
            for _ in range(rounds):
                for name, fn in runners.items():
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    times[name].append((time.perf_counter() - t0) / calls)
        med = {name: statistics.median(t) for name, t in times.items()}
        row = {"batch": b, **{f"{k}_ms": 1000 * v for k, v in med.items()}}
        row["torch_fused_impl"] = fused.impl if fused else None
        for name in list(runners)[1:]:
            row[f"{name}_speedup"] = med["torch"] / med[name]
        rows.append(row)
    return rows


def features(
    model, sessions: dict, dataset, batch: int, bf16: bool = False
) -> tuple[dict, np.ndarray]:
    """Mean-pooled features of every image by torch (and torch in bf16) and by each session."""
    from torch.utils.data import DataLoader

    out: dict[str, list[np.ndarray]] = {"torch": [], **{n: [] for n in sessions}}
    if bf16:
        out["torch-bf16"] = []
    labels = []
    with torch.inference_mode():
        for x, y in DataLoader(dataset, batch_size=batch, num_workers=0):
            out["torch"].append(model.forward_features(x)[:, 1:].mean(1).numpy())
            if bf16:
                out["torch-bf16"].append(bf16_features(model, x)[:, 1:].mean(1).numpy())
            for name, s in sessions.items():
                out[name].append(s.run([OUTPUT], {INPUT: x.numpy()})[0][:, 1:].mean(1))
            labels.append(np.asarray(y))
    return {k: np.concatenate(v) for k, v in out.items()}, np.concatenate(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="local:mae/vit-tiny-tinyimagenet", help="model id")
    ap.add_argument("--batches", default="1,16,64", help="batch sizes (default 1,16,64)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--calls", type=int, default=5, help="calls per round and runtime")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="math threads")
    ap.add_argument(
        "--torch-bf16",
        action="store_true",
        help="also torch under bf16 autocast (mae serve --dtype bfloat16)",
    )
    ap.add_argument("--knn", action="store_true", help="also k-NN top-1 on --data")
    ap.add_argument("--data", default="cifar10", help="labelled source (train/test splits)")
    ap.add_argument("--limit", type=int, default=5000, help="images per split for --knn")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = mae_core.load_model(args.model, with_decoder=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        images = photo_batch(model)
        result = export_onnx(model, tmp, images=images, quantize="int8", source=args.model)
        sessions = {
            "onnxruntime": session(result.folder / ONNX_FILE, args.threads),
            "onnxruntime-int8": session(result.folder / QUANTIZED_FILE, args.threads),
        }
        batches = [int(b) for b in args.batches.split(",")]
        rows = speed(model, sessions, batches, args.rounds, args.calls, args.torch_bf16)
        knn = None
        if args.knn:
            from mae_core.sources import held_out_source, train_split

            train = EvalDataset(index_source(train_split(args.data), args.limit), model.config)
            test = EvalDataset(index_source(held_out_source(args.data), args.limit), model.config)
            tr, ytr = features(model, sessions, train, 64, args.torch_bf16)
            te, yte = features(model, sessions, test, 64, args.torch_bf16)
            knn = {
                name: knn_classify(
                    torch.from_numpy(tr[name]),
                    torch.from_numpy(ytr).long(),
                    torch.from_numpy(te[name]),
                    torch.from_numpy(yte).long(),
                )["top1"]
                for name in tr
            }

    head = (
        f"{args.model}, {device_name('cpu', args.threads)}, torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}, {datetime.date.today()}; "
        f"median of {args.rounds} interleaved rounds of {args.calls} calls; export checks: "
        + "; ".join(c.line() for c in result.checks)
    )
    print(head)
    others = [k[: -len("_speedup")] for k in rows[0] if k.endswith("_speedup")]
    print("| batch | torch ms | " + " | ".join(f"{o} ms (x)" for o in others) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in others) + " |")
    for r in rows:
        cells = [f"{r[o + '_ms']:.1f} ({r[o + '_speedup']:.2f})" for o in others]
        print(f"| {r['batch']} | {r['torch_ms']:.1f} | " + " | ".join(cells) + " |")
    if knn:
        print(
            f"k-NN top-1 (k=20, mean pooling), {args.data}, {args.limit} train / {args.limit} "
            "test: " + ", ".join(f"{k} {v:.2f}" for k, v in knn.items())
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"setup": head, "args": vars(args), "rows": rows, "knn": knn}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
