"""What a training run writes beside its checkpoints, and what it shows while it runs.

    DIR/config.json      every resolved setting, the schedule, the data, the versions
    DIR/metrics.jsonl    one record per logged step ({"step", "epoch", "loss", "lr",
                         "images_per_s", "grad_norm"}) or event ({"step", "event", ...})
    DIR/panels/          reconstructions of four fixed images, every `panel_every` epochs

Only rank 0 writes (`enabled`); the others keep the same calls as no-ops. On a terminal
a progress bar shows the loss, elsewhere (a log file, Slurm) a line per record does. The
last loss is kept in memory for the final summary.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

from .files import write_atomic

log = logging.getLogger("mae_core.train")  # one logger for all of a run's messages
METRICS_FILE = "metrics.jsonl"
PANEL_IMAGES = 4


def versions() -> dict[str, str]:
    import timm
    import torch

    from . import __version__

    return {
        "mae_hub": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, in file order; blank lines, and a line cut short by
    a crash (or anything that is not a JSON object), are skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class RunLog:
    def __init__(self, output: Path, enabled: bool) -> None:
        self.output, self.enabled = output, enabled
        self.last_loss: float | None = None  # of the newest step record
        self._bar: Any = None

    def start(self, config: dict[str, Any], step: int, end: int) -> None:
        """Write config.json, drop records past `step` (a resume logs them again), and
        show progress from `step` to `end`."""
        from tqdm import tqdm

        if self.enabled:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            self._trim(step)
        self._bar = tqdm(
            total=end,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.enabled and sys.stderr.isatty()),
        )

    def _trim(self, step: int) -> None:
        path = self.output / METRICS_FILE
        if not path.exists():
            return
        kept = [r for r in read_records(path) if r.get("step", 0) <= step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        losses = [r["loss"] for r in kept if "loss" in r and "event" not in r]
        self.last_loss = losses[-1] if losses else None

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.output / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def advance(self) -> None:
        """One optimiser step done."""
        if self._bar is not None:
            self._bar.update(1)

    def record(
        self,
        step: int,
        epoch: int,
        epochs: float,
        loss: float,
        lr: float,
        grad_norm: float,
        rate: float,
    ) -> None:
        """A step's numbers: into metrics.jsonl, and onto the bar or a console line.
        `epoch`: the epoch the step belongs to; `epochs`: epochs done, a fraction."""
        if not self.enabled:
            return
        self.last_loss = loss
        self._append(
            {
                "step": step,
                "epoch": round(epochs, 4),
                "loss": loss,
                "lr": lr,
                "images_per_s": round(rate, 1),
                "grad_norm": grad_norm,
            }
        )
        if self._bar is None or self._bar.disable:
            print(
                f"step {step} epoch {epoch} loss {loss:.4f} lr {lr:.3g} "
                f"grad_norm {grad_norm:.3f} {rate:.0f} img/s",
                file=sys.stderr,
                flush=True,
            )
        else:
            self._bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:.0f} img/s")

    def event(self, step: int, event: str, **details: Any) -> None:
        """Something that happened at `step` (a skipped step, ...), into metrics.jsonl."""
        if self.enabled:
            self._append({"step": step, "event": event, **details})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def panels(self, model: Any, data: str, index: Any, mask_ratio: float, epoch: int) -> None:
        """Reconstructions of four images of the data (`panel_items`) as
        DIR/panels/epochNNNN-imgK.png. A convenience: a failure is logged, never raised."""
        if not self.enabled:
            return
        from .sources import open_rgb
        from .visualize import reconstruction_panels, save_panels

        was_training = model.training
        try:
            model.eval()
            for k, item in enumerate(panel_items(data, index)):
                panels = reconstruction_panels(model, open_rgb(item), mask_ratio, seed=k)
                save_panels(panels, self.output / "panels" / f"epoch{epoch:04d}-img{k}.png")
        except Exception as e:  # pictures are a convenience: never stop training for them
            log.warning("could not write reconstruction panels: %s", e)
        finally:
            model.train(was_training)


def panel_items(data: str, index: Any) -> list[Any]:
    """The images the panels show: the first of the held-out split of a named source,
    else four spread over the training data."""
    from .sources import held_out_source, index_source

    held_out = held_out_source(data)
    if held_out:
        return index_source(held_out, PANEL_IMAGES).items[:PANEL_IMAGES]
    n = len(index)
    return [index.items[i * n // PANEL_IMAGES] for i in range(PANEL_IMAGES)]
