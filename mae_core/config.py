"""Model configuration: `MAEConfig` and the table of named variants.

A variant name reads `mae_vit_{size}_patch{P}`; the size fixes the encoder and decoder
widths, the patch size fixes the default image size (patch 4 -> 32 px, 8 -> 64 px,
14 and 16 -> 224 px). Any field can be overridden, e.g. `img_size=96`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

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
    norm_pix_loss: bool = True
    mask_ratio: float = 0.75  # the default used when `forward` is not given one
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
        problems = []
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
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            problems.append("mean and std need one value per input channel")
        if problems:
            raise ValueError("invalid MAEConfig: " + "; ".join(problems))

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size, self.img_size // self.patch_size)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    def replace(self, **changes: Any) -> MAEConfig:
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


def _variant_config(name: str) -> MAEConfig:
    m = _VARIANT_RE.match(name)
    if m is None:
        raise ValueError(f"unknown MAE variant {name!r}; known variants: {', '.join(VARIANTS)}")
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
    raise ValueError(
        f"cannot infer the number of attention heads for width {dim}; give num_heads explicitly"
    )
