"""Training checkpoints: what one holds, where they are, which one a run resumes from.

A checkpoint (`DIR/checkpoints/ckpt-<step>.pt`, written atomically, the newest N kept) is
the whole state of a run after an optimiser step: weights, optimiser, step, the random
generators, the settings, the `Schedule` and the number of processes. Resuming from it
continues the run exactly: the same batches, masks and losses as without the stop.

Each checkpoint has a record beside it (`ckpt-<step>.json`: size and sha256 of the bytes
written), in place before the checkpoint's own rename, so every checkpoint a run wrote
is checked before it is loaded: one cut short or changed afterwards (a bit flip, a copy
that stopped) is refused by name, and `resume="auto"` goes back to the newest good one.
A write that fails (a full disk, a file-size limit) leaves nothing of itself and the
older checkpoints intact, and stops the run saying so.

Rules (`choose_resume`, `agree_on_resume`, `resume_settings`):
- a folder that holds checkpoints is continued only when asked (`resume="auto"` or a
  path), never overwritten;
- the settings come from the checkpoint; those given again must match it, except the
  ones in `RESUMABLE_CHANGES` (how long, how often, where, on what);
- the global batch (batch x processes x accum) must stay, so the number of processes may
  change with it;
- when torchrun restarts failed workers, the run goes on from the newest checkpoint that
  this torchrun job wrote, and rank 0's choice is every rank's.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, safe_torch_load
from .config import TrainConfig
from .distributed import Dist, elastic_restarts, elastic_run_id
from .errors import MAEValueError, TrainingError
from .files import atomic_write, sha256_file, write_atomic
from .schedule import Schedule

log = logging.getLogger("mae_core.train")  # one logger for all of a run's messages

# Settings a resumed run may change; every other one must match the checkpoint.
RESUMABLE_CHANGES = {
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "panel_every",
    "device",
    "num_workers",
    "threads",
    "data_on_device",  # same crops and masks; pixels differ by resampling rounding only
    "compile",
    "onednn_linears",  # the same products, to float32 rounding
    "precision",  # fp32 weights and optimiser state either way
    "resume",
    "output",
    "batch_size",  # per process: allowed when the global batch stays (check_global_batch)
}
# Settings of one invocation, never taken from the checkpoint (a resume without --max-steps
# runs to the end of the schedule).
PER_INVOCATION = {"resume": None, "max_steps": None}
_NEEDED = {"model", "optimizer", "step", "train_config", "model_config", "rng"}


@dataclass(frozen=True)
class Resumed:
    """A checkpoint chosen to resume from: its file and its contents."""

    path: Path
    payload: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.payload["step"])

    @property
    def settings(self) -> dict[str, Any]:
        return self.payload["train_config"]

    @property
    def world_size(self) -> int | None:
        return self.payload.get("world_size")

    @property
    def global_batch(self) -> int:
        return checkpoint_global_batch(self.payload)


# -- the random generators ------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files ----------------------------------------------------------------------------------
def checkpoint_paths(output: Path) -> list[Path]:
    """Checkpoints in DIR/checkpoints, newest (highest step) first."""
    return sorted((output / "checkpoints").glob("ckpt-*.pt"), reverse=True)


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (ckpt-00001200.pt -> 1200)."""
    return int(path.stem.removeprefix("ckpt-"))


def newest_step(output: Path) -> int:
    """The step of the newest checkpoint in `output` (0: none)."""
    paths = checkpoint_paths(output)
    return checkpoint_step(paths[0]) if paths else 0


def record_path(path: Path) -> Path:
    """The integrity record of checkpoint `path` (ckpt-00001200.pt -> ckpt-00001200.json)."""
    return path.with_suffix(".json")


class _Counted:
    """A file to `torch.save` into that hashes and counts what goes through it, and keeps
    the operating system's error: torch reports a failed write only as a position
    mismatch, which would hide a full disk."""

    def __init__(self, f: Any) -> None:
        self.f, self.size, self.sha256, self.error = f, 0, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha256.update(memoryview(data)[:n])
        self.size += n
        return n

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (a reader never sees half a checkpoint), and
    its record (size, sha256) before it: a checkpoint is never on disk without one."""
    out = None
    try:
        with atomic_write(path) as f:
            out = _Counted(f)
            torch.save(payload, out)
            f.flush()
            os.fsync(f.fileno())  # a full disk shows here, before the record is written
            record = {"file": path.name, "size": out.size, "sha256": out.sha256.hexdigest()}
            write_atomic(record_path(path), json.dumps({**record, "step": payload.get("step")}))
    except (OSError, RuntimeError) as e:
        error = out.error if out is not None and out.error is not None else e
        raise CheckpointWriteError(path, error) from e


class CheckpointWriteError(TrainingError):
    """A checkpoint that could not be written; nothing of it is left on disk."""

    def __init__(self, path: Path, error: BaseException) -> None:
        self.path, self.error = path, error
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        self.disk_full = isinstance(error, OSError) and error.errno in DISK_FULL
        super().__init__(f"could not write {path}: {reason}")


# A write refused for room: no space, over quota, over the file-size limit (ulimit -f).
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def verify_checkpoint(path: Path) -> bool:
    """Check `path` against its record; -> False when it has none (a checkpoint from before
    records were written), else True, or `CheckpointError` naming what differs."""
    rec = record_path(path)
    try:
        record = json.loads(rec.read_text())
        size, sha256 = int(record["size"]), str(record["sha256"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"the record {rec} of {path.name} is unreadable ({e})") from e
    actual = path.stat().st_size
    if actual != size:
        raise CheckpointError(
            f"{path} is {actual} bytes, but {size} were written (its record {rec.name}): "
            "it was cut short or changed after it was written"
        )
    if sha256_file(path) != sha256:
        raise CheckpointError(
            f"{path} does not match the sha256 recorded when it was written ({rec.name}): "
            "it was damaged after it was written"
        )
    return True


def write_checkpoint(
    output: Path,
    keep: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    schedule: Schedule,
    settings: Any,
    model_config: Any,
    bad_steps: int,
    world_size: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save the state of a run after optimiser step `step` as the newest checkpoint of
    `output`, then delete all but the `keep` newest. `settings` and `model_config` are
    dataclasses with `to_dict()` (a `TrainConfig`, an `MAEConfig`)."""
    path = output / "checkpoints" / f"ckpt-{step:08d}.pt"
    _save_or_stop(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": step // schedule.steps_per_epoch,
            "batch_in_epoch": step % schedule.steps_per_epoch * schedule.accum_iter,
            "bad_steps": bad_steps,
            "schedule": schedule.to_dict(),
            "train_config": settings.to_dict(),
            "model_config": model_config.to_dict(),
            "world_size": world_size,  # a resume must keep batch x world x accum
            "elastic_run_id": elastic_run_id(),
            "rng": rng_state(),
            **(extra or {}),
        },
    )
    for old in checkpoint_paths(output)[keep:]:
        old.unlink(missing_ok=True)  # the checkpoint first: none is ever left without a record
        record_path(old).unlink(missing_ok=True)
    _remove_leftovers(output / "checkpoints")
    return path


def _save_or_stop(path: Path, payload: dict[str, Any]) -> None:
    try:
        save_checkpoint(path, payload)
    except CheckpointWriteError as e:
        older = [p for p in checkpoint_paths(path.parent.parent) if p != path]
        last = f"the last good checkpoint, {older[0]}, is intact" if older else "no checkpoint yet"
        if e.disk_full:
            free = shutil.disk_usage(path.parent).free / 2**30
            fix = (
                f"make room ({free:.1f} GiB free in {path.parent}, or raise the file-size "
                "limit: ulimit -f), then continue with --resume auto"
            )
        else:
            fix = "fix that, then continue with --resume auto"
        raise TrainingError(f"{e}; nothing of it was kept and {last}. Stopping: {fix}") from e


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of a writer killed mid-way (SIGKILL, power loss), and records whose
    checkpoint is gone. Only rank 0 writes here, and its own writes are done."""
    kept = {p.name for p in folder.glob("ckpt-*.pt")}
    for stale in folder.glob(".ckpt-*.tmp"):
        log.info("removing %s, left by a checkpoint write that did not finish", stale.name)
        stale.unlink(missing_ok=True)
    for rec in folder.glob("ckpt-*.json"):
        if rec.with_suffix(".pt").name not in kept:
            rec.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, checked against its record first (`verify_checkpoint`)."""
    if path.is_file() and not verify_checkpoint(path):
        log.warning("%s has no record to check it against (written before mae-hub kept them)", path)
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or not set(payload) >= _NEEDED:
        raise CheckpointError(f"{path} is not a mae-hub training checkpoint")
    return payload


def find_resume(output: Path, resume: str) -> Resumed | None:
    """The checkpoint to resume from: `resume` as a path, or the newest valid one ("auto")."""
    if resume != "auto":
        path = Path(resume)
        try:
            return Resumed(path, load_checkpoint(path))
        except CheckpointError as e:
            raise TrainingError(f"cannot resume from {path}: {e}") from e
    for path in checkpoint_paths(output):
        try:
            return Resumed(path, load_checkpoint(path))
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint %s (%s)", path, e)
    return None


# -- checks -----------------------------------------------------------------------------------
def checkpoint_global_batch(payload: dict[str, Any]) -> int:
    """The global batch (batch x processes x accum) a checkpoint was trained with.

    Checkpoints from before `world_size` was saved: their schedule's base_lr is
    blr x global batch / 256, so the global batch is read back from it (exact after
    rounding); without a schedule either, one process is assumed.
    """
    saved = payload["train_config"]
    per_process = saved["batch_size"] * saved["accum_iter"]
    if "world_size" in payload:
        return per_process * int(payload["world_size"])
    schedule = payload.get("schedule") or {}
    if schedule.get("base_lr") and saved.get("blr"):
        return round(schedule["base_lr"] * 256 / saved["blr"])
    return per_process


def check_global_batch(saved_global: int, cfg: TrainConfig, world: int) -> None:
    """Refuse a resume whose global batch differs from the checkpoint's: the data order,
    the steps per epoch and the lr schedule all follow from it."""
    now = cfg.batch_size * world * cfg.accum_iter
    if now == saved_global:
        return
    per_batch = world * cfg.accum_iter
    if saved_global % per_batch == 0:
        hint = f"--batch-size {saved_global // per_batch} keeps it"
    else:
        hint = f"no --batch-size keeps it with {world} process(es) x accum {cfg.accum_iter}"
    raise TrainingError(
        f"cannot resume with a different global batch: the checkpoint was trained with "
        f"{saved_global}, now it would be {now} (batch {cfg.batch_size} x {world} process(es) "
        f"x accum {cfg.accum_iter}); steps per epoch and the lr schedule depend on it. "
        f"{hint}, or start a new run in another --output folder"
    )


def check_same_step(steps: list[int], output: Path, newest: list[int] | None = None) -> None:
    """Every rank must start from the same step, and none may see a newer checkpoint than
    rank 0, which chose it. `steps` and `newest` (the newest checkpoint each rank finds in
    --output, 0 for none) hold one value per rank, in rank order."""
    shared = (
        f"Only rank 0 writes checkpoints, so --output {output} must be a folder every node "
        "shares (NFS or another shared file system) and sees the same way"
    )
    if len(set(steps)) > 1:
        seen = ", ".join(f"rank {r}: step {s}" for r, s in enumerate(steps))
        raise TrainingError(f"the processes would start from different steps ({seen}). {shared}")
    if newest and max(newest) > newest[0]:
        seen = ", ".join(f"rank {r}: step {s}" for r, s in enumerate(newest))
        raise TrainingError(
            f"rank 0 would start from step {steps[0]}, but other processes see newer "
            f"checkpoints (newest: {seen}). {shared}"
        )


def merge_settings(
    saved: dict[str, Any],
    given: Mapping[str, Any],
    config: type = TrainConfig,
    resumable: set[str] = RESUMABLE_CHANGES,
) -> Any:
    """The checkpoint's settings with those `given` again, as a `config` (a dataclass with
    `fields()` and `check()`); refused when one of them would change what a resumed run
    may not (any setting outside `resumable`), each conflict named with the checkpoint's
    value and the one given. The settings are checked once merged, not before: a setting
    given again with its run's value (`--epochs 3`) is checked beside the run's other
    values, never beside defaults the run did not use."""
    # A setting newer than the checkpoint (the paper's ablation options) was its default
    # there: a resume may not switch it on mid-run either.
    before = {
        f.name: f.default
        for f in dataclasses.fields(config)
        if f.name not in saved and f.default is not dataclasses.MISSING
    }
    was = {**before, **saved}
    conflicts = [
        f"{k}: checkpoint {was[k]!r} vs now {given[k]!r}"
        for k in sorted(set(given) - resumable)
        if k in was and was[k] != given[k]
    ]
    if conflicts:
        raise TrainingError(
            "cannot resume with different settings (" + "; ".join(conflicts) + "); start a "
            "new run in another --output folder, or drop those flags"
        )
    merged = {**saved, **PER_INVOCATION, **given}
    cfg = config(**{k: v for k, v in merged.items() if k in config.fields()})
    cfg.check()
    return cfg


# -- choosing ---------------------------------------------------------------------------------
def choose_resume(output: Path, resume: str | None, restarts: int) -> Resumed | None:
    """Rank 0's choice. On torchrun's first attempt the rules are the user's: a folder
    holding checkpoints needs `resume`. When torchrun restarts the workers after a
    failure, the run goes on from the newest checkpoint in `output` (even without
    `resume`, or with a path: going back to it would redo the steps since), provided this
    job wrote it."""
    old = checkpoint_paths(output)
    if not old or restarts == 0:
        if old and not resume:
            raise TrainingError(
                f"{output} already holds a run ({len(old)} checkpoints, newest "
                f"{old[0].name}): continue it with --resume auto, or give a new --output"
            )
        return find_resume(output, resume) if resume else None
    resumed = find_resume(output, "auto")
    if resumed is None:
        return None
    job = elastic_run_id()
    if not resume and resumed.payload.get("elastic_run_id") != job:
        # The first attempt refused this folder; a restart must not slip past that.
        raise TrainingError(
            f"{output} already holds a run that torchrun job {job!r} did not write "
            f"(newest {resumed.path.name}): continue it with --resume auto, or give a new "
            "--output"
        )
    log.info(
        "elastic restart %d: resuming from the newest checkpoint in %s (%s given)",
        restarts,
        output,
        f"--resume {resume}" if resume else "no --resume",
    )
    return resumed


def agree_on_resume(
    d: Dist, device: torch.device, output: Path, resume: str | None
) -> Resumed | None:
    """The checkpoint every rank starts from, or None for a fresh run.

    Rank 0 decides, from what it sees in `output`, and every rank then loads that
    checkpoint from its own `output` (the same file on shared storage; a node that cannot
    read it would start from another step, which `check_same_step` refuses).
    """
    # Each torchrun agent counts its own restarts, and one whose workers were stopped
    # because another node failed does not count that: the job was restarted if any
    # rank says so.
    restarts = int(d.all_max(float(elastic_restarts()), device))
    # (checkpoint, whether it lies in output, error), as rank 0 sees them
    choice: tuple[str | None, bool, str | None] = (None, False, None)
    chosen = None
    if d.main:
        try:
            chosen = choose_resume(output, resume, restarts)
            if chosen is not None:
                ours = chosen.path.parent.resolve() == (output / "checkpoints").resolve()
                choice = (chosen.path.name if ours else str(chosen.path), ours, None)
        except TrainingError as e:
            choice = (None, False, str(e))
    path, in_output, error = d.from_main(choice)
    if error:
        raise TrainingError(error)
    if d.main or path is None:
        return chosen
    mine = output / "checkpoints" / path if in_output else Path(path)
    try:
        return Resumed(mine, load_checkpoint(mine))
    except (OSError, CheckpointError) as e:
        log.warning("rank %d cannot read %s (%s)", d.rank, mine, e)
        return None  # it would start at step 0: check_same_step stops every rank


def resume_settings(
    resumed: Resumed | None,
    given: Mapping[str, Any],
    world: int,
    main: bool,
    config: type = TrainConfig,
    resumable: set[str] = RESUMABLE_CHANGES,
) -> Any:
    """The settings a run starts with, as a `config`: `given` for a fresh run; for a
    resumed one, the checkpoint's with `given` applied (checked by `merge_settings`) and a
    global batch that must equal the checkpoint's."""
    if resumed is None:
        cfg = config(**given)
        try:
            cfg.check()
        except MAEValueError as e:
            if not given.get("resume"):
                raise
            raise MAEValueError(
                f"{e} (no checkpoint to resume from in {given.get('output')}: this starts a "
                "new run, whose settings not given are the defaults)"
            ) from None
        return cfg
    cfg = merge_settings(resumed.settings, given, config, resumable)
    saved_global = resumed.global_batch
    check_global_batch(saved_global, cfg, world)
    saved_world = resumed.world_size
    if main and saved_world is not None and saved_world != world:
        log.info(
            "the checkpoint was written by %d process(es), now %d: the same global "
            "batch %d (batch %d each), so the run goes on exactly",
            saved_world,
            world,
            saved_global,
            cfg.batch_size,
        )
    return cfg


def check_schedule(resumed: Resumed | None, schedule: Schedule) -> None:
    """Warn when a resumed run's schedule is not its checkpoint's (the data changed size):
    the run goes on, but no longer as the uninterrupted one would have."""
    saved = (resumed.payload.get("schedule") or {}) if resumed is not None else {}
    keys = ("images", "steps_per_epoch", "total_steps")
    changed = [(k, saved[k], getattr(schedule, k)) for k in keys if k in saved]
    changed = [(k, old, new) for k, old, new in changed if old != new]
    if changed:
        log.warning(
            "the schedule differs from the checkpoint's (%s): the data changed, so the run "
            "will not match the one that was stopped",
            ", ".join(f"{k} {old} -> {new}" for k, old, new in changed),
        )


def restore(resumed: Resumed, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a checkpoint's weights, optimiser and random generators into a fresh run."""
    from .checkpoint import assign_state_dict
    from .model import MaskedAutoencoder

    if isinstance(model, MaskedAutoencoder):
        assign_state_dict(model, resumed.payload["model"], source=str(resumed.path))
    else:  # another network trained by the same loop (a fine-tuned classifier)
        try:
            model.load_state_dict(resumed.payload["model"], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{resumed.path} does not fit this run's model: {first}") from e
    optimizer.load_state_dict(resumed.payload["optimizer"])
    set_rng_state(resumed.payload["rng"])
