"""MAE pretraining: the paper's recipe, resumable exactly, one process or many (torchrun).

Recipe (paper, Sec. A.1): AdamW(0.9, 0.95), weight decay 0.05 except on norms, biases and
tokens, lr = blr x effective batch / 256 with blr 1.5e-4, per-step linear warmup then a
half-cycle cosine to min_lr; bf16 autocast on CUDA, fp32 on CPU unless `--precision bf16`.

A run writes into DIR: `config.json` (every resolved setting), `metrics.jsonl` (a record
per logged step), `checkpoints/ckpt-<step>.pt` (atomic, last N kept), `panels/` (PNG
reconstructions of fixed images) and, when it ends normally, `final/` (a
`save_pretrained` folder).

Under torchrun, one node or several (c10d rendezvous), only rank 0 writes, so DIR must be
a folder every node shares. When torchrun restarts the workers after a failure
(TORCHELASTIC_RESTART_COUNT > 0), the run resumes from the newest checkpoint in DIR by
itself, and every rank must have resumed from the same step. A resume may change the
number of processes as long as the global batch (batch x processes x accum) stays.

The parts, each its own module so that a fine-tuning loop or an ablation runner reuses
them: `distributed` (processes, devices), `resume` (checkpoints and the rules for going
on), `schedule` (steps, batch, lr), `runlog` (what a run writes and shows), `data` (the
feed of batches). This module wires them into the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from . import onednn
from .config import TrainConfig
from .data import PCA_IMAGES, PretrainFeed, pca_batches
from .distributed import autocast as distributed_autocast
from .distributed import (
    close_distributed,
    init_distributed,
    math_threads,
    native_cpu_bf16,
    resolve_device,
    uses_bf16,
)
from .errors import DeviceMemoryError, MAEValueError, TrainingError
from .model import MaskedAutoencoder
from .resume import (
    DISK_FULL,
    RESUMABLE_CHANGES,
    Resumed,
    agree_on_resume,
    check_same_step,
    check_schedule,
    checkpoint_paths,
    newest_step,
    restore,
    resume_settings,
    write_checkpoint,
)
from .runlog import RunLog, versions
from .schedule import Schedule, adamw_options, param_groups
from .sources import index_source

__all__ = ["StopFlag", "TrainConfig", "Trainer", "TrainingError", "train"]

log = logging.getLogger(__name__)
TrainSettings = Mapping[str, Any] | TrainConfig


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


class Trainer:
    """One pretraining run. `run()` returns DIR/final, or None when stopped early.

    settings: a mapping of the settings given (at least `data` and `output`): for a fresh
    run the others take `TrainConfig`'s defaults, for a resumed run they come from the
    checkpoint. A `TrainConfig` gives the settings that differ from the defaults
    (`TrainConfig.given`).
    """

    # The settings' dataclass and those a resume may change: a subclass that trains
    # something else (finetune.Finetuner) gives its own.
    config_class: type = TrainConfig
    resumable: set[str] = RESUMABLE_CHANGES

    def __init__(self, settings: TrainSettings | Mapping[str, Any]) -> None:
        resumed = self._start(self._given(settings))
        self._build(resumed)
        self._go_on(resumed)

    def _given(self, settings: Any) -> dict[str, Any]:
        cls = self.config_class
        given = settings.given() if isinstance(settings, TrainConfig) else dict(settings)
        unknown = sorted(set(given) - cls.fields())
        if unknown:
            raise MAEValueError(f"unknown training setting(s): {', '.join(unknown)}")
        missing = [k for k in ("data", "output") if not given.get(k)]
        if missing:
            raise MAEValueError(f"a training run needs the setting(s) {', '.join(missing)}")
        return given

    def _start(self, given: dict[str, Any]) -> Resumed | None:
        """Processes, device, the checkpoint to go on from, the settings, the threads."""
        self.output = output = Path(given["output"])
        self.dist = d = init_distributed(given.get("device", "auto"))
        self.device = resolve_device(given.get("device", "auto"), d.local_rank)
        if output.exists() and not output.is_dir():
            raise TrainingError(f"--output {output} is a file, not a folder")
        resumed = agree_on_resume(d, self.device, output, given.get("resume"))
        self.cfg = resume_settings(
            resumed, given, d.world, d.main, self.config_class, self.resumable
        )
        self.threads = math_threads(self.cfg.threads)
        return resumed

    def _build(self, resumed: Resumed | None) -> None:
        """The data, the schedule, the model and the optimiser of an MAE pretraining run."""
        cfg, d = self.cfg, self.dist
        self.model_cfg = cfg.model_config()
        self.index = index_source(cfg.data, cfg.limit)
        self.schedule = s = Schedule.from_settings(cfg, len(self.index), d.world, self.index.name)
        if d.main:
            check_schedule(resumed, s)
        self.feed = PretrainFeed(
            self.index,
            self.model_cfg,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            batches_per_epoch=s.batches_per_epoch,
            device=self.device,
            rank=d.rank,
            world=d.world,
            num_workers=cfg.num_workers,
            on_device=cfg.data_on_device,
            progress=d.main,
            augment=cfg.augment,
        )
        torch.manual_seed(cfg.seed)  # the same initial weights for every process and resume
        self.model = MaskedAutoencoder(self.model_cfg).to(self.device)
        if resumed is None and self.model_cfg.target == "pca":
            self._fit_pca()  # a resumed run has its basis in the checkpoint's model state
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=s.base_lr,
            betas=(0.9, 0.95),
            **adamw_options(self.device),
        )

    def _go_on(self, resumed: Resumed | None) -> None:
        """Restore the checkpoint (if any), check every rank starts at one step, wrap."""
        d, output = self.dist, self.output
        self.step = self.bad_steps = 0
        if resumed is not None:
            restore(resumed, self.model, self.optimizer)
            self.step, self.bad_steps = resumed.step, int(resumed.payload.get("bad_steps", 0))
            if d.main:
                log.info("resumed from %s at step %d", resumed.path, self.step)
        newest = d.all_gather_int(newest_step(output), self.device)
        check_same_step(d.all_gather_int(self.step, self.device), output, newest)
        self.net: torch.nn.Module = self.model
        if d.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if self.cfg.compile:
            self.net = torch.compile(self.net)
        self.log = RunLog(output, enabled=d.main)

    def _fit_pca(self) -> None:
        """Fit the "pca" target's basis on the patches of a fixed sample of the training
        images (`PCA_IMAGES` at most, chosen by the seed, resized and centre-cropped: no
        augmentation beyond the crop) and set it on the model. Every process fits the same
        basis from the same images; the global random state is left as it was."""
        from .targets import fit_pca_target

        t0 = time.perf_counter()
        batches = pca_batches(self.index, self.model_cfg, self.cfg.seed, self.feed.num_workers)
        with torch.random.fork_rng(devices=[]):
            fit_pca_target(self.model, batches, max_images=PCA_IMAGES)
        if self.dist.main:
            log.info(
                "target pca: a basis of %d components fitted on the patches of %d images in %.1f s",
                self.model_cfg.pca_components,
                min(PCA_IMAGES, len(self.index)),
                time.perf_counter() - t0,
            )

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Path | None:
        """Train to the end of the schedule (or --max-steps) -> the final model's folder, or
        None when a signal stopped the run. The math threads are set for the run and given
        back after it (the caller's process may be a notebook or a test run)."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads[0])
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> Path | None:
        cfg, s, d = self.cfg, self.schedule, self.dist
        end = s.total_steps if cfg.max_steps is None else min(cfg.max_steps, s.total_steps)
        self.log.start(self._described(), self.step, end)
        if d.main:
            log.info(
                "training %s on %s (%d images): %d steps/epoch x %d epochs, effective batch %d, "
                "lr %.3g, device %s (%s), %d process(es)",
                *(self.model_cfg.variant, self.index.name, len(self.index), s.steps_per_epoch),
                *(cfg.epochs, s.effective_batch, s.base_lr, self.device, self._precision_line()),
                d.world,
            )
            log.info("threads: %s", self._threads_line())
        autocast = distributed_autocast(cfg.precision, self.device)
        self.use_onednn = self._use_onednn()
        self.model.train()
        stopped_by = None
        with StopFlag() as stop, contextlib.closing(self.log):
            while self.step < end and stopped_by is None:
                stopped_by = self._epoch(end, autocast, stop)
        if stopped_by is not None:
            if d.main:
                name = signal.Signals(stopped_by).name
                log.warning(
                    "stopped by %s at step %d; continue with --resume auto", name, self.step
                )
            return None
        return self._finish()

    def _use_onednn(self) -> bool:
        """Whether each forward runs in `onednn.onednn_linears` (where it applies and is on);
        the log line says which linears, and why."""
        dtype = torch.bfloat16 if uses_bf16(self.cfg.precision, self.device) else torch.float32
        reason = (
            onednn.why_not(self.device, dtype, compiled=self.cfg.compile)
            if self.cfg.onednn_linears
            else "off (--no-onednn-linears)"
        )
        if self.dist.main and self.device.type == "cpu":  # a GPU's are its own: nothing to say
            log.info("linear layers: %s", f"torch's, {reason}" if reason else "oneDNN's")
        return reason is None

    def _precision_line(self) -> str:
        if not uses_bf16(self.cfg.precision, self.device):
            return "fp32"
        if self.device.type == "cpu" and native_cpu_bf16() is False:
            log.warning(
                "--precision bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there "
                "and likely slower than fp32 (--precision fp32)"
            )
        return "bf16 autocast"

    def _threads_line(self) -> str:
        threads, source = self.threads
        workers = self.feed.num_workers
        feed = (
            f"{workers} data loader process(es) with 1 math thread each"
            if workers and self.feed.device_images is None
            else "the data on the device"
            if self.feed.device_images is not None
            else "the data loaded in the training process (--num-workers 0)"
        )
        return f"{threads} math thread(s) per training process ({source}), {feed}"

    def _epoch(self, end: int, autocast: Any, stop: StopFlag) -> int | None:
        """Steps to the end of the current epoch (or to step `end`), logging and
        checkpointing as set; -> the signal that stopped the run, or None."""
        cfg, s = self.cfg, self.schedule
        every = cfg.checkpoint_every or s.steps_per_epoch
        epoch = s.epoch_of(self.step)
        batches = self.feed.batches(epoch, self.step % s.steps_per_epoch * cfg.accum_iter)
        t0, seen = time.perf_counter(), 0
        while self.step < end and s.epoch_of(self.step) == epoch:
            loss, grad_norm, ok = self._step(batches, autocast)
            seen += s.effective_batch
            self.step += 1
            self.log.advance()
            if ok and (self.step % cfg.log_every == 0 or self.step == end):
                group = self.optimizer.param_groups[0]
                lr = group["lr"] / group.get("lr_scale", 1.0)  # the schedule's, undecayed
                rate = seen / (time.perf_counter() - t0)
                self.log.record(
                    self.step, epoch, self.step / s.steps_per_epoch, loss, lr, grad_norm, rate
                )
                t0, seen = time.perf_counter(), 0
            if self.step % every == 0 or self.step == end:
                self._checkpoint()
            if self.dist.all_max(float(stop.signal is not None), self.device):
                if self.step % every:
                    self._checkpoint()
                return stop.signal or signal.SIGTERM
        if self.step % s.steps_per_epoch == 0:
            self._panels(s.epoch_of(self.step))
        return None

    def _step(self, batches: Iterator[Any], autocast: Any) -> tuple[float, float, bool]:
        """One optimiser step over `accum_iter` micro-batches -> (loss, grad norm, applied)."""
        accum = self.cfg.accum_iter
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # layer-wise lr decay, when set
        total = 0.0
        for micro in range(accum):
            batch = next(batches)
            sync = micro == accum - 1 or not isinstance(self.net, DistributedDataParallel)
            ctx = contextlib.nullcontext() if sync else self.net.no_sync()
            with ctx, autocast, onednn.onednn_linears(self.use_onednn):
                loss = self._loss(batch)
            with ctx:
                (loss / accum).backward()
            total += loss.item() / accum
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        ok = math.isfinite(grad_norm) and math.isfinite(total)
        if ok:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self._skip(total, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        return self.dist.all_mean(total, self.device), grad_norm, ok

    def _loss(self, batch: Any) -> torch.Tensor:
        """The loss of one micro-batch from the feed: the MAE's, on its masking noise."""
        imgs, noise, _ = batch
        imgs = imgs.to(self.device, non_blocking=True)
        noise = noise.to(self.device, non_blocking=True)
        return self.net(imgs, mask_ratio=self.cfg.mask_ratio, noise=noise).loss

    def _skip(self, loss: float, grad_norm: float) -> None:
        """A non-finite step is not applied; too many in a row stop the run."""
        self.bad_steps += 1
        step = self.step + 1
        if self.dist.main:
            log.warning("step %d: loss %s, gradient norm %s: step skipped", step, loss, grad_norm)
            self.log.event(step, "skipped_non_finite", loss=str(loss), grad_norm=str(grad_norm))
        if self.bad_steps >= self.cfg.max_bad_steps:
            last = checkpoint_paths(self.output)
            raise TrainingError(
                f"loss or gradients not finite for {self.bad_steps} steps in a row at step "
                f"{step}; stopping. Last good checkpoint: {last[0] if last else 'none'}. "
                "Try a lower --blr or --clip-grad 1.0"
            )

    # -- what the run writes -----------------------------------------------------------------
    def _described(self) -> dict[str, Any]:
        """config.json: every resolved setting, the schedule's numbers, data, versions."""
        s = self.schedule
        return {
            "train": self.cfg.to_dict(),
            "model": self.model_cfg.to_dict(),
            "data": self.index.summary(),
            "world_size": self.dist.world,
            "effective_batch": s.effective_batch,
            "base_lr": s.base_lr,
            "steps_per_epoch": s.steps_per_epoch,
            "total_steps": s.total_steps,
            "schedule": s.to_dict(),
            "device": str(self.device),
            "versions": versions(),
        }

    def _checkpoint(self) -> None:
        if not self.dist.main:
            return
        write_checkpoint(
            self.output,
            self.cfg.keep_checkpoints,
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            schedule=self.schedule,
            settings=self.cfg,
            model_config=self.model_cfg,
            bad_steps=self.bad_steps,
            world_size=self.dist.world,
            extra=self._checkpoint_extra(),
        )

    def _checkpoint_extra(self) -> dict[str, Any]:
        """What a subclass keeps in its checkpoints besides the run's state."""
        return {}

    def _panels(self, epoch: int) -> None:
        every = self.cfg.panel_every
        if every and epoch % every == 0:
            self.log.panels(self.model, self.cfg.data, self.index, self.cfg.mask_ratio, epoch)

    def _finish(self) -> Path | None:
        if not self.dist.main:
            return None
        cfg, s = self.cfg, self.schedule
        summary = {
            "data": self.index.summary(),
            "steps": self.step,
            "epochs": round(self.step / s.steps_per_epoch, 3),
            "schedule_epochs": cfg.epochs,
            "schedule_complete": self.step >= s.total_steps,
            "effective_batch": s.effective_batch,
            "blr": cfg.blr,
            "lr": s.base_lr,
            "warmup_epochs": cfg.warmup_epochs,
            "weight_decay": cfg.weight_decay,
            "mask_ratio": cfg.mask_ratio,
            # The paper's ablation choices (Table 1): the model's config holds them too,
            # except the augmentation, which only the run knows.
            "mask_strategy": self.model_cfg.mask_strategy,
            "target": self.model_cfg.target,
            "encoder_mask_tokens": self.model_cfg.encoder_mask_tokens,
            "augment": cfg.augment,
            "final_loss": self.log.last_loss,
            "device": str(self.device),
            "world_size": self.dist.world,
            "versions": versions(),
        }
        self.model.eval()
        final = self._write_final(lambda part: self.model.save_pretrained(part, training=summary))
        log.info("done: %d steps; final model in %s", self.step, final)
        return final

    def _write_final(self, write: Callable[[Path], Any]) -> Path:
        """DIR/final written by `write(folder)` beside, then renamed into place: a full disk
        leaves the old final/ (or none), never half of one."""
        final = self.output / "final"
        part = self.output / ".final.partial"
        shutil.rmtree(part, ignore_errors=True)
        try:
            write(part)
            shutil.rmtree(final, ignore_errors=True)
            part.rename(final)
        except OSError as e:
            shutil.rmtree(part, ignore_errors=True)
            last = checkpoint_paths(self.output)
            raise TrainingError(
                f"could not write the final model to {final}: {e.strerror or e}. The run is "
                f"complete in {last[0] if last else 'its checkpoints'}: make room and run the "
                "same command with --resume auto to write final/ again"
            ) from e
        return final


def train(settings: TrainSettings) -> Path | None:
    """Run (or resume) a pretraining run; returns DIR/final, or None if stopped by a signal.
    `settings`: as for `Trainer`."""
    return run_guarded(lambda: Trainer(settings))


def run_guarded(make: Callable[[], Trainer]) -> Path | None:
    """Make a trainer and run it, with a full disk and device memory said plainly, and
    the processes' group closed whatever happens."""
    try:
        return make().run()
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise TrainingError(
            f"could not write {e.filename or 'a file of the run'}: {e.strerror}. The newest "
            "checkpoint is intact: make room, then continue with --resume auto"
        ) from e
    except torch.OutOfMemoryError as e:
        raise DeviceMemoryError(
            f"out of device memory ({str(e).splitlines()[0]}): lower --batch-size (and raise "
            "--accum-iter to keep the global batch), or train a smaller variant"
        ) from e
    finally:
        close_distributed()
