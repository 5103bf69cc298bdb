"""Reconstruction panels: original | masked | reconstruction | reconstruction + visible.

A norm-pix model predicts each hidden patch up to its own mean and variance, which the
picture cannot know without peeking at the hidden pixels. Using the hidden patch's true
statistics leaks the answer; one global mean/std washes every patch out. Here each hidden
patch's mean/std is interpolated from its nearest visible patches (`interpolate_patch_stats`),
so the picture is made from the visible pixels and the decoder's output alone. The way back
from predictions to pixels, for every target, is the model's (`pred_to_pixels`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import MAEValueError
from .masking import check_mask_ratio, check_mask_strategy, num_visible
from .model import MaskedAutoencoder
from .targets import NEIGHBOURS
from .targets import interpolate_patch_stats as interpolate_patch_stats  # its former home

GREY = 128  # fill of hidden patches in the `masked` panel
LABELS = ("original", "masked", "reconstruction", "reconstruction + visible")


@dataclass(eq=False)
class Panels:
    """Pictures (uint8, (H, W, 3)) and per-patch facts (L = number of patches)."""

    original: np.ndarray
    masked: np.ndarray  # hidden patches filled with GREY
    reconstruction: np.ndarray  # every patch as the decoder predicts it
    pasted: np.ndarray  # reconstruction with the visible patches' original pixels
    mask: np.ndarray  # (L,) uint8, 1 = hidden
    patch_error: np.ndarray  # (L,) float32 MSE per patch in the loss space
    loss: float  # the model's loss (mean patch_error over hidden patches)
    mask_ratio: float
    seed: int
    caption: str
    mask_strategy: str = "random"  # masking.MASK_STRATEGIES


def preprocess(image: Image.Image, model: MaskedAutoencoder) -> torch.Tensor:
    """PIL image (any mode) -> normalised (3, S, S), S = img_size: shorter side resized to S
    (bicubic), centre crop."""
    cfg = model.config
    size = cfg.img_size
    image = image.convert("RGB")
    scale = size / min(image.size)
    new = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    return (x - mean) / std


def _to_uint8(imgs: torch.Tensor, model: MaskedAutoencoder) -> np.ndarray:
    """Normalised (1, 3, H, W) -> (H, W, 3) uint8."""
    mean = torch.tensor(model.config.mean)[:, None, None]
    std = torch.tensor(model.config.std)[:, None, None]
    x = (imgs[0].float().cpu() * std + mean).clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def reconstruction_panels(
    model: MaskedAutoencoder,
    image: Image.Image | torch.Tensor,
    mask_ratio: float = 0.75,
    seed: int = 0,
    mask_strategy: str | None = None,
) -> Panels:
    """Mask `image`, reconstruct it with `model` and return the four pictures.

    image: a PIL image (resized and cropped to the model's size), or an already normalised
    float tensor (3, H, W) with H, W multiples of the patch size. Same seed -> same mask.
    mask_strategy: one of `masking.MASK_STRATEGIES`; None: the model config's.
    """
    if not model.has_decoder:
        raise MAEValueError("reconstruction panels need the MAE decoder; this model has none")
    ratio = check_mask_ratio(mask_ratio)
    strategy = check_mask_strategy(
        model.config.mask_strategy if mask_strategy is None else mask_strategy
    )
    imgs = image if isinstance(image, torch.Tensor) else preprocess(image, model)
    if imgs.ndim != 3:
        raise ValueError(f"image tensor must have shape (3, H, W), got {tuple(imgs.shape)}")
    imgs = imgs[None].float()  # (1, 3, H, W)
    grid = model.check_images(imgs)
    length = grid[0] * grid[1]
    if num_visible(length, ratio) == 0:
        raise MAEValueError(f"mask_ratio {ratio} leaves no visible patch out of {length}")

    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)  # CPU: same mask on any device
    with torch.inference_mode():
        out = model(
            imgs.to(param.device, param.dtype),
            mask_ratio=ratio,
            generator=generator,
            mask_strategy=strategy,
        )
        pred = out.pred.float().cpu()  # (1, L, T) in the loss space
        mask = out.mask[0].cpu()  # (L,)
        target = model.patch_targets(imgs)[0]  # (L, T), CPU float32
        patch_error = ((pred[0] - target) ** 2).mean(dim=-1)  # (L,)
        pixels = model.pred_to_pixels(pred, imgs, mask[None])  # (1, L, p*p*3)
        recon = model.unpatchify(pixels, grid)  # (1, 3, H, W)

    original, reconstruction = _to_uint8(imgs, model), _to_uint8(recon, model)
    p = model.patch_size
    # (H, W) hidden-pixel map from the (L,) mask, to paint and paste whole patches.
    hidden = mask.reshape(grid).bool().numpy().repeat(p, 0).repeat(p, 1)
    masked, pasted = original.copy(), reconstruction.copy()
    masked[hidden] = GREY
    pasted[~hidden] = original[~hidden]

    n_hidden = int(mask.sum())
    how = _how_shown(model)
    sampling = "" if strategy == "random" else f"{strategy} masking, "
    caption = (
        f"{n_hidden}/{length} patches hidden ({sampling}mask ratio {ratio:g}, seed {seed}); {how}"
    )
    return Panels(
        original=original,
        masked=masked,
        reconstruction=reconstruction,
        pasted=pasted,
        mask=mask.to(torch.uint8).numpy(),
        patch_error=patch_error.numpy().astype(np.float32),
        loss=float(out.loss),
        mask_ratio=ratio,
        seed=seed,
        caption=caption,
        mask_strategy=strategy,
    )


def _how_shown(model: MaskedAutoencoder) -> str:
    """The caption's account of how predictions became the reconstruction's pixels."""
    c = model.config
    if c.target == "pca":
        return (
            f"PCA-target model: the decoder's {c.pca_components} coefficients per patch mapped "
            "back through the stored basis (mean + coefficients x components)"
        )
    if c.target == "pixel":
        return "pixel-target model: decoder output shown as is"
    return (
        f"hidden patches' mean/std interpolated from the {NEIGHBOURS} nearest visible patches "
        "(inverse-distance weights); no hidden pixel used"
    )


def panels_figure(panels: Panels, labels: bool = True, min_width: int = 256) -> Image.Image:
    """The four panels side by side, each upscaled (nearest) to at least `min_width` px so
    that 32-64 px models stay legible; with `labels`, a title above each and the caption
    below."""
    pictures = [panels.original, panels.masked, panels.reconstruction, panels.pasted]
    h, w = pictures[0].shape[:2]
    scale = max(1, math.ceil(min_width / w))
    gap, band = 8, (20 if labels else 0)
    pw, ph = w * scale, h * scale
    width = 4 * pw + 5 * gap
    caption = textwrap.wrap(panels.caption, width=max(20, width // 7)) if labels else []
    height = gap + band + ph + gap + 14 * len(caption) + (gap if caption else 0)
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    for i, (pic, label) in enumerate(zip(pictures, LABELS, strict=True)):
        x = gap + i * (pw + gap)
        fig.paste(Image.fromarray(pic).resize((pw, ph), Image.Resampling.NEAREST), (x, gap + band))
        if labels:
            draw.text((x, gap + 4), label, fill="black")
    for j, line in enumerate(caption):
        draw.text((gap, gap + band + ph + gap + 14 * j), line, fill="black")
    return fig


# The picture's format follows its file name, so that `recon.jpg` holds JPEG bytes. JPEG
# at quality 95 keeps the panels' patch edges and caption legible; WebP is lossless, the
# PNG's very pixels.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_SAVE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"lossless": True}}


def image_format(path: str | Path) -> str:
    """The Pillow format a picture named `path` is written in (from its extension, any
    case); `MAEValueError` naming the accepted extensions otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise MAEValueError(
            f"cannot write a picture as {str(path)!r}: name it .png, .jpg, .jpeg or .webp "
            "(the format follows the extension)"
        )
    return IMAGE_FORMATS[suffix]


def save_panels(panels: Panels, path: str | Path, labels: bool = True) -> Path:
    """Write `panels_figure(panels)` in the format of `path`'s extension (`image_format`),
    parent folders created; returns the path."""
    path = Path(path)
    fmt = image_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels_figure(panels, labels=labels).save(path, format=fmt, **_SAVE_OPTIONS[fmt])
    return path


def reconstruct_file(
    model_id: str,
    image: str | Path,
    output: str | Path,
    *,
    mask_ratio: float = 0.75,
    seed: int = 0,
    revision: str | None = None,
    device: str | None = None,
    mask_strategy: str | None = None,
) -> tuple[Path, Panels]:
    """`mae reconstruct`: the panels of the image file `image` by `model_id` (loaded with its
    decoder), written to `output` in the format its extension names (.png, .jpg/.jpeg,
    .webp); `mask_strategy` None: the model's. -> (the picture's path, the panels)."""
    from PIL import UnidentifiedImageError

    from .hub import load_model

    image_format(output)  # a bad name fails before the model loads
    if mask_strategy is not None:
        check_mask_strategy(mask_strategy)
    try:
        with Image.open(image) as img:
            img.load()
            picture = img.copy()
    except FileNotFoundError:
        raise MAEValueError(f"no such image: {image}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise MAEValueError(f"cannot read {image} as an image: {e}") from None
    model = load_model(model_id, revision, with_decoder=True, device=device)
    panels = reconstruction_panels(
        model, picture, mask_ratio=mask_ratio, seed=seed, mask_strategy=mask_strategy
    )
    return save_panels(panels, output), panels
