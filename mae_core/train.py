"""MAE pretraining: the paper's recipe, resumable exactly, one process or many (torchrun).

Recipe (paper, Sec. A.1): AdamW(0.9, 0.95), weight decay 0.05 except on norms, biases and
tokens, lr = blr x effective batch / 256 with blr 1.5e-4, per-step linear warmup then a
half-cycle cosine to min_lr; bf16 autocast on CUDA, fp32 on CPU.

A run writes into DIR: `config.json` (every resolved setting), `metrics.jsonl` (a record
per logged step), `checkpoints/ckpt-<step>.pt` (atomic, last N kept), `panels/` (PNG
reconstructions of fixed images) and, when it ends normally, `final/` (a
`save_pretrained` folder).

Under torchrun, one node or several (c10d rendezvous), only rank 0 writes, so DIR must be
a folder every node shares. When torchrun restarts the workers after a failure
(TORCHELASTIC_RESTART_COUNT > 0), the run resumes from the newest checkpoint in DIR by
itself, and every rank must have resumed from the same step. A resume may change the
number of processes as long as the global batch (batch x processes x accum) stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import random
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .config import MAEConfig, variant_config
from .data import DataError, EpochSampler, PretrainDataset, held_out_source, index_source
from .model import MaskedAutoencoder

log = logging.getLogger(__name__)

# Settings a resumed run may change; every other one must match the checkpoint.
RESUMABLE_CHANGES = {
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "panel_every",
    "device",
    "num_workers",
    "data_on_device",  # same crops and masks; pixels differ by resampling rounding only
    "compile",
    "resume",
    "output",
    "batch_size",  # per process: allowed when the global batch stays (check_global_batch)
}


class TrainingError(RuntimeError):
    """The run cannot go on (bad settings, diverged, ...); the message says why."""


@dataclass
class TrainConfig:
    data: str
    output: str
    variant: str = "mae_vit_base_patch16"
    img_size: int | None = None
    epochs: int = 400
    max_steps: int | None = None
    batch_size: int = 64  # per process
    accum_iter: int = 1
    blr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_epochs: float = 40
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    clip_grad: float | None = None
    limit: int | None = None  # use an evenly strided subset of this many images
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int | None = None  # steps; None: once per epoch
    keep_checkpoints: int = 3
    panel_every: int = 10  # epochs; 0: never
    resume: str | None = None  # "auto" or a checkpoint path
    device: str = "auto"
    num_workers: int | None = None
    data_on_device: bool = False  # decode once into device memory, augment there
    compile: bool = False
    max_bad_steps: int = 5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (self.batch_size > 0, f"batch size must be positive, got {self.batch_size}"),
            (self.accum_iter > 0, f"accum-iter must be positive, got {self.accum_iter}"),
            (self.blr > 0, f"blr (base learning rate) must be positive, got {self.blr}"),
            (self.min_lr >= 0, f"min-lr must be >= 0, got {self.min_lr}"),
            (
                0 <= self.warmup_epochs <= self.epochs,
                f"warmup-epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}",
            ),
            (self.weight_decay >= 0, f"weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.mask_ratio < 1, f"mask-ratio must be in [0, 1), got {self.mask_ratio}"),
            (
                self.max_steps is None or self.max_steps > 0,
                f"max-steps must be positive, got {self.max_steps}",
            ),
            (self.limit is None or self.limit > 0, f"limit must be positive, got {self.limit}"),
            (self.log_every > 0, f"log-every must be positive, got {self.log_every}"),
            (self.keep_checkpoints > 0, "keep-checkpoints must be at least 1"),
            (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                f"device must be auto, cpu or cuda, got {self.device!r}",
            ),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON or YAML file (same names as the flags, with underscores)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e}") from e
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - TrainConfig.fields())
    if unknown:
        raise ValueError(f"config file {path}: unknown settings {', '.join(unknown)}")
    return data


# ---------------------------------------------------------------------------------------
# Schedule and optimiser
# ---------------------------------------------------------------------------------------
def learning_rate(
    step: float, base_lr: float, min_lr: float, warmup_steps: float, total_steps: float
) -> float:
    """Linear warmup to base_lr, then half-cycle cosine to min_lr (per optimiser step)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases, or the cls and mask tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or name in ("cls_token", "mask_token")
        (no_decay if skip else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


# ---------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_max(self, value: float, device: torch.device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def all_mean(self, value: float, device: torch.device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def all_gather_int(self, value: int, device: torch.device) -> list[int]:
        """Every rank's `value`, in rank order."""
        if self.world == 1:
            return [value]
        t = torch.tensor([value], dtype=torch.int64, device=device)
        seen = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(seen, t)
        return [int(s.item()) for s in seen]

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    warning = shared_store_warning(os.environ)
    if warning and dist.get_rank() == 0:
        log.warning(warning)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def shared_store_warning(env: Mapping[str, str]) -> str | None:
    """Why torchrun's restarts will fail here, if they will.

    By default torchrun's agents share their rendezvous TCPStore with the workers, and
    the workers' process-group keys are not scoped per restart: restarted workers read
    the addresses of the dead ones and fail to connect (pytorch/pytorch#135712, seen
    with torch 2.14 and gloo). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's
    environment gives every restart a fresh store.
    """
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS") or 0)
    if restarts == 0 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return (
        f"torchrun may restart the workers (--max-restarts {restarts}) but shares its "
        "rendezvous store with them: a restart would then fail to connect to the previous "
        "workers' stale addresses (pytorch/pytorch#135712). Start torchrun with "
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment, on every node"
    )


def elastic_restarts() -> int:
    """How often torchrun has restarted this job's workers (0: first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def resolve_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", d.local_rank if name == "cuda" else int(name.split(":")[1]))
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint_paths(output: Path) -> list[Path]:
    """Checkpoints in DIR/checkpoints, newest (highest step) first."""
    return sorted((output / "checkpoints").glob("ckpt-*.pt"), reverse=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    from .checkpoint import CheckpointError, safe_torch_load

    payload = safe_torch_load(path)
    needed = {"model", "optimizer", "step", "train_config", "model_config", "rng"}
    if not isinstance(payload, dict) or not needed <= set(payload):
        raise CheckpointError(f"{path} is not a mae-hub training checkpoint")
    return payload


def find_resume(output: Path, resume: str) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from: `resume` as a path, or the newest valid one ("auto")."""
    from .checkpoint import CheckpointError

    if resume != "auto":
        path = Path(resume)
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            raise TrainingError(f"cannot resume from {path}: {e}") from e
    for path in checkpoint_paths(output):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint %s (%s)", path, e)
    return None


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


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (ckpt-00001200.pt -> 1200)."""
    return int(path.stem.removeprefix("ckpt-"))


def prune_checkpoints(output: Path, keep: int) -> None:
    for old in checkpoint_paths(output)[keep:]:
        old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
class StopFlag:
    """SIGTERM/SIGINT: finish the current step, checkpoint, exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum
        log.warning(
            "received %s: finishing this step, then checkpointing", signal.Signals(signum).name
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process: a signal sent to the whole
    process group (Ctrl-C, `timeout`, Slurm, systemd) must not kill a worker mid-batch
    before the main process has checkpointed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _versions() -> dict[str, str]:
    import timm

    from . import __version__

    return {
        "mae_hub": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


class Trainer:
    """One pretraining run. `run()` returns DIR/final, or None when stopped early."""

    def __init__(self, cfg: TrainConfig, explicit: set[str] | None = None) -> None:
        self.cfg = cfg
        self.output = Path(cfg.output)
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist)
        if self.output.exists() and not self.output.is_dir():
            raise TrainingError(f"--output {self.output} is a file, not a folder")
        resumed = self._find_resume(cfg)
        if resumed is not None:
            self.cfg = cfg = self._merge_resumed(cfg, resumed[1]["train_config"], explicit or set())
            saved_global = checkpoint_global_batch(resumed[1])
            check_global_batch(saved_global, cfg, self.dist.world)
            saved_world = resumed[1].get("world_size")
            if self.dist.main and saved_world is not None and saved_world != self.dist.world:
                log.info(
                    "the checkpoint was written by %d process(es), now %d: the same global "
                    "batch %d (batch %d each), so the run goes on exactly",
                    saved_world,
                    self.dist.world,
                    saved_global,
                    cfg.batch_size,
                )
        self.model_cfg: MAEConfig = variant_config(
            cfg.variant,
            norm_pix_loss=cfg.norm_pix_loss,
            mask_ratio=cfg.mask_ratio,
            **({"img_size": cfg.img_size} if cfg.img_size else {}),
        )
        self.index = index_source(cfg.data, cfg.limit)
        d = self.dist
        self.global_batch = cfg.batch_size * d.world
        self.batches_per_epoch = (
            len(self.index) // self.global_batch // cfg.accum_iter * cfg.accum_iter
        )
        if self.batches_per_epoch == 0:
            raise DataError(
                f"batch larger than the data: {len(self.index)} images in {self.index.name}, "
                f"but one optimiser step takes {self.global_batch * cfg.accum_iter} "
                f"(batch {cfg.batch_size} x {d.world} processes x accum {cfg.accum_iter})"
            )
        self.steps_per_epoch = self.batches_per_epoch // cfg.accum_iter
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = cfg.warmup_epochs * self.steps_per_epoch
        self.eff_batch = self.global_batch * cfg.accum_iter
        self.base_lr = cfg.blr * self.eff_batch / 256
        self._device_images = None
        if cfg.data_on_device:
            from .device_data import DeviceImages

            self._device_images = DeviceImages(
                self.index, self.model_cfg, cfg.seed, self.device, self._workers(), progress=d.main
            )

        torch.manual_seed(cfg.seed)  # the same initial weights for every process and resume
        self.model = MaskedAutoencoder(self.model_cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay), lr=self.base_lr, betas=(0.9, 0.95)
        )
        self.step = 0
        self.bad_steps = 0
        if resumed is not None:
            self._restore(*resumed)
        old = checkpoint_paths(self.output)
        newest = d.all_gather_int(checkpoint_step(old[0]) if old else 0, self.device)
        check_same_step(d.all_gather_int(self.step, self.device), self.output, newest)
        self.net: torch.nn.Module = self.model
        if d.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)

    # -- set-up helpers ------------------------------------------------------------------
    def _find_resume(self, cfg: TrainConfig) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to start from, or None for a fresh run.

        Rank 0 decides, from what it sees in --output, and every rank then loads that
        checkpoint from its own --output (the same file on shared storage; a node that
        cannot read it starts from another step, which `check_same_step` refuses).
        """
        from .checkpoint import CheckpointError

        # Each torchrun agent counts its own restarts, and one whose workers were stopped
        # because another node failed does not count that: the job was restarted if any
        # rank says so.
        restarts = int(self.dist.all_max(float(elastic_restarts()), self.device))
        # (checkpoint, whether it lies in --output, error), as rank 0 sees them
        choice: tuple[str | None, bool, str | None] = (None, False, None)
        chosen = None
        if self.dist.main:
            try:
                chosen = self._choose_resume(cfg, restarts)
                if chosen is not None:
                    ours = chosen[0].parent.resolve() == (self.output / "checkpoints").resolve()
                    choice = (chosen[0].name if ours else str(chosen[0]), ours, None)
            except TrainingError as e:
                choice = (None, False, str(e))
        path, in_output, error = self.dist.from_main(choice)
        if error:
            raise TrainingError(error)
        if self.dist.main or path is None:
            return chosen
        mine = self.output / "checkpoints" / path if in_output else Path(path)
        try:
            return mine, load_checkpoint(mine)
        except (OSError, CheckpointError) as e:
            log.warning("rank %d cannot read %s (%s)", self.dist.rank, mine, e)
            return None  # it would start at step 0: check_same_step stops every rank

    def _choose_resume(self, cfg: TrainConfig, restarts: int) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0's choice. On torchrun's first attempt the rules are the user's: a folder
        holding checkpoints needs --resume. When torchrun restarts the workers after a
        failure, the run goes on from the newest checkpoint in --output (even without
        --resume, or with --resume PATH: going back to PATH would redo the steps since),
        provided this job wrote it."""
        old = checkpoint_paths(self.output)
        if not old or restarts == 0:
            if old and not cfg.resume:
                raise TrainingError(
                    f"{self.output} already holds a run ({len(old)} checkpoints, newest "
                    f"{old[0].name}): continue it with --resume auto, or give a new --output"
                )
            return find_resume(self.output, cfg.resume) if cfg.resume else None
        resumed = find_resume(self.output, "auto")
        if resumed is None:
            return None
        job = os.environ.get("TORCHELASTIC_RUN_ID")
        if not cfg.resume and resumed[1].get("elastic_run_id") != job:
            # The first attempt refused this folder; a restart must not slip past that.
            raise TrainingError(
                f"{self.output} already holds a run that torchrun job {job!r} did not write "
                f"(newest {resumed[0].name}): continue it with --resume auto, or give a new "
                "--output"
            )
        log.info(
            "elastic restart %d: resuming from the newest checkpoint in %s (%s given)",
            restarts,
            self.output,
            f"--resume {cfg.resume}" if cfg.resume else "no --resume",
        )
        return resumed

    @staticmethod
    def _merge_resumed(cfg: TrainConfig, saved: dict[str, Any], explicit: set[str]) -> TrainConfig:
        conflicts = [
            f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
            for k in sorted(explicit - RESUMABLE_CHANGES)
            if k in saved and saved[k] != getattr(cfg, k)
        ]
        if conflicts:
            raise TrainingError(
                "cannot resume with different settings (" + "; ".join(conflicts) + "); start a "
                "new run in another --output folder, or drop those flags"
            )
        current = explicit | {"resume", "output", "max_steps"}  # per invocation
        merged = {**saved, **{k: getattr(cfg, k) for k in current}}
        return TrainConfig(**{k: v for k, v in merged.items() if k in TrainConfig.fields()})

    def _restore(self, path: Path, payload: dict[str, Any]) -> None:
        from .checkpoint import assign_state_dict

        assign_state_dict(self.model, payload["model"], source=str(path))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        self.bad_steps = int(payload.get("bad_steps", 0))
        set_rng_state(payload["rng"])
        if self.dist.main:
            log.info("resumed from %s at step %d", path, self.step)

    def _workers(self) -> int:
        n = self.cfg.num_workers
        return n if n is not None else min(8, os.cpu_count() or 1)

    def _batches(
        self, epoch: int, start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        """This rank's (images, noise, indices) of `epoch` from batch `start_batch` on."""
        if self._device_images is None:
            return iter(self._loader(epoch, start_batch))
        return self._device_batches(epoch, start_batch)

    def _device_batches(
        self, epoch: int, start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        images = self._device_images
        assert images is not None
        keys = iter(self._sampler(epoch, start_batch))
        while chunk := [i for i, _ in itertools.islice(keys, self.cfg.batch_size)]:
            imgs, noise = images.batch(chunk, epoch)
            yield imgs, noise, chunk

    def _sampler(self, epoch: int, start_batch: int) -> EpochSampler:
        """This rank's share of `epoch`, from batch `start_batch` on."""
        cfg, d = self.cfg, self.dist
        return EpochSampler(
            len(self.index),
            cfg.batch_size,
            cfg.seed,
            epoch,
            d.rank,
            d.world,
            start_batch,
            num_batches=self.batches_per_epoch,
        )

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        cfg = self.cfg
        sampler = self._sampler(epoch, start_batch)
        workers = self._workers()
        return DataLoader(
            PretrainDataset(self.index, self.model_cfg, cfg.seed),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            worker_init_fn=_ignore_stop_signals,
        )

    # -- writing ---------------------------------------------------------------------------
    def _write_config(self) -> None:
        data = {
            "train": self.cfg.to_dict(),
            "model": self.model_cfg.to_dict(),
            "data": self.index.summary(),
            "world_size": self.dist.world,
            "effective_batch": self.eff_batch,
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "device": str(self.device),
            "versions": _versions(),
        }
        (self.output / "config.json").write_text(json.dumps(data, indent=2) + "\n")

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """After a resume, drop records past the checkpoint: they will be logged again."""
        path = self.output / "metrics.jsonl"
        if not path.exists():
            return
        keep = [
            ln
            for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= self.step
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)

    def _checkpoint(self) -> Path | None:
        if not self.dist.main:
            return None
        path = self.output / "checkpoints" / f"ckpt-{self.step:08d}.pt"
        save_checkpoint(
            path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "batch_in_epoch": self.step % self.steps_per_epoch * self.cfg.accum_iter,
                "bad_steps": self.bad_steps,
                "schedule": {
                    "base_lr": self.base_lr,
                    "min_lr": self.cfg.min_lr,
                    "warmup_steps": self.warmup_steps,
                    "total_steps": self.total_steps,
                },
                "train_config": self.cfg.to_dict(),
                "model_config": self.model_cfg.to_dict(),
                "world_size": self.dist.world,  # a resume must keep batch x world x accum
                "elastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
                "rng": rng_state(),
            },
        )
        prune_checkpoints(self.output, self.cfg.keep_checkpoints)
        return path

    def _panels(self, epoch: int) -> None:
        if not self.dist.main or not self.cfg.panel_every or epoch % self.cfg.panel_every:
            return
        try:
            from .data import open_rgb
            from .visualize import reconstruction_panels, save_panels

            src = held_out_source(self.cfg.data)
            index = index_source(src, 4) if src else self.index
            picks = index.items[:4] if src else [index.items[i * len(index) // 4] for i in range(4)]
            self.model.eval()
            for k, item in enumerate(picks):
                panels = reconstruction_panels(
                    self.model, open_rgb(item), self.cfg.mask_ratio, seed=k
                )
                save_panels(panels, self.output / "panels" / f"epoch{epoch:04d}-img{k}.png")
        except Exception as e:  # pictures are a convenience: never stop training for them
            log.warning("could not write reconstruction panels: %s", e)
        finally:
            self.model.train()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> Path | None:
        cfg, d = self.cfg, self.dist
        if d.main:
            self.output.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._trim_metrics()
            log.info(
                "training %s on %s (%d images): %d steps/epoch x %d epochs, effective batch %d, "
                "lr %.3g, device %s, %d process(es)",
                self.model_cfg.variant,
                self.index.name,
                len(self.index),
                self.steps_per_epoch,
                cfg.epochs,
                self.eff_batch,
                self.base_lr,
                self.device,
                d.world,
            )
        end = self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps)
        progress = _progress(self.step, end, enabled=d.main)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        self.model.train()
        stopped_by = None
        with StopFlag() as stop:
            while self.step < end:
                epoch = self.step // self.steps_per_epoch
                start = self.step % self.steps_per_epoch * cfg.accum_iter
                batches = self._batches(epoch, start)
                t0, seen = time.perf_counter(), 0
                while self.step < end and self.step // self.steps_per_epoch == epoch:
                    loss, grad_norm, ok = self._train_step(batches, autocast)
                    seen += self.global_batch * cfg.accum_iter
                    self.step += 1
                    progress.update(1)
                    if ok and (self.step % cfg.log_every == 0 or self.step == end):
                        rate = seen / (time.perf_counter() - t0)
                        self._record(epoch, loss, grad_norm, rate, progress)
                        t0, seen = time.perf_counter(), 0
                    every = cfg.checkpoint_every or self.steps_per_epoch
                    if self.step % every == 0 or self.step == end:
                        self._checkpoint()
                    if d.all_max(float(stop.signal is not None), self.device):
                        stopped_by = stop.signal or signal.SIGTERM
                        break
                if stopped_by is not None:
                    if self.step % (cfg.checkpoint_every or self.steps_per_epoch):
                        self._checkpoint()
                    break
                if self.step % self.steps_per_epoch == 0:
                    self._panels(self.step // self.steps_per_epoch)
        progress.close()
        if stopped_by is not None:
            if d.main:
                log.warning(
                    "stopped by %s at step %d; continue with --resume auto",
                    signal.Signals(stopped_by).name,
                    self.step,
                )
            return None
        return self._finish(end)

    def _train_step(self, batches: Any, autocast: Any) -> tuple[float, float, bool]:
        """One optimiser step over `accum_iter` micro-batches -> (loss, grad norm, applied)."""
        cfg = self.cfg
        lr = learning_rate(self.step, self.base_lr, cfg.min_lr, self.warmup_steps, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(cfg.accum_iter):
            imgs, noise, _ = next(batches)
            imgs = imgs.to(self.device, non_blocking=True)
            noise = noise.to(self.device, non_blocking=True)
            sync = micro == cfg.accum_iter - 1 or not isinstance(self.net, DistributedDataParallel)
            ctx = contextlib.nullcontext() if sync else self.net.no_sync()
            with ctx, autocast:
                loss = self.net(imgs, mask_ratio=cfg.mask_ratio, noise=noise).loss
            with ctx:
                (loss / cfg.accum_iter).backward()
            total += loss.item() / cfg.accum_iter
        max_norm = cfg.clip_grad if cfg.clip_grad else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        ok = math.isfinite(grad_norm) and math.isfinite(total)
        if ok:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            if self.dist.main:
                log.warning(
                    "step %d: loss %s, gradient norm %s: step skipped",
                    self.step + 1,
                    total,
                    grad_norm,
                )
                self._log(
                    {
                        "step": self.step + 1,
                        "event": "skipped_non_finite",
                        "loss": str(total),
                        "grad_norm": str(grad_norm),
                    }
                )
            if self.bad_steps >= cfg.max_bad_steps:
                last = checkpoint_paths(self.output)
                raise TrainingError(
                    f"loss or gradients not finite for {self.bad_steps} steps in a row at step "
                    f"{self.step + 1}; stopping. Last good checkpoint: "
                    f"{last[0] if last else 'none'}. Try a lower --blr or --clip-grad 1.0"
                )
        self.optimizer.zero_grad(set_to_none=True)
        return self.dist.all_mean(total, self.device), grad_norm, ok

    def _record(
        self, epoch: int, loss: float, grad_norm: float, rate: float, progress: Any
    ) -> None:
        if not self.dist.main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        record = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "loss": loss,
            "lr": lr,
            "images_per_s": round(rate, 1),
            "grad_norm": grad_norm,
        }
        self._log(record)
        line = (
            f"step {self.step} epoch {epoch} loss {loss:.4f} lr {lr:.3g} "
            f"grad_norm {grad_norm:.3f} {rate:.0f} img/s"
        )
        if progress.disable:
            print(line, file=sys.stderr, flush=True)
        else:
            progress.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:.0f} img/s")

    def _finish(self, end: int) -> Path | None:
        if not self.dist.main:
            return None
        final = self.output / "final"
        last = {}
        metrics = self.output / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            last = next((r for r in reversed(rows) if "loss" in r and "event" not in r), {})
        summary = {
            "data": self.index.summary(),
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "schedule_epochs": self.cfg.epochs,
            "schedule_complete": self.step >= self.total_steps,
            "effective_batch": self.eff_batch,
            "blr": self.cfg.blr,
            "lr": self.base_lr,
            "warmup_epochs": self.cfg.warmup_epochs,
            "weight_decay": self.cfg.weight_decay,
            "mask_ratio": self.cfg.mask_ratio,
            "final_loss": last.get("loss"),
            "device": str(self.device),
            "world_size": self.dist.world,
            "versions": _versions(),
        }
        self.model.eval()
        self.model.save_pretrained(final, training=summary)
        log.info("done: %d steps; final model in %s", self.step, final)
        return final


def _progress(start: int, end: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=end,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def train(cfg: TrainConfig, explicit: set[str] | None = None) -> Path | None:
    """Run (or resume) a pretraining run; returns DIR/final, or None if stopped by a signal."""
    trainer = Trainer(cfg, explicit)
    try:
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
