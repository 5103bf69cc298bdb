"""The optimisation recipe's numbers: how many steps, how large a batch, which lr when.

The paper's recipe (Sec. A.1): lr = blr x effective batch / 256, a per-step linear warmup,
then a half-cycle cosine to min_lr; AdamW with weight decay on weight matrices only.
`Schedule` is computed once, from the settings and the size of the data, and stored in
every checkpoint as it is (`to_dict`); a resumed run whose schedule differs (the data
changed size) is warned about (`resume.check_schedule`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .sources import DataError

# Parameters without weight decay besides norms and biases (timm's no_weight_decay list).
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "encoder_mask_token")


def learning_rate(
    step: float, base_lr: float, min_lr: float, warmup_steps: float, total_steps: float
) -> float:
    """Linear warmup to base_lr, then half-cycle cosine to min_lr (per optimiser step)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[no decay (norms, biases, tokens), decay (matrices)]: timm's grouping, as the
    official MAE code builds it."""
    from timm.optim import param_groups_weight_decay

    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)


def adamw_options(device: torch.device) -> dict[str, Any]:
    """Which of torch's AdamW implementations `mae train` and `mae finetune` use on
    `device`: the fused one (one kernel for the whole update) on a CPU, where it made the
    whole fp32 step 1.03x as fast as torch's default for-loop, twice (bench/pretrain.py
    --adamw, BENCHMARKS.md); torch's default elsewhere (a GPU's choice is bench/gpu.sh's
    to measure). A resumed run keeps the implementation its checkpoint recorded
    (`load_state_dict` restores the groups' flags), whatever its device now."""
    return {"fused": True} if device.type == "cpu" else {}


@dataclass(frozen=True)
class Schedule:
    """Steps and learning rates of one run.

    A step is one optimiser update: `accum_iter` micro-batches of `batch_size` images on
    each of `world` processes. An epoch is as many whole steps as the data fills.
    """

    images: int  # in the training set
    batch_size: int  # per process and micro-batch
    world: int
    accum_iter: int
    epochs: int
    blr: float
    min_lr: float
    warmup_epochs: float

    @classmethod
    def from_settings(cls, cfg: Any, images: int, world: int, data: str = "the data") -> Schedule:
        """From a `TrainConfig` (or anything with its schedule fields); refused with a
        DataError when `data` (its name, for the message) cannot fill one step."""
        schedule = cls(
            images=images,
            batch_size=cfg.batch_size,
            world=world,
            accum_iter=cfg.accum_iter,
            epochs=cfg.epochs,
            blr=cfg.blr,
            min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs,
        )
        if schedule.batches_per_epoch == 0:
            raise DataError(
                f"batch larger than the data: {images} images in {data}, but one optimiser "
                f"step takes {schedule.effective_batch} (batch {cfg.batch_size} x {world} "
                f"processes x accum {cfg.accum_iter})"
            )
        return schedule

    @property
    def global_batch(self) -> int:
        """Images of one micro-batch over all processes."""
        return self.batch_size * self.world

    @property
    def effective_batch(self) -> int:
        """Images of one optimiser step."""
        return self.global_batch * self.accum_iter

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per process and epoch (whole steps only)."""
        return self.images // self.global_batch // self.accum_iter * self.accum_iter

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.accum_iter

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> float:
        return self.warmup_epochs * self.steps_per_epoch

    @property
    def base_lr(self) -> float:
        return self.blr * self.effective_batch / 256

    def lr(self, step: float) -> float:
        """The learning rate of optimiser step `step` (0-based)."""
        return learning_rate(step, self.base_lr, self.min_lr, self.warmup_steps, self.total_steps)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: the inputs and every derived number."""
        derived = (
            "base_lr",
            "warmup_steps",
            "total_steps",
            "steps_per_epoch",
            "batches_per_epoch",
            "effective_batch",
        )
        return {**dataclasses.asdict(self), **{k: getattr(self, k) for k in derived}}
