"""`mae curve RUN`: the training curve of a run (loss and learning rate against epochs; for
a run of `mae finetune` also its held-out accuracy per epoch) as a PNG, from the run's
`metrics.jsonl`. Needs matplotlib (`pip install 'mae-hub[plot]'`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import MAEValueError, MissingDependency
from .runlog import read_records


def save_figure(fig: Any, output: str | os.PathLike[str]) -> Path:
    """Lay out a matplotlib figure, write it as `output` (its folder made) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def read_metrics(run: str | os.PathLike[str]) -> list[dict]:
    """The step records of `run`/metrics.jsonl, one per step (a resumed run may log a step
    twice: the last record wins), in step order. Blank or torn lines are skipped."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: is {run} a run folder of mae train?")
    by_step: dict[int, dict] = {}
    for rec in read_records(path):
        if (
            "event" not in rec  # e.g. a skipped non-finite step: its loss is "nan"
            and isinstance(rec.get("step"), int)
            and isinstance(rec.get("loss"), (int, float))
        ):
            by_step[rec["step"]] = rec
    if not by_step:
        raise MAEValueError(f"{path} has no step records yet")
    return [by_step[s] for s in sorted(by_step)]


def read_val(run: str | os.PathLike[str]) -> list[dict]:
    """The held-out scores `mae finetune` logs after each epoch (`event: "val"`: epoch,
    top1, top5 as fractions), one per epoch (a resumed run's repeat: the last wins)."""
    by_epoch: dict[float, dict] = {}
    for rec in read_records(Path(run) / "metrics.jsonl"):
        if rec.get("event") == "val" and isinstance(rec.get("top1"), (int, float)):
            by_epoch[rec.get("epoch", rec.get("step", 0))] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_curve(run: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write the curve of `run` to `output` (PNG); returns its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency(
            "mae curve needs matplotlib: pip install 'mae-hub[plot]' (or matplotlib)"
        ) from None
    records = read_metrics(run)
    val = read_val(run)
    title, loss_name = Path(run).name, "loss (MSE on masked patches)"
    cfg_path = Path(run) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        train, model = cfg.get("train", {}), cfg.get("model", {})
        batch = cfg.get("effective_batch") or train.get("batch_size")
        size = f"{model.get('img_size') or train.get('img_size')} px"
        if "finetune" in cfg:  # a run of mae finetune
            origin = (cfg["finetune"].get("from") or {}).get("model") or "random init"
            title = (
                f"fine-tuning {origin} at {size} on {train.get('data')}: batch {batch}, "
                f"blr {train.get('blr')}, layer decay {train.get('layer_decay')}"
            )
            loss_name = "training loss (cross-entropy)"
        else:
            title = (
                f"{train.get('variant')} at {size} on {train.get('data')}: batch {batch}, "
                f"blr {train.get('blr')}, mask {train.get('mask_ratio')}"
            )
    epochs = [r.get("epoch", r["step"]) for r in records]
    losses = [r["loss"] for r in records]
    if val:  # a second panel: held-out accuracy per epoch, on the same epochs
        fig, (ax, acc) = plt.subplots(
            2, 1, figsize=(8, 7), dpi=100, sharex=True, height_ratios=(3, 2)
        )
        xs = [r.get("epoch", r.get("step")) for r in val]
        acc.plot(xs, [100 * r["top1"] for r in val], "o-", color="tab:green", label="top-1")
        if all(isinstance(r.get("top5"), (int, float)) for r in val):
            top5 = [100 * r["top5"] for r in val]
            acc.plot(xs, top5, "s--", color="tab:olive", label="top-5", lw=1)
        acc.set_ylabel("held-out accuracy (%)")
        acc.set_xlabel("epoch")
        acc.set_ylim(0, 100)
        acc.grid(alpha=0.3)
        acc.legend(loc="best", fontsize=8)
        last = val[-1]
        acc.annotate(
            f"{100 * last['top1']:.1f}%",
            (xs[-1], 100 * last["top1"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        ax.set_xlabel("epoch" if "epoch" in records[0] else "step")
    marker = "o" if len(records) < 10 else None  # a short run's few records stay visible
    ax.plot(epochs, losses, color="tab:blue", linewidth=1.2, marker=marker)
    ax.set_ylabel(loss_name, color="tab:blue")
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        ax.set_ylim(0, max(finite) * 1.05)
    ax.grid(alpha=0.3)
    if any("lr" in r for r in records):
        lr = ax.twinx()
        lr.plot(epochs, [r.get("lr", math.nan) for r in records], color="tab:orange", lw=1)
        lr.set_ylabel("learning rate", color="tab:orange")
        lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(title, fontsize=9)
    return save_figure(fig, output)
