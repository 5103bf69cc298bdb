"""Evaluating a model: its frozen features (k-NN, linear probe) and its reconstructions,
each beside a random init of the same architecture, from model ids and data sources.

    result = evaluate_sources("local:mae/vit-tiny-tinyimagenet", "tinyimagenet")
    print(format_table(result))

A randomly initialised encoder of the same architecture is a strong baseline for k-NN on
small images, so it is always reported unless asked not to: the gain over it is what
pretraining bought. The scoring itself is `probe.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .distributed import autocast as precision_autocast
from .distributed import uses_bf16
from .errors import DeviceMemoryError, MAEValueError
from .export import encoder_forward
from .fused import describe
from .model import MaskedAutoencoder
from .probe import (
    KNN_OPTIONS,
    LINEAR_OPTIONS,
    METHODS,
    POOLINGS,
    check_inputs,
    check_pooling,
    extract_pooled,
    knn_classify,
    linear_probe,
    model_device,
)


def evaluate_model(
    model: MaskedAutoencoder,
    train_dataset: Dataset,
    test_dataset: Dataset,
    methods: Sequence[str] = METHODS,
    poolings: Sequence[str] = ("cls",),
    baseline: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    backend: str = "torch",
    precision: str = "auto",
    **probe_kwargs: Any,
) -> dict[str, Any]:
    """k-NN and/or linear-probe accuracy of `model`'s frozen features, per pooling, and of
    the same architecture randomly initialised (seeded by `seed`) when `baseline`.

    `backend` runs the encoders' forward (one of `export.BACKENDS`): torch (with fused
    encoder layers on the CPU, in fp32 or bf16, `mae_core.fused`, as the server runs it), or
    their ONNX export by ONNX Runtime on the CPU, in fp32 or int8, to measure what a serving
    backend costs in accuracy. The baseline runs under the same backend. `precision` is the
    torch forward's (as `mae train --precision`: auto is bf16 autocast on CUDA, fp32
    elsewhere; bf16 asks for bf16 on the CPU too: the fused layers in bf16 where they apply,
    else autocast).

    `probe_kwargs`: `k`, `temperature`, `chunk` go to `knn_classify`; `epochs`, `lr`,
    `weight_decay`, `probe_batch_size` to `linear_probe`. Features are extracted once per
    (model, pooling). The result is JSON-serialisable; baseline fields are None without one.
    """
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {tuple(methods)}")
    if not poolings:
        raise ValueError(f"poolings must be a non-empty subset of {POOLINGS}")
    for p in poolings:
        check_pooling(p)
    check_precision(precision, backend)
    unknown = set(probe_kwargs) - KNN_OPTIONS - LINEAR_OPTIONS
    if unknown:
        raise TypeError(
            f"unknown probe option(s) {sorted(unknown)}; known: {sorted(KNN_OPTIONS | LINEAR_OPTIONS)}"
        )
    for name, ds in (("train", train_dataset), ("test", test_dataset)):
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{name} dataset is empty")
    knn_kw = {k: v for k, v in probe_kwargs.items() if k in KNN_OPTIONS}
    lin_kw = {
        k: v for k, v in probe_kwargs.items() if k in LINEAR_OPTIONS and k != "probe_batch_size"
    }
    if "probe_batch_size" in probe_kwargs:
        lin_kw["batch_size"] = probe_kwargs["probe_batch_size"]
    if device is not None:
        model.to(device)
    dev = model_device(model)

    models = {"": model}
    if baseline:
        # Own RNG state: building the baseline must not shift the caller's random stream.
        random_init = random_twin(model, seed, with_decoder=False)
        models["baseline_"] = random_init.to(device=dev, dtype=next(model.parameters()).dtype)

    dtype = torch.bfloat16 if uses_bf16(precision, dev) else torch.float32
    kw = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    kw["precision"] = precision
    features, forwards = {}, {"forward": None, "baseline_forward": None}
    for prefix, net in models.items():
        # Built in eval mode, as extract_pooled runs it (the baseline twin comes in training
        # mode, and a fused forward is checked, and refused, as the mode is).
        was_training = net.training
        net.eval()
        kw["forward"] = encoder_forward(net, backend, dtype=dtype)
        net.train(was_training)
        forwards[prefix + "forward"] = (
            describe(kw["forward"], dtype) if backend == "torch" else backend
        )
        xtr, ytr = extract_pooled(net, train_dataset, poolings, **kw)
        xte, yte = extract_pooled(net, test_dataset, poolings, **kw)
        features[prefix] = (xtr, ytr, xte, yte)
    c = check_inputs(xtr[poolings[0]], ytr, xte[poolings[0]], yte, None)
    sizes = {"train_size": len(ytr), "test_size": len(yte), "num_classes": c}

    rows: list[dict[str, Any]] = []
    for pooling in poolings:
        for m in methods:
            row: dict[str, Any] = {
                "method": m,
                "pooling": pooling,
                "baseline_top1": None,
                "baseline_top5": None,
            }
            for prefix, (xtr, ytr, xte, yte) in features.items():
                if m == "knn":
                    r = knn_classify(xtr[pooling], ytr, xte[pooling], yte, num_classes=c, **knn_kw)
                    row.update(k=r["k"], temperature=r["temperature"])
                else:
                    r = linear_probe(
                        xtr[pooling],
                        ytr,
                        xte[pooling],
                        yte,
                        seed=seed,
                        device=dev,
                        num_classes=c,
                        **lin_kw,
                    )
                    row.update(epochs=r["epochs"], lr=r["lr"], probe_batch_size=r["batch_size"])
                    row[prefix + "train_loss"] = r["train_loss"]
                row[prefix + "top1"] = r["top1"]
                row[prefix + "top5"] = r["top5"]
            rows.append(row)

    cfg = model.config
    summary = {
        "variant": cfg.variant,
        **{
            f: getattr(cfg, f)
            for f in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
        },
        "source": str(model.source_info.get("model_id", "")),
    }
    return {
        "model": summary,
        "backend": backend,
        "precision": precision,
        **forwards,
        "results": rows,
        **sizes,
    }


def check_precision(precision: str, backend: str = "torch") -> None:
    """`precision` is one of config.PRECISIONS, and bf16 only with the torch backend."""
    from .config import PRECISIONS, _one_of

    ok, message = _one_of("precision", precision, PRECISIONS)
    if not ok:
        raise MAEValueError(message)
    if precision == "bf16" and backend != "torch":
        raise MAEValueError(
            f"--precision bf16 is the torch forward's; the {backend} backend has its own "
            "(drop one of them)"
        )


def random_twin(model: MaskedAutoencoder, seed: int, with_decoder: bool) -> MaskedAutoencoder:
    """The same architecture with random weights drawn from `seed`, on the CPU. The
    encoder is the same with or without the decoder (built first, then dropped), so every
    evaluation compares against one twin; the caller's random stream is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = MaskedAutoencoder(model.config, with_decoder=True)
    return twin if with_decoder else twin.drop_decoder()


def reconstruction_loss(
    model: MaskedAutoencoder,
    dataset: Dataset,
    mask_ratio: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
) -> float:
    """The MAE loss (MSE on the masked patches, against per-patch-normalised pixels when the
    model was trained so) averaged over every image of `dataset`, with masks drawn from a
    generator seeded by `seed`: the same seed and dataset give every model the same masks.
    The forward runs under `precision` (auto: bf16 autocast on CUDA, fp32 elsewhere)."""
    model._require_decoder("reconstruction_loss")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty: no images to reconstruct")
    dev = model_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    from tqdm.auto import tqdm

    gen = torch.Generator(device=dev).manual_seed(seed)
    autocast = precision_autocast(precision, dev)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        bar = tqdm(loader, desc="reconstruction", unit="batch", disable=None if progress else True)
        for imgs, _ in bar:
            with torch.inference_mode(), autocast:
                out = model(imgs.to(dev), mask_ratio, generator=gen)
            total += float(out.loss) * len(imgs)
            count += len(imgs)
    finally:
        model.train(was_training)
    return total / count


def evaluate_reconstruction(
    model: MaskedAutoencoder,
    dataset: Dataset,
    mask_ratio: float | None = None,
    baseline: bool = True,
    seed: int = 0,
    **kw: Any,
) -> dict[str, Any]:
    """`reconstruction_loss` of `model` and, when `baseline`, of its random-init twin (encoder
    and decoder, seeded by `seed`) on the same images and masks."""
    ratio = model.config.mask_ratio if mask_ratio is None else mask_ratio
    result: dict[str, Any] = {
        "mask_ratio": ratio,
        "images": len(dataset),  # type: ignore[arg-type]
        "loss": reconstruction_loss(model, dataset, ratio, seed, **kw),
        "baseline_loss": None,
    }
    if baseline:
        twin = random_twin(model, seed, with_decoder=True)
        twin.to(device=model_device(model), dtype=next(model.parameters()).dtype)
        result["baseline_loss"] = reconstruction_loss(twin, dataset, ratio, seed, **kw)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of an `evaluate_model` result: one row per (method, pooling)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    backend = result.get("backend", "torch")
    # Results written before the forward was recorded said only their precision.
    forward = result.get("forward") or ("bf16" if result.get("precision") == "bf16" else None)
    lines = [
        f"{result['train_size']} train / {result['test_size']} test images, "
        f"{result['num_classes']} classes"
        + ("" if backend == "torch" else f"; features by {backend}")
        + (f"; torch forward: {forward}" if forward and backend == "torch" else ""),
        "",
        "| method | pooling | top-1 | top-5 | random-init top-1 | gain (points) |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in result["results"]:
        name = f"k-NN (k={r['k']})" if r["method"] == "knn" else "linear probe"
        base = r.get("baseline_top1")
        gain = "-" if base is None else f"{r['top1'] - base:+.2f}"
        lines.append(
            f"| {name} | {r['pooling']} | {pct(r['top1'])} | {pct(r['top5'])} | {pct(base)} | {gain} |"
        )
    rec = result.get("reconstruction")
    if rec:
        base = rec["baseline_loss"]
        versus = (
            ""
            if base is None
            else f"; random-init twin {base:.4f} (ratio {rec['loss'] / base:.2f})"
        )
        lines += [
            "",
            f"reconstruction loss on the {rec['images']} test images at mask ratio "
            f"{rec['mask_ratio']:g}: {rec['loss']:.4f}{versus}",
        ]
    return "\n".join(lines)


def evaluate_sources(
    model_id: str,
    data: str,
    test_data: str | None = None,
    *,
    revision: str | None = None,
    methods: Sequence[str] = METHODS,
    poolings: Sequence[str] = ("cls",),
    limit: int | None = None,
    baseline: bool = True,
    reconstruction: bool = True,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | None = None,
    seed: int = 0,
    backend: str = "torch",
    precision: str = "auto",
) -> dict[str, Any]:
    """`mae eval`: load `model_id`, evaluate its frozen features on labelled images (train
    on `data`, test on `test_data`, by default the held-out split of a named source) and,
    when it has its decoder and `reconstruction`, its reconstruction loss on the test
    images. The result is `evaluate_model`'s plus "reconstruction", "model_id",
    "revision", "train_data" and "test_data"; JSON-serialisable.

    With an ONNX Runtime `backend` the features are computed on the CPU (device "auto"
    means the CPU then; a GPU is refused) and the reconstruction loss by torch."""
    from .data import EvalDataset
    from .distributed import resolve_device
    from .export import BACKENDS, require_onnxruntime
    from .hub import load_model
    from .sources import DataError, held_out_source, index_source, train_split

    if backend not in BACKENDS:
        raise MAEValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    check_precision(precision, backend)
    if backend != "torch":
        if device not in (None, "auto", "cpu"):
            raise MAEValueError(f"the {backend} backend runs on the CPU: use --device cpu")
        device = "cpu"
        require_onnxruntime()
    if device:
        resolve_device(device)  # a missing GPU fails before any data is read
    from .classify import resolve_classifier

    if resolve_classifier(model_id, revision) is not None:
        raise MAEValueError(
            f"{model_id} is a fine-tuned classifier: k-NN and the linear probe score an "
            "encoder's frozen features; score the classifier with --method classifier"
        )
    test_source = test_data or held_out_source(data)
    if test_source is None:
        raise DataError(
            f"{data} has no held-out split of its own: give one with --test-data SOURCE"
        )
    train_source = train_split(data)
    if test_source == train_source:
        raise DataError(
            f"{train_source} is the held-out split itself: train on another, or give --test-data"
        )
    indexes = {}
    for role, source in (("--data", train_source), ("--test-data", test_source)):
        idx = indexes[role] = index_source(source, limit)
        if not idx.classes or min(idx.labels) < 0:
            raise DataError(
                f"{role} {source} has no labels: evaluation needs one subfolder per class"
            )
    train_idx, test_idx = indexes["--data"], indexes["--test-data"]
    if train_idx.classes != test_idx.classes:
        only = sorted(set(train_idx.classes) ^ set(test_idx.classes))[:5]
        raise DataError(
            f"train and test classes differ ({len(train_idx.classes)} vs {len(test_idx.classes)}"
            + (f"; e.g. {', '.join(only)}" if only else "; same names, different order")
            + ")"
        )
    keep_decoder = None if reconstruction else False  # None: if it has one
    model = load_model(model_id, revision, with_decoder=keep_decoder, device=device)
    train_ds, test_ds = EvalDataset(train_idx, model.config), EvalDataset(test_idx, model.config)
    loader = {"batch_size": batch_size, "num_workers": num_workers}
    try:
        result = evaluate_model(
            model,
            train_ds,
            test_ds,
            methods=methods,
            poolings=poolings,
            baseline=baseline,
            seed=seed,
            backend=backend,
            precision=precision,
            **loader,
        )
        if model.has_decoder and reconstruction:
            result["reconstruction"] = evaluate_reconstruction(
                model, test_ds, baseline=baseline, seed=seed, precision=precision, **loader
            )
    except torch.OutOfMemoryError as e:
        raise DeviceMemoryError(
            f"out of device memory at --batch-size {batch_size}: give a smaller one"
        ) from e
    result.update(
        model_id=model_id,
        revision=revision,
        train_data=train_ds.index.name,
        test_data=test_ds.index.name,
    )
    return result
