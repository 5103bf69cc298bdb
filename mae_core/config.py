"""Configuration: `MAEConfig` (a model), the table of named variants, `TrainConfig` (a run).

A variant name reads `mae_vit_{size}_patch{P}`; the size fixes the encoder and decoder
widths, the patch size fixes the default image size (patch 4 -> 32 px, 8 -> 64 px,
14 and 16 -> 224 px). Any field can be overridden, e.g. `img_size=96`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MAEValueError

# Encoder (dim, depth, heads) and decoder (dim, depth, heads) for each size. Base and up use
# the paper's 512-d, 8-block decoder; tiny and small get lighter decoders matched to them.
_SIZES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "tiny": ((192, 12, 3), (128, 4, 4)),
    "small": ((384, 12, 6), (256, 4, 8)),
    "base": ((768, 12, 12), (512, 8, 16)),
    "large": ((1024, 24, 16), (512, 8, 16)),
    "huge": ((1280, 32, 16), (512, 8, 16)),
}
_DEFAULT_IMG_SIZE = {4: 32, 8: 64, 14: 224, 16: 224}
_VARIANT_RE = re.compile(r"^mae_vit_(tiny|small|base|large|huge)_patch(4|8|14|16)$")

# ImageNet statistics, as in the paper's pipeline and timm's `IMAGENET_DEFAULT_*`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MAEConfig:
    """Everything needed to build a `MaskedAutoencoder` (weights aside).

    Defaults are the official ViT-Base/16 at 224 px with the paper's decoder.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    decoder_mlp_ratio: float | None = None  # None: same as the encoder's
    # What the decoder predicts for each hidden patch (`targets.TARGETS`): "norm_pix" its
    # pixels normalised by the patch's own mean and std (the paper's default), "pixel" the
    # normalised image's pixels as they are, "pca" the first `pca_components` coefficients
    # of a per-patch PCA basis fitted on training patches (stored with the decoder).
    # `norm_pix_loss` is the older switch between the first two, kept for older files and
    # callers; after construction it always reads `target == "norm_pix"`. Left out (None),
    # each is derived from the other: target alone sets it; norm_pix_loss alone picks
    # "norm_pix" (True) or "pixel" (False); both given must agree (True with "pixel" or
    # "pca" is refused), and an older mae_config.json with norm_pix_loss false loads as
    # "pixel". `replace(target=...)` re-derives norm_pix_loss (and the other way round).
    norm_pix_loss: bool | None = None
    target: str | None = None  # None: "norm_pix" unless norm_pix_loss is False
    pca_components: int = 16  # K, with target "pca" only: 1 .. patch_size**2 * in_chans
    # The paper's Table 1(c) ablation: the encoder runs on all L patches, the hidden ones
    # replaced by a learned `encoder_mask_token`, and the decoder inserts no mask tokens.
    encoder_mask_tokens: bool = False
    mask_ratio: float = 0.75  # the default used when `forward` is not given one
    mask_strategy: str = "random"  # the default of `forward`: one of masking.MASK_STRATEGIES
    layer_norm_eps: float = 1e-6  # the official value; transformers defaults to 1e-12
    # Preprocessing for inference, written into timm's `pretrained_cfg`: resize the shorter
    # side to img_size / crop_pct, centre-crop img_size (the paper's linear-probe transform).
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    variant: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        problems = self._resolve_target()
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.img_size % self.patch_size:
            problems.append(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            problems.append(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.decoder_depth and self.decoder_embed_dim % self.decoder_num_heads:
            problems.append(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            problems.append("2-D sin-cos position tables need embedding widths divisible by 4")
        if not 0.0 <= self.mask_ratio < 1.0:
            problems.append(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mask_strategy != "random":
            problems += self._mask_strategy_problems()
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            problems.append("mean and std need one value per input channel")
        if problems:
            raise MAEValueError("invalid MAEConfig: " + "; ".join(problems))

    def _resolve_target(self) -> list[str]:
        """Fill in `target` and `norm_pix_loss` from each other (see the fields' comment);
        returns what is wrong with them, `pca_components` and `encoder_mask_tokens`."""
        legacy, target = self.norm_pix_loss, self.target
        if target is None:
            target = "pixel" if legacy is not None and not legacy else "norm_pix"
        # Frozen: __post_init__ is the one place a derived field may be written.
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "norm_pix_loss", target == "norm_pix")
        problems = []
        if target != "norm_pix":
            # Imported here, as for the mask strategies: the default needs no torch.
            from .targets import TARGETS

            if target not in TARGETS:
                hint = did_you_mean(str(target), TARGETS)
                problems.append(f"target must be one of {', '.join(TARGETS)}, got {target!r}{hint}")
        if legacy is not None and bool(legacy) != (target == "norm_pix"):
            problems.append(
                f"norm_pix_loss={legacy} contradicts target {target!r} (norm_pix_loss is "
                "true exactly when target is 'norm_pix'): give target alone"
            )
        k = self.pca_components
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            problems.append(f"pca_components must be a positive integer, got {k!r}")
        elif target == "pca" and self.patch_size > 0 and self.in_chans > 0:
            size = self.patch_size**2 * self.in_chans
            if k > size:
                problems.append(
                    f"pca_components must be in 1..{size} (patch_size**2 * in_chans, the "
                    f"values of a patch) for target 'pca', got {k}"
                )
        if not isinstance(self.encoder_mask_tokens, bool):
            problems.append(
                f"encoder_mask_tokens must be true or false, got {self.encoder_mask_tokens!r}"
            )
        return problems

    def _mask_strategy_problems(self) -> list[str]:
        # Imported here: masking needs torch, and this module (the default "random" aside)
        # does not.
        from .masking import MASK_STRATEGIES, check_grid_masking

        if self.mask_strategy not in MASK_STRATEGIES:
            hint = did_you_mean(str(self.mask_strategy), MASK_STRATEGIES)
            return [
                f"mask_strategy must be one of {', '.join(MASK_STRATEGIES)}, got "
                f"{self.mask_strategy!r}{hint}"
            ]
        if self.mask_strategy == "grid" and self.patch_size > 0 < self.img_size:
            try:
                check_grid_masking(self.mask_ratio, self.grid_size)
            except MAEValueError as e:
                return [str(e)]
        return []

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size, self.img_size // self.patch_size)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    def replace(self, **changes: Any) -> MAEConfig:
        """A copy with `changes`. Changing one of `target` / `norm_pix_loss` alone re-derives
        the other (norm_pix_loss=False keeps a "pca" target; it turns "norm_pix" into
        "pixel"); changing both checks that they agree."""
        if "target" in changes and "norm_pix_loss" not in changes:
            changes["norm_pix_loss"] = None
        elif "norm_pix_loss" in changes and "target" not in changes:
            legacy = changes["norm_pix_loss"]
            if legacy is not None and bool(legacy) != (self.target == "norm_pix"):
                changes["target"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        kwargs = {k: v for k, v in data.items() if k in known}
        for k in ("mean", "std"):
            if k in kwargs:
                kwargs[k] = tuple(float(v) for v in kwargs[k])
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: data[k] for k in unknown})
        return cls(**kwargs, extra=extra)


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """' (did you mean X?)' naming the choices closest to `word` (difflib), each written
    with `prefix` (e.g. 'local:'), or '' when none is close: a typo gets its fix in the
    error that reports it."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.75)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def _variant_config(name: str) -> MAEConfig:
    m = _VARIANT_RE.fullmatch(name)
    if m is None:
        raise MAEValueError(
            f"unknown MAE variant {name!r}{did_you_mean(name, VARIANTS)}; "
            f"known variants: {', '.join(VARIANTS)}"
        )
    size, patch = m.group(1), int(m.group(2))
    (dim, depth, heads), (ddim, ddepth, dheads) = _SIZES[size]
    return MAEConfig(
        img_size=_DEFAULT_IMG_SIZE[patch],
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        decoder_embed_dim=ddim,
        decoder_depth=ddepth,
        decoder_num_heads=dheads,
        variant=name,
    )


VARIANTS: dict[str, MAEConfig] = {
    f"mae_vit_{size}_patch{p}": _variant_config(f"mae_vit_{size}_patch{p}")
    for size in _SIZES
    for p in _DEFAULT_IMG_SIZE
}


def variant_config(name: str, **overrides: Any) -> MAEConfig:
    """The config of variant `name` with `overrides` applied (e.g. `img_size=96`)."""
    base = VARIANTS.get(name) or _variant_config(name)
    return base.replace(**overrides) if overrides else base


def match_variant(cfg: MAEConfig) -> str:
    """The variant name whose architecture `cfg` has (image size aside), else "custom"."""
    arch = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
    dec = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
    for name, v in VARIANTS.items():
        if all(getattr(cfg, a) == getattr(v, a) for a in arch) and (
            cfg.decoder_depth == 0 or all(getattr(cfg, a) == getattr(v, a) for a in dec)
        ):
            return name
    return "custom"


def heads_for_width(dim: int, *, decoder: bool = False) -> int:
    """Head count a known variant uses for a given width (weights do not record heads)."""
    table = {d: h for (d, _, h), _dec in _SIZES.values()}
    if decoder:
        table = {d: h for _enc, (d, _, h) in _SIZES.values()}
    if dim in table:
        return table[dim]
    # Unknown width: 64-d heads, as in ViT-B/L.
    if dim % 64 == 0:
        return dim // 64
    raise MAEValueError(
        f"cannot infer the number of attention heads for width {dim}; give num_heads explicitly"
    )


# ---------------------------------------------------------------------------------------
# Devices and training settings
# ---------------------------------------------------------------------------------------
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
# Pretraining augmentations (`data.draw_augment`), the presets of the paper's Table 1(e).
AUGMENTS = ("none", "crop-fixed", "crop-rand", "crop-rand+jitter")
# Compute precision of a training step (`distributed.autocast`): auto is bf16 autocast on
# CUDA and fp32 elsewhere; bf16 asks for autocast on any device (a CPU with AVX512-BF16 or
# AMX runs the step's matrix products natively in bf16).
PRECISIONS = ("auto", "fp32", "bf16")


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset,
    a Slurm allocation), else os.cpu_count()."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_workers() -> int:
    """Data loader processes when none are asked for: half the cores, 1 to 8. The workers
    decode and augment while the training process computes on all cores; a worker per core
    took cycles from the step (2 cores, CIFAR-10, ViT-Ti/4: 143 img/s with 1 worker, 121
    with 2; bench/train_threads.py, BENCHMARKS.md)."""
    return max(1, min(8, available_cores() // 2))


def is_device_name(name: str) -> bool:
    """The device names a setting accepts (training, the service): "auto" (CUDA when
    present), "cpu", "cuda", "cuda:N". `distributed.resolve_device` turns one into a
    torch.device; this check needs no torch."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def given_settings(settings: Any) -> dict[str, Any]:
    """The fields of the settings dataclass `settings` that differ from their defaults, and
    the required ones: what a run's settings ask of a resumed run."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # required
            out[f.name] = value
            continue
        if value != default:
            out[f.name] = value
    return out


def _setting(default: Any = dataclasses.MISSING, *, help: str, metavar: str | None = None) -> Any:
    """A `TrainConfig` field with the help text its command-line flag shows."""
    meta = {"help": help, "metavar": metavar}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a pretraining run. `mae train` makes one flag per field (help text
    below, default shown), a JSON/YAML `--config` file uses the same names, and all of
    them are checked here, once."""

    data: str = _setting(
        help="training images: a folder, a .tar/.tar.gz archive, shards, cifar10[:train] or "
        "tinyimagenet[:train]",
        metavar="SOURCE",
    )
    output: str = _setting(help="run folder (checkpoints, metrics, final/)", metavar="DIR")
    variant: str = _setting("mae_vit_base_patch16", help="model variant, e.g. mae_vit_tiny_patch4")
    img_size: int | None = _setting(None, help="image size (default: the variant's)")
    epochs: int = _setting(400, help="length of the schedule")
    max_steps: int | None = _setting(
        None, help="stop after this optimiser step; the schedule still follows --epochs"
    )
    batch_size: int = _setting(64, help="images per process and micro-batch")
    accum_iter: int = _setting(
        1, help="micro-batches per optimiser step, for gradient accumulation"
    )
    blr: float = _setting(1.5e-4, help="base lr; lr = blr x effective batch / 256")
    min_lr: float = _setting(0.0, help="lr at the end of the cosine")
    warmup_epochs: float = _setting(40, help="epochs of linear lr warmup")
    weight_decay: float = _setting(0.05, help="AdamW weight decay, not on norms, biases or tokens")
    mask_ratio: float = _setting(0.75, help="share of patches hidden from the encoder")
    norm_pix_loss: bool = _setting(
        True,
        help="predict per-patch-normalised pixels; --no-norm-pix-loss: the normalised image's "
        "pixels (the older spelling of --target pixel)",
    )
    mask_strategy: str = _setting(
        "random",
        help="which patches are hidden: random, block (BEiT's rectangles), grid (one patch "
        "of every 2x2 cell kept; --mask-ratio 0.75) or centre (a central square). Paper, "
        "Table 1(f), ViT-L fine-tuned: random at ratio 0.75 84.9, block at 0.5 83.9, block "
        "at 0.75 82.8, grid 84.0",
        metavar="random|block|grid|centre",
    )
    target: str = _setting(
        "norm_pix",
        help="what the decoder predicts for a hidden patch: norm_pix (its pixels normalised "
        "per patch), pixel (the normalised image's pixels; --no-norm-pix-loss says the "
        "same) or pca (its coefficients on a PCA basis of training patches, fitted when the "
        "run starts). Paper, Table 1(d): pixel 84.9, norm_pix 85.4, PCA 84.6",
        metavar="norm_pix|pixel|pca",
    )
    pca_components: int = _setting(16, help="PCA coefficients per patch with --target pca")
    encoder_mask_tokens: bool = _setting(
        False,
        help="give the encoder the mask tokens too (every patch goes through it: ~3.3x its "
        "FLOPs at mask ratio 0.75). Paper, Table 1(c): 84.2 with, 84.9 without",
    )
    decoder_depth: int | None = _setting(
        None,
        help="decoder blocks (default: the variant's). Paper, Table 1(a), fine-tuned / "
        "linear probe: 1 block 84.8 / 65.5, 8 blocks 84.9 / 73.5",
    )
    decoder_embed_dim: int | None = _setting(
        None,
        help="decoder width (default: the variant's); a multiple of --decoder-num-heads "
        "and of 4. Paper, Table 1(b): 512-d 84.9 / 73.5, 128-d 84.9 / 69.1",
    )
    decoder_num_heads: int | None = _setting(
        None, help="decoder attention heads (default: the variant's)"
    )
    augment: str = _setting(
        "crop-rand",
        help="pretraining augmentation: none (resize and centre crop), crop-fixed (a square "
        "of a fixed share of the image at a random place, and a flip), crop-rand "
        "(RandomResizedCrop 0.2-1 and a flip) or crop-rand+jitter (and colour jitter 0.4). "
        "Paper, Table 1(e), ViT-L fine-tuned: 84.0, 84.7, 84.9, 84.3",
        metavar="PRESET",
    )
    clip_grad: float | None = _setting(None, help="clip the gradient norm to this (default: off)")
    limit: int | None = _setting(None, help="train on an evenly strided subset of N images")
    seed: int = _setting(0, help="seed of the weights, crops, flips and masks")
    log_every: int = _setting(20, help="steps between log records")
    checkpoint_every: int | None = _setting(
        None, help="steps between checkpoints (default: once per epoch)"
    )
    keep_checkpoints: int = _setting(3, help="how many checkpoints to keep, the newest")
    panel_every: int = _setting(
        10, help="epochs between reconstruction pictures in DIR/panels, 0 for never"
    )
    resume: str | None = _setting(
        None,
        help="continue from the newest valid checkpoint in DIR (auto) or PATH",
        metavar="auto|PATH",
    )
    device: str = _setting("auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    num_workers: int | None = _setting(
        None, help="data loader processes (default: half the cores, 1 to 8)"
    )
    threads: int | None = _setting(
        None,
        help="math threads of each training process (default: OMP_NUM_THREADS when set, else "
        "the cores over the training processes on this machine); each data loader process "
        "uses one",
    )
    data_on_device: bool = _setting(
        False,
        help="decode a small dataset (one image size) once into device memory and augment it "
        "there: keeps a GPU fed on CIFAR-10 / Tiny-ImageNet",
    )
    compile: bool = _setting(False, help="torch.compile the model")
    onednn_linears: bool = _setting(
        True,
        help="fp32 on a CPU: the model's linear layers, forward and backward, through oneDNN "
        "instead of torch's own (MKL's sgemm, slow on AMD CPUs): 1.45-1.64x the training speed "
        "on a 2-core AMD EPYC, BENCHMARKS.md; no effect on a GPU, in bf16 or compiled",
    )
    precision: str = _setting(
        "auto",
        help="compute precision of the forward and backward: auto (bf16 autocast on CUDA, fp32 "
        "on a CPU), fp32, or bf16 (autocast on any device; on a 2-core AMD EPYC with "
        "AVX512-BF16 0.87-1.04x fp32's speed with oneDNN's linears, BENCHMARKS.md); weights "
        "and optimiser state stay fp32",
        metavar="auto|fp32|bf16",
    )
    max_bad_steps: int = _setting(
        5, help="non-finite steps in a row (each skipped) before the run stops"
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A run that resumes holds only the settings given again until the checkpoint's are
        # merged in (`resume.merge_settings`), so the checks that relate two settings (the
        # warmup within the epochs) wait for that: the defaults are not the run's values.
        self.check(relations=not self.resume)

    def check(self, relations: bool = True) -> None:
        """Raise `MAEValueError` naming every setting out of range; with `relations`, also
        those that contradict another setting."""

        def positive(name: str, allow_none: bool = False) -> tuple[bool, str]:
            value = getattr(self, name)
            ok = (allow_none and value is None) or (
                isinstance(value, int) and not isinstance(value, bool) and value > 0
            )
            flag = name.replace("_", "-")
            return ok, f"{flag} must be a positive integer, got {value!r}"

        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        warmup_is_default = self.warmup_epochs == defaults["warmup_epochs"]
        checks = [
            positive("epochs"),
            positive("batch_size"),
            positive("accum_iter"),
            positive("img_size", allow_none=True),
            positive("max_steps", allow_none=True),
            positive("limit", allow_none=True),
            positive("log_every"),
            positive("checkpoint_every", allow_none=True),
            positive("keep_checkpoints"),
            positive("max_bad_steps"),
            positive("threads", allow_none=True),
            positive("pca_components"),
            positive("decoder_depth", allow_none=True),
            positive("decoder_embed_dim", allow_none=True),
            positive("decoder_num_heads", allow_none=True),
            (self.blr > 0, f"blr (base learning rate) must be positive, got {self.blr}"),
            (self.min_lr >= 0, f"min-lr must be >= 0, got {self.min_lr}"),
            (
                self.warmup_epochs >= 0 and (not relations or self.warmup_epochs <= self.epochs),
                f"warmup-epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}"
                + (" (the default: give --warmup-epochs)" if warmup_is_default else ""),
            ),
            (self.weight_decay >= 0, f"weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.mask_ratio < 1, f"mask-ratio must be in [0, 1), got {self.mask_ratio}"),
            (
                self.clip_grad is None or self.clip_grad > 0,
                f"clip-grad must be positive, got {self.clip_grad}",
            ),
            (self.panel_every >= 0, f"panel-every must be >= 0, got {self.panel_every}"),
            (
                self.num_workers is None or self.num_workers >= 0,
                f"num-workers must be >= 0, got {self.num_workers}",
            ),
            (
                self.variant in VARIANTS,
                f"unknown variant {self.variant!r}{did_you_mean(self.variant, VARIANTS)}; "
                f"choose one of: {', '.join(VARIANTS)}",
            ),
            (
                is_device_name(self.device),
                f"device must be {DEVICE_CHOICES}, got {self.device!r}",
            ),
            _one_of("mask_strategy", self.mask_strategy, _mask_strategies(self.mask_strategy)),
            _one_of("target", self.target, _targets(self.target)),
            _one_of("augment", self.augment, AUGMENTS),
            _one_of("precision", self.precision, PRECISIONS),
        ]
        if relations:
            checks += self._recipe_relations()
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise MAEValueError("; ".join(problems))

    def _recipe_relations(self) -> list[tuple[bool, str]]:
        """The checks between the paper's ablation settings and the others."""
        checks = [
            (
                not (self.target == "pca" and self.norm_pix_loss is False),
                "target pca contradicts --no-norm-pix-loss (which means --target pixel): give "
                "one of them",
            )
        ]
        if self.mask_strategy == "grid":
            checks.append(
                (
                    self.mask_ratio == 0.75,
                    "mask-strategy grid keeps one patch of every 2x2 cell, i.e. mask-ratio "
                    f"0.75; got {self.mask_ratio}: use --mask-ratio 0.75, or --mask-strategy "
                    "random or block",
                )
            )
        base = VARIANTS.get(self.variant)
        if base is None:
            return checks  # the unknown variant is reported already
        size = self.img_size if isinstance(self.img_size, int) and self.img_size > 0 else None
        side = (size or base.img_size) // base.patch_size
        if self.mask_strategy == "grid":
            checks.append(
                (
                    side % 2 == 0,
                    f"mask-strategy grid needs an even patch grid (2x2 cells), got {side}x{side}"
                    f" patches: use an even multiple of patch {base.patch_size} for --img-size, "
                    "or another --mask-strategy",
                )
            )
        values = base.patch_size**2 * base.in_chans
        checks.append(
            (
                self.target != "pca" or self.pca_components <= values,
                f"pca-components must be at most the {values} values of a patch "
                f"({base.patch_size}x{base.patch_size}x{base.in_chans}), got "
                f"{self.pca_components}",
            )
        )
        width = self.decoder_embed_dim or base.decoder_embed_dim
        heads = self.decoder_num_heads or base.decoder_num_heads
        if width > 0 and heads > 0:
            default = f" (the {self.variant} default)"
            checks += [
                (
                    width % heads == 0,
                    f"decoder-embed-dim {width}{'' if self.decoder_embed_dim else default} is "
                    f"not divisible by decoder-num-heads {heads}"
                    f"{'' if self.decoder_num_heads else default}: give a width and heads "
                    "that divide",
                ),
                (
                    width % 4 == 0,
                    f"decoder-embed-dim must be a multiple of 4 (its 2-D sin-cos position "
                    f"table), got {width}",
                ),
            ]
        return checks

    def resolved_target(self) -> str:
        """The reconstruction target these settings train: `target`, with the older
        spelling `norm_pix_loss=False` (`--no-norm-pix-loss`) read as "pixel"."""
        if self.target == "norm_pix" and not self.norm_pix_loss:
            return "pixel"
        return self.target

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def given(self) -> dict[str, Any]:
        """The settings that differ from their defaults (data and output always): what
        this config asks of a resumed run, whose other settings come from its checkpoint."""
        return given_settings(self)

    def model_config(self) -> MAEConfig:
        """The `MAEConfig` these settings train: the variant's, with the image size, the
        mask ratio and strategy, the target and the decoder given here."""
        overrides: dict[str, Any] = {
            "target": self.resolved_target(),  # MAEConfig derives norm_pix_loss from it
            "pca_components": self.pca_components,
            "encoder_mask_tokens": self.encoder_mask_tokens,
            "mask_ratio": self.mask_ratio,
            "mask_strategy": self.mask_strategy,
        }
        for name in ("img_size", "decoder_depth", "decoder_embed_dim", "decoder_num_heads"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        return variant_config(self.variant, **overrides)


def _mask_strategies(strategy: str) -> tuple[str, ...]:
    if strategy == "random":
        return ("random",)  # the default: no need to import masking (and torch) for it
    from .masking import MASK_STRATEGIES

    return MASK_STRATEGIES


def _targets(target: str) -> tuple[str, ...]:
    if target == "norm_pix":
        return ("norm_pix",)  # the default: no need to import targets (and torch) for it
    from .targets import TARGETS

    return TARGETS


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> tuple[bool, str]:
    """A `TrainConfig.check` entry: `value` of setting `name` is one of `choices`."""
    hint = did_you_mean(str(value), choices)
    flag = name.replace("_", "-")
    return value in choices, f"{flag} must be one of {', '.join(choices)}, got {value!r}{hint}"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON or YAML file (same names as the flags, with underscores)."""
    import json

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise MAEValueError(f"cannot read config file {path}: {e}") from e
    import yaml

    yaml_file = path.suffix in (".yaml", ".yml")
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (ValueError, yaml.YAMLError) as e:
        kind = "YAML" if yaml_file else "JSON"
        raise MAEValueError(f"config file {path} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise MAEValueError(f"config file {path} must hold a mapping of settings")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - TrainConfig.fields())
    if unknown:
        raise MAEValueError(f"config file {path}: unknown settings {', '.join(unknown)}")
    return data
