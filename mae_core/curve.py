"""`mae curve RUN`: the training curve of a run (loss and learning rate against epochs) as a
PNG, from the run's `metrics.jsonl`. Needs matplotlib (`pip install 'mae-hub[plot]'`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import MAEValueError, MissingDependency
from .runlog import read_records


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
    title = Path(run).name
    cfg_path = Path(run) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        train, model = cfg.get("train", {}), cfg.get("model", {})
        batch = cfg.get("effective_batch") or train.get("batch_size")
        title = (
            f"{train.get('variant')} at {model.get('img_size') or train.get('img_size')} px on "
            f"{train.get('data')}: batch {batch}, blr {train.get('blr')}, "
            f"mask {train.get('mask_ratio')}"
        )
    epochs = [r.get("epoch", r["step"]) for r in records]
    losses = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(epochs, losses, color="tab:blue", linewidth=1.2)
    ax.set_xlabel("epoch" if "epoch" in records[0] else "step")
    ax.set_ylabel("loss (MSE on masked patches)", color="tab:blue")
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
    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
