"""Images to tensors for pretraining and evaluation: transforms, datasets, the order of an
epoch, and the feed that hands a training process its batches.

Determinism: a sample's augmentation and its masking noise are drawn from a generator
seeded by (seed, epoch, index) alone, and the order of an epoch from (seed, epoch), so a
run sees the same batches whatever the number of loader workers or processes, and a
resumed run continues exactly where it stopped. (Where the images come from: `sources.py`.)
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import AUGMENTS, MAEConfig, default_workers, did_you_mean
from .errors import MAEValueError
from .sources import DataError, ImageIndex, open_rgb

log = logging.getLogger(__name__)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's random draws: a pure function of its arguments."""
    key = (seed * 1_000_003 + epoch) * 10_000_019 + index
    return torch.Generator().manual_seed(key % (2**63 - 1))


def random_resized_crop_box(
    width: int,
    height: int,
    g: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop draws it, from generator `g`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    # Fallback: the central crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# Colour jitter's strength: brightness, contrast and saturation factors uniform in
# [1 - 0.4, 1 + 0.4], timm's `color_jitter=0.4` (no hue), applied in that order.
JITTER = 0.4
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


class AugmentDraw(NamedTuple):
    """One sample's augmentation: a crop box of the source image, a flip, colour factors."""

    box: tuple[int, int, int, int]  # (top, left, h, w) in source pixels
    flip: bool
    jitter: tuple[float, float, float] | None  # brightness, contrast, saturation factors


def check_augment(augment: str) -> str:
    """`augment` if it names one of `AUGMENTS`, else `MAEValueError` listing them."""
    if augment in AUGMENTS:
        return augment
    hint = did_you_mean(str(augment), AUGMENTS)
    raise MAEValueError(f"unknown augment {augment!r}{hint}; choose one of: {', '.join(AUGMENTS)}")


def fixed_crop_side(width: int, height: int, crop_pct: float) -> int:
    """The side of the square a fixed-size crop takes: `crop_pct` of the shorter side, as
    resizing the shorter side to S / crop_pct and cropping S (ImageNet's 256 -> 224)."""
    return max(1, min(width, height, round(min(width, height) * crop_pct)))


def draw_augment(
    augment: str, width: int, height: int, g: torch.Generator, crop_pct: float = 0.875
) -> AugmentDraw:
    """The draws of one sample's augmentation `augment` (`AUGMENTS`) of a `width` x `height`
    image, from generator `g`, in a fixed order: the box, the flip, the colour factors.

    - none: the centred square of `fixed_crop_side` (resize and centre crop), no flip;
    - crop-fixed: a square of that side at a random place, and a flip;
    - crop-rand: RandomResizedCrop's box (scale 0.2-1, aspect 3/4-4/3), and a flip;
    - crop-rand+jitter: crop-rand, then brightness, contrast and saturation factors.
    crop-rand draws exactly what this module drew before the presets existed, so runs and
    their checkpoints from then resume the same.
    """
    check_augment(augment)
    if augment == "none":
        side = fixed_crop_side(width, height, crop_pct)
        return AugmentDraw(((height - side) // 2, (width - side) // 2, side, side), False, None)
    if augment == "crop-fixed":
        side = fixed_crop_side(width, height, crop_pct)
        top = int(torch.randint(0, height - side + 1, (1,), generator=g))
        left = int(torch.randint(0, width - side + 1, (1,), generator=g))
        box = (top, left, side, side)
    else:
        box = random_resized_crop_box(width, height, g)
    flip = torch.rand(1, generator=g).item() < 0.5
    jitter = None
    if augment == "crop-rand+jitter":
        u = torch.rand(3, generator=g).tolist()
        jitter = tuple(1.0 - JITTER + 2 * JITTER * v for v in u)
    return AugmentDraw(box, flip, jitter)  # type: ignore[arg-type]


def colour_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1]; factors: (N, 3) brightness, contrast, saturation -> (N, 3,
    H, W) in [0, 1], adjusted as torchvision's `adjust_*` on float images, in that order."""
    luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    b, c, s = (f.view(-1, 1, 1, 1).to(x) for f in factors.unbind(-1))
    x = (x * b).clamp(0.0, 1.0)
    mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(-2, -1), keepdim=True)  # (N, 1, 1, 1)
    x = (c * x + (1 - c) * mean).clamp(0.0, 1.0)
    grey = (x * luma).sum(dim=1, keepdim=True)  # (N, 1, H, W)
    return (s * x + (1 - s) * grey).clamp(0.0, 1.0)


def _normalise(img: Image.Image, cfg: MAEConfig, jitter: Any = None) -> torch.Tensor:
    x = TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)  # (3, H, W) in [0, 1]
    if jitter is not None:
        x = colour_jitter(x[None], torch.tensor([jitter]))[0]
    return TF.normalize(x, list(cfg.mean), list(cfg.std))


def train_transform(
    img: Image.Image, cfg: MAEConfig, g: torch.Generator, augment: str = "crop-rand"
) -> torch.Tensor:
    """The pretraining augmentation `augment` (`draw_augment`; default the paper's:
    RandomResizedCrop(scale 0.2-1) and a horizontal flip): the box resized to img_size
    (bicubic), the flip, the colour factors, then ImageNet normalisation.
    -> (3, img_size, img_size)."""
    d = draw_augment(augment, img.width, img.height, g, cfg.crop_pct)
    top, left, h, w = d.box
    img = TF.resized_crop(
        img,
        top,
        left,
        h,
        w,
        [cfg.img_size, cfg.img_size],
        interpolation=TF.InterpolationMode.BICUBIC,
        antialias=True,
    )
    if d.flip:
        img = TF.horizontal_flip(img)
    return _normalise(img, cfg, d.jitter)


def eval_transform(img: Image.Image, cfg: MAEConfig) -> torch.Tensor:
    """Resize the shorter side to img_size / crop_pct, centre-crop img_size, normalise."""
    short = math.floor(cfg.img_size / cfg.crop_pct)
    interp = TF.InterpolationMode(cfg.interpolation)
    img = TF.resize(img, [short], interpolation=interp, antialias=True)
    img = TF.center_crop(img, [cfg.img_size, cfg.img_size])
    return _normalise(img, cfg)


class PretrainDataset(Dataset):
    """Item `(index, epoch)` -> (image (3, S, S), masking noise (L,), index).

    Both the augmentation (`augment`, one of `AUGMENTS`) and the noise come from
    `sample_generator(seed, epoch, index)`, the augmentation's draws first.
    """

    def __init__(
        self, index: ImageIndex, cfg: MAEConfig, seed: int, augment: str = "crop-rand"
    ) -> None:
        self.index, self.cfg, self.seed = index, cfg, seed
        self.augment = check_augment(augment)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, epoch = key
        g = sample_generator(self.seed, epoch, i)
        img = self._load(i)
        x = train_transform(img, self.cfg, g, self.augment)
        noise = torch.rand(self.cfg.num_patches, generator=g)
        return x, noise, i

    def _load(self, i: int) -> Image.Image:
        # A file that passed the header check but fails to decode is replaced by the next
        # one, deterministically, so the run goes on and stays reproducible.
        n = len(self.index)
        for step in range(min(n, 16)):
            j = (i + step) % n
            try:
                return open_rgb(self.index.items[j])
            except (OSError, ValueError, UnidentifiedImageError) as e:
                log.warning(
                    "cannot decode image %d of %s (%s); using the next", j, self.index.name, e
                )
        raise DataError(f"{self.index.name}: 16 images in a row failed to decode near {i}")


class EvalDataset(Dataset):
    """Item i -> (image (3, S, S) with the eval transform, label)."""

    def __init__(self, index: ImageIndex, cfg: MAEConfig) -> None:
        self.index, self.cfg = index, cfg

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return eval_transform(open_rgb(self.index.items[i]), self.cfg), self.index.labels[i]


class EpochSampler(Sampler):
    """Yields `(index, epoch)` for one rank's share of an epoch, from batch `start_batch` on.

    The epoch's order is a permutation seeded by (seed, epoch). Global batch b is
    `order[b*B*W:(b+1)*B*W]` (B per rank, W ranks); rank r takes every W-th item of it, so
    the global batch is the same whatever W is. Incomplete last batches are dropped.
    """

    def __init__(
        self,
        n: int,
        batch_per_rank: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        num_batches: int | None = None,
    ) -> None:
        self.n, self.b, self.seed, self.epoch = n, batch_per_rank, seed, epoch
        self.rank, self.world, self.start = rank, world, start_batch
        full = n // (batch_per_rank * world)
        self.batches = full if num_batches is None else min(full, num_batches)

    def __len__(self) -> int:
        return max(0, self.batches - self.start) * self.b

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        gb = self.b * self.world
        for b in range(self.start, self.batches):
            chunk = order[b * gb : (b + 1) * gb]
            for i in chunk[self.rank :: self.world]:
                yield i, self.epoch


class PretrainFeed:
    """One process's training batches: `batches(epoch, start_batch)` yields (images (B, 3,
    S, S), noise (B, L), indices) of its share of `epoch` from batch `start_batch` on.

    A DataLoader over `PretrainDataset` (CPU workers decode and augment), or, with
    `on_device`, `DeviceImages` (decoded once into device memory, augmented there); both
    draw the same crops and masks. `augment`: one of `AUGMENTS` (`draw_augment`).
    """

    def __init__(
        self,
        index: ImageIndex,
        cfg: MAEConfig,
        *,
        seed: int,
        batch_size: int,
        batches_per_epoch: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        num_workers: int | None = None,
        on_device: bool = False,
        progress: bool = True,
        augment: str = "crop-rand",
    ) -> None:
        self.index, self.cfg, self.seed = index, cfg, seed
        self.augment = check_augment(augment)
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.device, self.rank, self.world = device, rank, world
        self.num_workers = num_workers if num_workers is not None else default_workers()
        self.device_images = None
        if on_device:
            from .device_data import DeviceImages

            self.device_images = DeviceImages(
                index, cfg, seed, device, self.num_workers, progress=progress, augment=augment
            )

    def sampler(self, epoch: int, start_batch: int) -> EpochSampler:
        """This rank's share of `epoch`, from batch `start_batch` on."""
        return EpochSampler(
            len(self.index),
            self.batch_size,
            self.seed,
            epoch,
            self.rank,
            self.world,
            start_batch,
            num_batches=self.batches_per_epoch,
        )

    def batches(
        self, epoch: int, start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        if self.device_images is None:
            return iter(self._loader(epoch, start_batch))
        return self._device_batches(epoch, start_batch)

    def _device_batches(
        self, epoch: int, start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        images = self.device_images
        assert images is not None
        keys = iter(self.sampler(epoch, start_batch))
        while chunk := [i for i, _ in itertools.islice(keys, self.batch_size)]:
            imgs, noise = images.batch(chunk, epoch)
            yield imgs, noise, chunk

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        return DataLoader(
            PretrainDataset(self.index, self.cfg, self.seed, self.augment),
            batch_size=self.batch_size,
            sampler=self.sampler(epoch, start_batch),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            worker_init_fn=_init_worker,
        )


# Images a "pca" target's basis is fitted on: 2,000 images of 196 patches (224 px, patch
# 16) are 392,000 patches, plenty for the 768 x 768 covariance.
PCA_IMAGES = 2000


def pca_batches(
    index: ImageIndex,
    cfg: MAEConfig,
    seed: int,
    num_workers: int = 0,
    max_images: int = PCA_IMAGES,
    batch_size: int = 256,
) -> Iterator[torch.Tensor]:
    """Batches (B, 3, S, S) of normalised images for fitting a PCA target: `max_images` of
    `index` at most, chosen by `seed` (in index order), resized and centre-cropped (augment
    "none"): the same images for every process and every run with that seed."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(index), generator=g)[:max_images].sort().values.tolist()
    dataset = torch.utils.data.Subset(
        PretrainDataset(index, cfg, seed, augment="none"), [(i, 0) for i in picks]
    )
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, worker_init_fn=_init_worker
    )
    for imgs, _noise, _ in loader:
        yield imgs


def _init_worker(worker_id: int) -> None:
    """A loader worker decodes and augments one image at a time: one math thread (torch's
    loader sets this too; said here so it does not depend on that). It leaves SIGINT and
    SIGTERM to the main process: a signal sent to the whole process group (Ctrl-C,
    `timeout`, Slurm, systemd) must not kill a worker mid-batch before the main process
    has checkpointed."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
