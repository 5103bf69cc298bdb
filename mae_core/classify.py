"""Fine-tuned classifiers once trained (`mae finetune` writes them): scoring one on
labelled images (`mae eval MODEL --method classifier`), its confusion matrix as a PNG, and
what `mae info` says about it. Any model id that `load_model` takes works here too, as
long as it names a classifier folder (a `config.json` with `num_classes` and
`mae_finetune`), so a classifier pulled from a hub is scored the same way.

    result = evaluate_classifier("runs/ft/final", "cifar10")   # the 10,000 test images
    print(format_classifier(result))
    plot_confusion(result, "confusion.png")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import ENCODER_FILE
from .config import MAEConfig
from .errors import MAEValueError, MissingDependency
from .files import sha256_file

log = logging.getLogger("mae_core.classify")


def resolve_classifier(
    model_id: str | os.PathLike[str], revision: str | None = None
) -> Path | None:
    """The local folder of `model_id` when it is a fine-tuned classifier, else None (an MAE,
    an encoder, a weights file). A hub id is downloaded (and verified) to find out."""
    from .finetune import is_classifier_dir
    from .hub import parse_model_id, resolve

    folder = resolve(parse_model_id(model_id, revision))
    return folder if folder.is_dir() and is_classifier_dir(folder) else None


def preprocessing(config: dict[str, Any]) -> MAEConfig:
    """The MAEConfig a classifier's images are prepared with (size, crop, mean, std), from
    its `config.json` (`model_args` and timm's `pretrained_cfg`)."""
    args, pre = config["model_args"], config.get("pretrained_cfg", {})
    fields = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
    kept = {k: args[k] for k in fields if k in args}
    for key in ("crop_pct", "interpolation"):
        if key in pre:
            kept[key] = pre[key]
    for key in ("mean", "std"):
        if key in pre:
            kept[key] = tuple(pre[key])
    return MAEConfig(**kept, decoder_depth=0)


def scored_source(data: str, test_data: str | None = None) -> str:
    """The images a classifier is scored on: `test_data` when given; for a named source
    without a split (`cifar10`), its held-out split; else `data` itself (a folder)."""
    from .sources import held_out_source

    if test_data:
        return test_data
    held_out = held_out_source(data) if ":" not in data else None
    return held_out or data


def evaluate_classifier(
    model_id: str | os.PathLike[str],
    data: str,
    test_data: str | None = None,
    *,
    revision: str | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """`mae eval MODEL --method classifier`: top-1 and top-5 (in %) of a fine-tuned
    classifier on labelled images (`scored_source`), per class, and its confusion matrix
    (rows: true class, columns: predicted, in the classifier's label order). The data's
    class folders are matched to the classifier's `label_names` by name; classes it does
    not know are an error. JSON-serialisable."""
    from .distributed import resolve_device
    from .finetune import accuracy, load_classifier
    from .sources import DataError, index_source

    dev = resolve_device(device or "auto")  # a missing GPU fails before any data is read
    folder = resolve_classifier(model_id, revision)
    if folder is None:
        raise MAEValueError(
            f"{model_id} is not a fine-tuned classifier (no num_classes and mae_finetune in "
            "its config.json): --method classifier scores the output of mae finetune; score an "
            "encoder's frozen features with --method knn, linear or all"
        )
    model, config = load_classifier(folder)
    weights_sha256 = sha256_file(folder / ENCODER_FILE)
    labels = list(config.get("label_names") or [])
    if len(labels) != config["num_classes"]:
        labels = [str(i) for i in range(config["num_classes"])]
    source = scored_source(data, test_data)
    trained_on = str(((config.get("mae_finetune") or {}).get("data") or {}).get("source", ""))
    on_training_data = bool(trained_on) and _base_source(source) == _base_source(trained_on)
    if on_training_data:
        log.warning(
            "%s is the data the classifier was fine-tuned on (%s): its accuracy there says "
            "little about new images; give held-out images with --test-data",
            source,
            trained_on,
        )
    index = index_source(source, limit)
    if not index.classes or min(index.labels, default=-1) < 0:
        raise DataError(f"{source} has no labels: scoring needs one subfolder per class")
    unknown = [c for c in index.classes if c not in labels]
    if unknown:
        raise DataError(
            f"{source} has classes the classifier does not know: {', '.join(unknown[:5])}"
            + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
            + f"; it knows {len(labels)}: {', '.join(labels[:10])}"
            + (", ..." if len(labels) > 10 else "")
        )
    score = accuracy(
        model.to(dev),
        index,
        preprocessing(config),
        dev,
        batch_size=batch_size,
        num_workers=num_workers,
        label_of=[labels.index(c) for c in index.classes],
        num_classes=len(labels),
    )
    confusion = score["confusion"]
    per_class = [
        {"label": name, "images": sum(row), "top1": 100 * row[i] / sum(row)}
        for i, (name, row) in enumerate(zip(labels, confusion, strict=True))
        if sum(row)
    ]
    return {
        "method": "classifier",
        "model_id": str(model_id),
        "revision": revision,
        "test_data": index.name,
        "test_size": score["images"],
        "num_classes": len(labels),
        "top1": 100 * score["top1"],
        "top5": 100 * score["top5"],
        "on_training_data": on_training_data,
        "weights_sha256": weights_sha256,
        "label_names": labels,
        "per_class": per_class,
        "confusion": confusion,
        "finetune": config.get("mae_finetune", {}),
    }


def _base_source(source: str) -> str:
    """A source without its `[:N]` subset and with a named source's split spelt out:
    `cifar10:train[:200]` and `cifar10` are the same images' source."""
    from .sources import train_split

    return train_split(source.partition("[")[0]).rstrip("/")


def most_confused(result: dict[str, Any], n: int = 5) -> list[tuple[str, str, int, float]]:
    """The `n` largest off-diagonal cells: (true, predicted, images, % of the true class)."""
    labels, confusion = result["label_names"], result["confusion"]
    cells = [
        (labels[i], labels[j], count, 100 * count / sum(row))
        for i, row in enumerate(confusion)
        for j, count in enumerate(row)
        if i != j and count
    ]
    return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))[:n]


def format_classifier(result: dict[str, Any]) -> str:
    """The score as text: top-1 and top-5, per class, the most frequent confusions."""
    lines = [
        f"{result['test_size']} images of {result['test_data']}, {result['num_classes']} classes"
        + (
            " (the fine-tuning data itself, not held out)" if result.get("on_training_data") else ""
        ),
        "",
        "| method | top-1 | top-5 |",
        "|---|--:|--:|",
        f"| fine-tuned classifier | {result['top1']:.2f} | {result['top5']:.2f} |",
        "",
        "per class (top-1 %): "
        + ", ".join(f"{c['label']} {c['top1']:.1f}" for c in result["per_class"]),
    ]
    confused = most_confused(result)
    if confused:
        lines.append(
            "most confused: " + ", ".join(f"{a} as {b} {k} ({p:.1f}%)" for a, b, k, p in confused)
        )
    return "\n".join(lines)


def confusion_percent(result: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """The classes that have images, and the confusion matrix between them, each row in %
    of its class's images: the diagonal is each class's top-1. A row need not add up to
    100 when some images went to classes with no images of their own."""
    confusion = torch.tensor(result["confusion"], dtype=torch.float64)
    seen = [i for i in range(len(confusion)) if confusion[i].sum() > 0]
    rows = confusion[seen]
    pct = (100 * rows / rows.sum(1, keepdim=True))[:, seen]
    return [result["label_names"][i] for i in seen], pct


def plot_confusion(result: dict[str, Any], output: str | os.PathLike[str]) -> Path:
    """The confusion matrix of an `evaluate_classifier` result as a PNG, each row as % of
    its true class; the classes with images only, so a subset stays readable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency(
            "the confusion matrix needs matplotlib: pip install 'mae-hub[plot]' (or matplotlib)"
        ) from None
    names, pct = confusion_percent(result)
    k = len(names)
    side = min(max(4.5, 0.45 * k + 2.5), 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=100)
    image = ax.imshow(pct.numpy(), cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                value = float(pct[i, j])
                colour = "white" if value > 50 else "black"
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{result['model_id']}: top-1 {result['top1']:.1f}% on {result['test_size']} images",
        fontsize=9,
    )
    from .curve import save_figure

    return save_figure(fig, output)


def describe_classifier(folder: Path, model_id: str, hashes: bool = True) -> dict[str, Any]:
    """`mae info` of a classifier folder: architecture, head, labels, where it came from
    and its held-out accuracy, the weights' sha256."""
    from .finetune import load_classifier
    from .info import weight_files

    model, config = load_classifier(folder)
    c = preprocessing(config)
    head = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("head.", "fc_norm."))
    )
    total = sum(p.numel() for p in model.parameters())
    weights = weight_files(sorted(folder.glob("*.safetensors")), hashes)
    recipe = config.get("mae_finetune", {})
    return {
        "model_id": model_id,
        "kind": "classifier",
        "img_size": c.img_size,
        "patch_size": c.patch_size,
        "num_patches": (c.img_size // c.patch_size) ** 2,
        "in_chans": c.in_chans,
        "encoder": {"embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads},
        "head": {
            "num_classes": config["num_classes"],
            "global_pool": config.get("global_pool", "avg"),
            "params": head,
        },
        "params": {"total": total, "encoder": total - head, "head": head},
        "label_names": config.get("label_names", []),
        "finetune": recipe,
        "source": str(folder),
        "format": "timm classifier",
        "weights": weights,
    }


def format_classifier_info(d: dict[str, Any]) -> str:
    """A `describe_classifier` result as two aligned columns."""
    from .info import aligned, human

    enc, head, recipe = d["encoder"], d["head"], d["finetune"]
    g = d["img_size"] // d["patch_size"]
    labels = d["label_names"]
    origin = recipe.get("from") or {}
    if recipe.get("from_scratch"):
        came_from = "random initialisation (mae finetune --from-scratch: the baseline)"
    else:
        rev = origin.get("revision")
        came_from = f"{origin.get('model', '?')}" + (f" @ {rev[:12]}" if rev else "")
        if origin.get("encoder_sha256"):
            came_from += f" (encoder sha256:{origin['encoder_sha256'][:16]})"
    acc = recipe.get("accuracy")
    rows = [
        ("model", d["model_id"]),
        ("kind", "fine-tuned ViT classifier (mae finetune; timm loads it with its head)"),
        (
            "image",
            f"{d['img_size']}x{d['img_size']} px, patch {d['patch_size']} "
            f"({g}x{g} = {d['num_patches']} patches), {d['in_chans']} channels",
        ),
        (
            "encoder",
            f"{enc['embed_dim']}-d, {enc['depth']} blocks, {enc['num_heads']} heads: "
            f"{human(d['params']['encoder'])} parameters",
        ),
        (
            "head",
            f"{head['num_classes']} classes, global {head['global_pool']} pooling, fc_norm and a "
            f"linear layer: {human(head['params'])} parameters",
        ),
        (
            "labels",
            ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else ""),
        ),
        ("fine-tuned from", came_from),
        (
            "trained",
            f"{recipe.get('steps', '?')} steps ({recipe.get('epochs', '?')} epochs) on "
            f"{(recipe.get('data') or {}).get('source', '?')}"
            + (
                ""
                if recipe.get("schedule_complete", True)
                else ", stopped before the schedule's end"
            ),
        ),
        (
            "held-out",
            "not scored"
            if not acc
            else f"top-1 {100 * acc['top1']:.2f}%, top-5 {100 * acc['top5']:.2f}% on "
            f"{acc['images']} images of {recipe.get('val_data') or '?'}",
        ),
        ("source", f"{d['source']} ({d['format']})"),
    ]
    return aligned(rows, d["weights"])
