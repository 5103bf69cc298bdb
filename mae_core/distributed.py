"""Processes and devices: torchrun set-up, ranks, elastic restarts, and device choice.

`init_distributed` joins torchrun's process group when there is one (NCCL on CUDA, gloo on
the CPU) and returns a `Dist`, whose small collectives are no-ops in a single process, so
callers never branch on the world size. `resolve_device` is the one place a device name
("auto", "cpu", "cuda", "cuda:N") becomes a `torch.device`, for training and the service.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .config import DEVICE_CHOICES, is_device_name
from .errors import MAEError, MAEValueError

log = logging.getLogger("mae_core.train")  # one logger for all of a run's messages


class DeviceError(MAEError, RuntimeError):
    """The device asked for is not here."""


@dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank on its node."""

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


def close_distributed() -> None:
    """Leave the process group, if this process joined one (at the end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


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


def math_threads(setting: int | None = None) -> tuple[int, str]:
    """-> (math threads for this training process, where the count comes from).

    `setting` (--threads) first, then OMP_NUM_THREADS (torchrun sets it to 1 when it starts
    several processes and it is unset), else this process's share of the cores it may run
    on: the cores over the processes torchrun started on this machine (LOCAL_WORLD_SIZE).
    Data loader processes take one math thread each (`data.PretrainFeed`)."""
    from .config import available_cores

    if setting:
        return setting, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = available_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, cores // local), f"{cores} cores / {local} process(es) on this machine"


def elastic_restarts() -> int:
    """How often torchrun has restarted this job's workers (0: first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def elastic_run_id() -> str | None:
    """torchrun's job id (--rdzv-id), or None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether a training step under `precision` (config.PRECISIONS) runs in bf16 autocast."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of a training step's forward under `precision`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))


def native_cpu_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (x86: AVX512-BF16 or AMX-BF16; Arm: the
    BF16 extension), read from /proc/cpuinfo; None where that cannot be read. Elsewhere
    bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return bool(set(value.split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return None


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """Device names to a torch.device: "auto" -> CUDA when available, else the CPU;
    "cuda" / "cuda:N" must exist here. Other torch device types ("mps", "xpu", ...) pass
    through as torch reads them.

    local_rank: the CUDA device "auto" and "cuda" mean under torchrun (one per process);
    None leaves the index unset (the current device).
    """
    name = str(name).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not is_device_name(name):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise MAEValueError(f"device must be {DEVICE_CHOICES}, got {name!r}") from None
        if device.type == "cuda":  # "cuda:x", "cuda:-1"
            raise MAEValueError(f"device must be {DEVICE_CHOICES}, got {name!r}")
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for, but no CUDA device is available here")
    if name == "cuda":
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    index, count = int(name[5:]), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {name!r} was asked for, but there are {count} CUDA device(s)")
    return torch.device("cuda", index)
