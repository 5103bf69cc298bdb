"""Fine-tuning a pretrained MAE encoder into an image classifier: the paper's recipe.

    mae finetune local:mae/vit-tiny-tinyimagenet --data cifar10 --output runs/ft

The recipe is the paper's fine-tuning one (its Table 9, after BEiT), built from timm's
parts rather than copies of them: the encoder becomes a timm `VisionTransformer` with
global average pooling and a fresh `fc_norm` (the encoder's final norm is dropped) and a
linear head initialised near zero; AdamW with layer-wise lr decay
(`timm.optim.param_groups_layer_decay`), linear warmup then cosine, the linear lr scaling
rule (lr = blr x effective batch / 256); drop path; RandAugment and random erasing
(`timm.data.create_transform`); Mixup and CutMix with label smoothing (`timm.data.Mixup`,
`SoftTargetCrossEntropy`). `--from-scratch` trains the same network from random
weights with the same recipe: the baseline the paper's claim is measured against.

The loop, checkpoints, exact resume, run log, signals and torchrun are `mae train`'s
(`train.Trainer`); this module gives the model, the data and the loss. Every random draw
of a sample's augmentation is a function of (seed, epoch, image index), and the batch-level
ones (Mixup, drop path) come from the generators a checkpoint saves, so a stopped run goes
on exactly.

`DIR/final/` is a timm classifier folder: `config.json` (with `num_classes`,
`label_names` and `pretrained_cfg`) and `model.safetensors`, which
`timm.create_model("local-dir:DIR/final", pretrained=True)` loads with its head;
`load_classifier` is our own reader of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from .checkpoint import CONFIG_FILE, ENCODER_FILE, CheckpointError, timm_config
from .config import (
    PRECISIONS,
    MAEConfig,
    _one_of,
    _setting,
    default_workers,
    given_settings,
)
from .data import EpochSampler, EvalDataset, sample_generator
from .errors import MAEValueError, TrainingError
from .files import sha256_file
from .resume import check_schedule
from .sources import DataError, ImageIndex, held_out_source, index_source, open_rgb, train_split
from .train import Trainer, run_guarded

log = logging.getLogger("mae_core.train")  # the training loop's logger: one log per run


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run: one `mae finetune` flag per field, the same
    names in a `--config` file. Defaults are the paper's recipe (Table 9) where it applies
    to any size; `layer_decay` 0.75 is its ViT-L value (0.65 for ViT-B)."""

    model: str = _setting(help="the pretrained encoder: any model id", metavar="MODEL")
    data: str = _setting(
        help="labelled training images: class folders, an archive of them, cifar10[:train] or "
        "tinyimagenet[:train]",
        metavar="SOURCE",
    )
    output: str = _setting(help="run folder (checkpoints, metrics, final/)", metavar="DIR")
    val_data: str | None = _setting(
        None,
        help="held-out labelled images, scored after every epoch (default: the named source's "
        "test split; none for a folder)",
        metavar="SOURCE",
    )
    img_size: int | None = _setting(None, help="image size (default: the encoder's)")
    epochs: int = _setting(50, help="length of the schedule")
    max_steps: int | None = _setting(
        None, help="stop after this optimiser step; the schedule still follows --epochs"
    )
    batch_size: int = _setting(64, help="images per process and micro-batch")
    accum_iter: int = _setting(1, help="micro-batches per optimiser step")
    blr: float = _setting(5e-4, help="base lr; lr = blr x effective batch / 256")
    min_lr: float = _setting(1e-6, help="lr at the end of the cosine")
    warmup_epochs: float = _setting(5, help="epochs of linear lr warmup")
    weight_decay: float = _setting(0.05, help="AdamW weight decay, not on norms, biases, tokens")
    layer_decay: float = _setting(
        0.75, help="layer-wise lr decay: block i of n gets decay^(n - i) of the lr"
    )
    drop_path: float = _setting(0.1, help="stochastic depth rate")
    smoothing: float = _setting(0.1, help="label smoothing")
    mixup: float = _setting(0.8, help="Mixup alpha (0: off)")
    cutmix: float = _setting(1.0, help="CutMix alpha (0: off)")
    auto_augment: str | None = _setting(
        "rand-m9-mstd0.5-inc1", help="timm's RandAugment policy ('none': off)", metavar="POLICY"
    )
    reprob: float = _setting(0.25, help="random erasing probability")
    clip_grad: float | None = _setting(None, help="clip the gradient norm (default: off)")
    from_scratch: bool = _setting(
        False, help="train the same network from random weights with the same recipe"
    )
    limit: int | None = _setting(None, help="train on an evenly strided subset of N images")
    val_limit: int | None = _setting(None, help="score on an evenly strided subset of N images")
    seed: int = _setting(0, help="seed of the head, augmentations, Mixup and drop path")
    log_every: int = _setting(20, help="steps between log records")
    checkpoint_every: int | None = _setting(
        None, help="steps between checkpoints (default: once per epoch)"
    )
    keep_checkpoints: int = _setting(3, help="how many checkpoints to keep, the newest")
    resume: str | None = _setting(
        None,
        help="continue from the newest valid checkpoint in DIR (auto) or PATH",
        metavar="auto|PATH",
    )
    device: str = _setting("auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    num_workers: int | None = _setting(
        None, help="data loader processes (default: half the cores, 1 to 8)"
    )
    threads: int | None = _setting(None, help="math threads of each training process")
    max_bad_steps: int = _setting(5, help="non-finite steps in a row that stop the run")
    compile: bool = _setting(False, help="torch.compile the training step")
    onednn_linears: bool = _setting(
        True,
        help="fp32 on a CPU: the model's linear layers, forward and backward, through oneDNN "
        "instead of torch's own (MKL's sgemm, slow on AMD CPUs); no effect on a GPU, in bf16 "
        "or compiled",
    )
    precision: str = _setting(
        "auto",
        help="auto (bf16 autocast on CUDA, fp32 on a CPU), fp32, or bf16 (autocast on any "
        "device); weights and optimiser state stay fp32",
        metavar="auto|fp32|bf16",
    )

    def __post_init__(self) -> None:
        self.check(relations=not self.resume)

    def check(self, relations: bool = True) -> None:
        problems = []
        for name in ("epochs", "batch_size", "accum_iter", "log_every", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "checkpoint_every", "limit", "val_limit", "img_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not self.blr > 0:
            problems.append(f"blr (base learning rate) must be positive, got {self.blr}")
        for name in ("drop_path", "smoothing", "reprob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.layer_decay <= 1.0:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.mixup < 0 or self.cutmix < 0:
            problems.append("mixup and cutmix are Beta alphas: 0 (off) or positive")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            problems.append(
                f"Mixup/CutMix pair images within a batch: --batch-size must be even, got "
                f"{self.batch_size} (or --mixup 0 --cutmix 0)"
            )
        ok, message = _one_of("precision", self.precision, PRECISIONS)
        if not ok:
            problems.append(message)
        if relations and self.warmup_epochs > self.epochs:
            problems.append(
                f"warmup_epochs ({self.warmup_epochs}) is longer than epochs ({self.epochs})"
            )
        if problems:
            raise MAEValueError("; ".join(problems))

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def given(self) -> dict[str, Any]:
        return given_settings(self)

    @property
    def policy(self) -> str | None:
        return None if self.auto_augment in (None, "", "none") else self.auto_augment

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


# Settings a resumed fine-tuning run may change; the others must match its checkpoint.
RESUMABLE_CHANGES = {
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "num_workers",
    "threads",
    "compile",
    "onednn_linears",
    "precision",
    "resume",
    "output",
    "batch_size",
    "val_data",
    "val_limit",
}


# -- the network ----------------------------------------------------------------------------
def classifier_args(cfg: MAEConfig, num_classes: int) -> dict[str, Any]:
    """timm `VisionTransformer` arguments of a classifier on `cfg`'s encoder: global average
    pooling of the patch tokens, then `fc_norm` and the head (the paper's fine-tuning)."""
    args = timm_config(cfg)["model_args"]  # the encoder's, as its config.json gives them
    return {**args, "num_classes": num_classes, "global_pool": "avg", "fc_norm": True}


def build_classifier(cfg: MAEConfig, num_classes: int, drop_path: float = 0.0) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**classifier_args(cfg, num_classes), drop_path_rate=drop_path)


def encoder_into_classifier(model: torch.nn.Module, encoder: dict[str, torch.Tensor]) -> None:
    """Load the MAE encoder's weights (timm keys) into the classifier: everything but the
    final norm, which global pooling replaces by `fc_norm`; the head starts near zero (std
    2e-5, as the paper's code), `fc_norm` at identity."""
    sd = {k: v for k, v in encoder.items() if not k.startswith("norm.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    fresh = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    if set(missing) != fresh or unexpected:
        raise CheckpointError(
            f"the encoder does not fit a ViT classifier: missing {sorted(set(missing) - fresh)}, "
            f"unexpected {sorted(unexpected)}"
        )
    torch.nn.init.trunc_normal_(model.head.weight, std=2e-5)
    torch.nn.init.zeros_(model.head.bias)


# -- data -----------------------------------------------------------------------------------
class _SeededDraws:
    """Within the block, Python's, NumPy's and torch's global generators start from one
    sample's key (timm's transforms draw from all three); outside it they are untouched."""

    def __init__(self, seed: int, epoch: int, index: int) -> None:
        self.key = int(sample_generator(seed, epoch, index).initial_seed())

    def __enter__(self) -> None:
        self._state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.key)
        np.random.seed(self.key % 2**32)
        torch.manual_seed(self.key)

    def __exit__(self, *exc: object) -> None:
        py, npy, th = self._state
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class FinetuneDataset(Dataset):
    """Item `(index, epoch)` -> (image (3, S, S), label), augmented by timm's training
    transform with draws that depend on (seed, epoch, index) alone."""

    def __init__(self, index: ImageIndex, transform: Any, seed: int) -> None:
        self.index, self.transform, self.seed = index, transform, seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key
        img: Image.Image = open_rgb(self.index.items[i])
        with _SeededDraws(self.seed, epoch, i):
            x = self.transform(img)
        return x, self.index.labels[i]


def train_transform(cfg: MAEConfig, settings: FinetuneConfig) -> Any:
    from timm.data import create_transform

    transform = create_transform(
        input_size=cfg.img_size,
        is_training=True,
        auto_augment=settings.policy,
        interpolation="bicubic",
        re_prob=settings.reprob,
        re_mode="pixel",
        re_count=1,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )
    _posterize_to_black(transform)
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, where keeping 0 bits gives a black image again."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off: 0 in every band
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_to_black(transform: Any) -> None:
    """Make every posterize op in timm's augmentation (RandAugment's ops, AutoAugment's
    policy, AugMix's ops) accept 0 bits to keep. RandAugment's increasing posterize (the
    recipe's `inc1`) draws 0 bits at magnitude 10, AutoAugment's at low magnitudes; Pillow
    up to 12 turned that into a black image, Pillow 13 raises ValueError, which stopped a
    fine-tuning run on real data within its first steps. Only this transform's ops change,
    not timm's table of them."""
    for op in augment_ops(transform):
        if "Posterize" in op.name:
            op.aug_fn = _posterize


def augment_ops(transform: Any) -> list[Any]:
    """timm's `AugmentOp`s inside a transform: RandAugment's and AugMix's `ops`,
    AutoAugment's `policy` (lists of them), found through Compose's `transforms`."""
    from timm.data.auto_augment import AugmentOp

    found, todo = [], [transform]
    while todo:
        obj = todo.pop()
        if isinstance(obj, AugmentOp):
            found.append(obj)
        elif isinstance(obj, list | tuple):
            todo.extend(obj)
        else:
            todo.extend(getattr(obj, a) for a in ("transforms", "ops", "policy") if hasattr(obj, a))
    return found


def labelled_index(source: str, limit: int | None, what: str) -> ImageIndex:
    index = index_source(source, limit)
    if not index.classes or min(index.labels, default=-1) < 0:
        raise DataError(
            f"{what} {source!r} has no labels: fine-tuning needs class folders (one folder of "
            "images per class), an archive of them, cifar10 or tinyimagenet"
        )
    return index


class FinetuneFeed:
    """One process's batches (images, labels) of its share of an epoch; the order is
    `EpochSampler`'s, as in pretraining."""

    def __init__(
        self,
        index: ImageIndex,
        transform: Any,
        *,
        seed: int,
        batch_size: int,
        batches_per_epoch: int,
        device: torch.device,
        rank: int,
        world: int,
        num_workers: int | None,
    ) -> None:
        self.dataset = FinetuneDataset(index, transform, seed)
        self.n, self.seed, self.batch_size = len(index), seed, batch_size
        self.batches_per_epoch, self.device = batches_per_epoch, device
        self.rank, self.world = rank, world
        self.num_workers = num_workers if num_workers is not None else default_workers()
        self.device_images = None  # the shared loop asks; images are always decoded on CPU

    def batches(self, epoch: int, start_batch: int) -> Iterator[Any]:
        from .data import _init_worker

        sampler = EpochSampler(
            self.n,
            self.batch_size,
            self.seed,
            epoch,
            self.rank,
            self.world,
            start_batch,
            num_batches=self.batches_per_epoch,
        )
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            worker_init_fn=_init_worker,
            # its own generator: the loader's seed must not come from the global one, which
            # drop path draws from and a checkpoint restores (a resume mid-epoch makes one
            # more loader than the run it continues)
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
        )
        return iter(loader)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    index: ImageIndex,
    cfg: MAEConfig,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    label_of: list[int] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Top-1 and top-5 of `model` on `index` (the eval transform), and the confusion
    matrix (rows: true class, columns: predicted). `label_of` maps the index's labels to
    the model's classes (`num_classes` of them) when those differ, e.g. a subset."""
    was_training = model.training
    model.eval()
    loader = DataLoader(EvalDataset(index, cfg), batch_size=batch_size, num_workers=num_workers)
    k = num_classes or len(index.classes)
    to_model = None if label_of is None else torch.tensor(label_of)
    confusion = torch.zeros(k, k, dtype=torch.long)
    top5 = 0
    for x, y in loader:
        if to_model is not None:
            y = to_model[y]
        logits = model(x.to(device)).float().cpu()
        pred = logits.argmax(1)
        confusion += torch.bincount(y * k + pred, minlength=k * k).view(k, k)
        best = logits.topk(min(5, k), dim=1).indices
        top5 += int((best == y[:, None]).any(1).sum())
    model.train(was_training)
    n = int(confusion.sum())
    return {
        "top1": float(confusion.diag().sum()) / n,
        "top5": top5 / n,
        "images": n,
        "confusion": confusion.tolist(),
    }


# -- the saved classifier -------------------------------------------------------------------
def classifier_config(cfg: MAEConfig, classes: list[str], recipe: dict[str, Any]) -> dict:
    """`config.json` of a fine-tuned classifier: timm reads `architecture`, `model_args`,
    `num_classes`, `label_names` and `pretrained_cfg`; `mae_finetune` is ours."""
    base = timm_config(cfg)
    k = len(classes)
    return {
        **base,
        "num_classes": k,
        "global_pool": "avg",
        "label_names": list(classes),
        "model_args": classifier_args(cfg, k),
        "pretrained_cfg": {**base["pretrained_cfg"], "tag": "mae_ft", "num_classes": k},
        "mae_finetune": recipe,
    }


def save_classifier(model: torch.nn.Module, folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / ENCODER_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A fine-tuned classifier folder -> (the timm ViT in eval mode, its config.json)."""
    from timm.models.vision_transformer import VisionTransformer

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        args = config["model_args"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder} is not a fine-tuned classifier folder ({e})") from e
    if not config.get("num_classes"):
        raise CheckpointError(f"{folder} holds no classifier head (num_classes is 0)")
    model = VisionTransformer(**args)
    sd = load_file(str(folder / ENCODER_FILE))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / ENCODER_FILE} does not fit its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.eval(), config


def is_classifier_dir(path: str | Path) -> bool:
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("num_classes")) and "mae_finetune" in config


def val_source(settings: FinetuneConfig) -> str | None:
    return settings.val_data or held_out_source(settings.data)


def check_sources(settings: Mapping[str, Any]) -> None:
    """Fail early, before a model is loaded, on data that cannot be fine-tuned on."""
    data = settings.get("data")
    if data:
        labelled_index(train_split(str(data)), 1, "--data")


# -- the run --------------------------------------------------------------------------------
class Finetuner(Trainer):
    """One fine-tuning run: `mae train`'s loop (`train.Trainer`) with a classifier, labelled
    data, the recipe's optimiser and loss, and a score on held-out images after each
    epoch. `run()` returns DIR/final, or None when stopped early."""

    config_class = FinetuneConfig
    resumable = RESUMABLE_CHANGES

    def _given(self, settings: Any) -> dict[str, Any]:
        given = dict(settings) if isinstance(settings, Mapping) else settings.given()
        if not given.get("model"):
            raise MAEValueError("a fine-tuning run needs the pretrained model (MODEL)")
        check_sources(given)
        return super()._given(given)

    def _build(self, resumed: Any) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import param_groups_layer_decay

        from .hub import load_model
        from .schedule import Schedule, adamw_options

        cfg, d = self.cfg, self.dist
        encoder = load_model(cfg.model, with_decoder=False)
        self.model_cfg = encoder.config
        if cfg.img_size is not None and cfg.img_size != self.model_cfg.img_size:
            self.model_cfg = self.model_cfg.replace(img_size=cfg.img_size)
        self.source_info = getattr(encoder, "source_info", {}) or {}
        # Where the encoder came from, fixed when the run starts: a resume that finds the id
        # resolving elsewhere (a branch moved on) keeps the origin of the weights it resumes.
        self.origin = None if cfg.from_scratch else self._origin()
        saved_origin = resumed.payload.get("origin") if resumed is not None else None
        if saved_origin and self.origin and saved_origin != self.origin:
            log.warning(
                "%s now resolves to other weights (sha256 %s) than this run started from "
                "(%s); the run goes on from its checkpoint and records where it started",
                cfg.model,
                str(self.origin.get("encoder_sha256"))[:16],
                str(saved_origin.get("encoder_sha256"))[:16],
            )
        if saved_origin:
            self.origin = saved_origin
        self.index = labelled_index(train_split(cfg.data), cfg.limit, "--data")
        self.classes = list(self.index.classes)
        if resumed is not None:
            saved = resumed.payload.get("classes")
            if saved is not None and list(saved) != self.classes:
                raise TrainingError(
                    f"{resumed.path} was trained on {len(saved)} classes, the data has "
                    f"{len(self.classes)} ({_class_diff(saved, self.classes)}): resume on the "
                    "same data, or start a new run in another --output folder"
                )
        val = val_source(cfg)
        self.val_index = labelled_index(val, cfg.val_limit, "--val-data") if val else None
        if self.val_index is not None and self.val_index.classes != self.classes:
            raise DataError(
                f"--val-data {val} has other classes than --data "
                f"({_class_diff(self.classes, self.val_index.classes)})"
            )
        self.schedule = s = Schedule.from_settings(cfg, len(self.index), d.world, self.index.name)
        if d.main:
            check_schedule(resumed, s)
        self.feed = FinetuneFeed(
            self.index,
            train_transform(self.model_cfg, cfg),
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            batches_per_epoch=s.batches_per_epoch,
            device=self.device,
            rank=d.rank,
            world=d.world,
            num_workers=cfg.num_workers,
        )
        # The same head (or whole network) for every process, and the same Mixup draws from
        # NumPy's generator for every run of this seed; a resumed run then takes all three
        # generators from its checkpoint.
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        model = build_classifier(self.model_cfg, len(self.classes), cfg.drop_path)
        if not cfg.from_scratch:
            encoder_into_classifier(model, encoder.encoder_state_dict())
        del encoder
        self.model = model.to(self.device)
        groups = param_groups_layer_decay(
            self.model,
            weight_decay=cfg.weight_decay,
            no_weight_decay_list=self.model.no_weight_decay(),
            layer_decay=cfg.layer_decay,
        )
        self.optimizer = torch.optim.AdamW(groups, lr=s.base_lr, **adamw_options(self.device))
        k = len(self.classes)
        self.mixup = (
            Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                label_smoothing=cfg.smoothing,
                num_classes=k,
            )
            if cfg.mixes
            else None
        )
        if self.mixup is not None:
            self.criterion: torch.nn.Module = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self._scored: tuple[int, dict[str, Any]] | None = None  # (step, its score)

    def _loss(self, batch: Any) -> torch.Tensor:
        imgs, labels = batch
        imgs = imgs.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.mixup is not None:
            imgs, labels = self.mixup(imgs, labels)
        # The loss in fp32 under any autocast: CPU autocast leaves log_softmax in bf16.
        return self.criterion(self.net(imgs).float(), labels)

    def _checkpoint_extra(self) -> dict[str, Any]:
        # a resume on other classes is refused by name; the origin stays the first one
        return {"classes": self.classes, "origin": self.origin}

    def _panels(self, epoch: int) -> None:
        """After each epoch: the score on the held-out images, logged (rank 0)."""
        if not self.dist.main or self.val_index is None:
            return
        score = self.score()
        self.log.event(
            self.step,
            "val",
            epoch=epoch,
            top1=score["top1"],
            top5=score["top5"],
            images=score["images"],
        )
        log.info(
            "epoch %d: held-out top-1 %.2f%%, top-5 %.2f%% (%d images)",
            epoch,
            100 * score["top1"],
            100 * score["top5"],
            score["images"],
        )

    def score(self) -> dict[str, Any]:
        """The held-out score of the weights at this step, computed once: the last epoch's
        is also the final model's."""
        assert self.val_index is not None
        if self._scored is None or self._scored[0] != self.step:
            # fp32 whatever --precision trained in, so that `mae eval --method classifier`
            # reproduces the recorded score exactly
            score = accuracy(self.model, self.val_index, self.model_cfg, self.device)
            self._scored = (self.step, score)
        return self._scored[1]

    def _described(self) -> dict[str, Any]:
        described = super()._described()
        described["finetune"] = {
            "from": self.origin,
            "classes": self.classes,
            "val_data": val_source(self.cfg),
        }
        return described

    def _origin(self) -> dict[str, Any]:
        """Where the encoder came from: the id given, the commit it resolved to (for a hub
        or embedded-hub id: its snapshot folder is named by it) and the encoder file's
        sha256, so a card can say exactly which weights were fine-tuned."""
        info = self.source_info
        source = Path(str(info.get("source", "")))
        weights = [Path(f) for f in info.get("weights") or []]
        encoder = next((f for f in weights if f.name == ENCODER_FILE), None)
        return {  # file names only: the folder is this machine's and goes into a pushed card
            "model": self.cfg.model,
            "weights": [f.name for f in weights],
            "revision": source.name if source.parent.name == "snapshots" else None,
            "encoder_sha256": sha256_file(encoder) if encoder and encoder.is_file() else None,
        }

    def _finish(self) -> Path | None:
        if not self.dist.main:
            return None
        cfg, s = self.cfg, self.schedule
        score = self.score() if self.val_index is not None else None
        recipe = {
            "from": self.origin,
            "from_scratch": cfg.from_scratch,
            "data": self.index.summary(),
            "val_data": val_source(cfg),
            "accuracy": None
            if score is None
            else {k: score[k] for k in ("top1", "top5", "images")},
            "steps": self.step,
            "epochs": round(self.step / s.steps_per_epoch, 3),
            "schedule_complete": self.step >= s.total_steps,
            "effective_batch": s.effective_batch,
            "lr": s.base_lr,
            "recipe": {
                k: getattr(cfg, k)
                for k in (
                    "epochs",
                    "blr",
                    "min_lr",
                    "warmup_epochs",
                    "weight_decay",
                    "layer_decay",
                    "drop_path",
                    "smoothing",
                    "mixup",
                    "cutmix",
                    "auto_augment",
                    "reprob",
                    "seed",
                )
            },
            "final_loss": self.log.last_loss,
        }
        config = classifier_config(self.model_cfg, self.classes, recipe)
        self.model.eval()
        final = self._write_final(lambda part: save_classifier(self.model, part, config))
        if score is not None:
            log.info(
                "done: %d steps; held-out top-1 %.2f%%; classifier in %s",
                self.step,
                100 * score["top1"],
                final,
            )
        else:
            log.info("done: %d steps; classifier in %s", self.step, final)
        return final


def _class_diff(a: list[str], b: list[str]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    parts = []
    if only_a:
        parts.append("only in the first: " + ", ".join(only_a[:5]))
    if only_b:
        parts.append("only in the second: " + ", ".join(only_b[:5]))
    return "; ".join(parts) or "the same names in another order"


def finetune(settings: Mapping[str, Any] | FinetuneConfig) -> Path | None:
    """Run (or resume) a fine-tuning run; returns DIR/final, or None if stopped by a
    signal. `settings`: the given settings (at least model, data and output)."""
    return run_guarded(lambda: Finetuner(settings))


__all__ = [
    "FinetuneConfig",
    "Finetuner",
    "TrainingError",
    "accuracy",
    "build_classifier",
    "classifier_config",
    "encoder_into_classifier",
    "finetune",
    "load_classifier",
    "save_classifier",
]
