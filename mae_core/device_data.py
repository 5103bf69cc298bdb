"""Small datasets kept decoded on the training device, augmented there.

A tiny MAE on CIFAR-10 or Tiny-ImageNet steps faster on a GPU than CPU workers can decode
and crop JPEGs, so the GPU waits. `DeviceImages` decodes every image once into one uint8
tensor on the device ((N, 3, H, W): 1.2 GB for Tiny-ImageNet's 100,000 64-px images) and
makes each batch there:

- the draws are those of the CPU path (`PretrainDataset`), for every `--augment` preset:
  for each sample, its crop box, flip, colour factors and masking noise come from
  `sample_generator(seed, epoch, index)` in the same order (`data.draw_augment`), so both
  paths crop the same boxes and hide the same patches;
- the crop is resampled with `grid_sample` (bicubic, pixel centres mapped as in a resize),
  flipped by a negative x scale, clamped to [0, 255], colour-jittered when asked (the same
  `data.colour_jitter` as the CPU path) and normalised. The pixels differ
  from PIL's bicubic by rounding (PIL rounds to uint8 after resizing) and by antialiasing,
  which only matters when a crop is shrunk: with images stored at the training size, a
  crop is never larger than the output, so no antialiasing is ever needed.

All images must share one size (CIFAR-10 and Tiny-ImageNet do); a folder of mixed sizes
is refused with a message (the default loader handles those).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .config import MAEConfig
from .data import PretrainDataset, check_augment, colour_jitter, draw_augment, sample_generator
from .sources import DataError, ImageIndex

log = logging.getLogger(__name__)


class _Decoded(Dataset):
    """Item i -> the decoded image as uint8 (3, H, W) (a replacement on decode failure)."""

    def __init__(self, index: ImageIndex, cfg: MAEConfig) -> None:
        self.loader = PretrainDataset(index, cfg, seed=0)

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.loader._load(i)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


class DeviceImages:
    """Every image of `index`, decoded, as one uint8 tensor on `device`.

    `batch(indices, epoch)` -> (images (B, 3, S, S) normalised float32, noise (B, L)), both on
    `device`, from the same per-sample draws as `PretrainDataset` with the same `augment`.
    """

    def __init__(
        self,
        index: ImageIndex,
        cfg: MAEConfig,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        progress: bool = True,
        augment: str = "crop-rand",
    ) -> None:
        from tqdm.auto import tqdm

        self.cfg, self.seed, self.device = cfg, seed, device
        self.augment = check_augment(augment)
        loader = DataLoader(
            _Decoded(index, cfg),
            batch_size=256,
            num_workers=num_workers,
            collate_fn=list,  # a list: sizes are checked below
        )
        chunks: list[torch.Tensor] = []
        size: tuple[int, int] | None = None
        for batch in tqdm(
            loader,
            desc="decoding onto the device",
            unit="batch",
            disable=None if progress else True,
        ):
            for img in batch:
                if size is None:
                    size = tuple(img.shape[1:])  # type: ignore[assignment]
                elif tuple(img.shape[1:]) != size:
                    raise DataError(
                        f"--data-on-device needs images of one size; {index.name} has "
                        f"{size[1]}x{size[0]} and {img.shape[2]}x{img.shape[1]} px "
                        "(the default loader handles mixed sizes)"
                    )
            chunks.append(torch.stack(batch).to(device))
        self.images = torch.cat(chunks)  # (N, 3, H, W) uint8
        self.height, self.width = size  # type: ignore[misc]
        mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255.0
        self._mean, self._std = mean, std
        log.info(
            "%d images of %dx%d px on %s (%.1f MB)",
            len(self.images),
            self.width,
            self.height,
            device,
            self.images.numel() / 1e6,
        )

    def __len__(self) -> int:
        return len(self.images)

    def draws(
        self, indices: list[int], epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per sample: the affine map of its crop and flip (B, 2, 3), its noise (B, L) and,
        with colour jitter, its factors (B, 3) (else None), drawn on the CPU in the order of
        `train_transform` then the noise."""
        thetas, noises, factors = [], [], []
        w_img, h_img = self.width, self.height
        for i in indices:
            g = sample_generator(self.seed, epoch, i)
            d = draw_augment(self.augment, w_img, h_img, g, self.cfg.crop_pct)
            (top, left, h, w), flip = d.box, d.flip
            if d.jitter is not None:
                factors.append(d.jitter)
            noises.append(torch.rand(self.cfg.num_patches, generator=g))
            # Output pixel centre u in [-1, 1] (align_corners=False) maps to source x =
            # left + (j + 0.5) * w / S - 0.5, i.e. x_norm = u * w / W + (2 * left + w) / W - 1.
            sx = (w / w_img) * (-1.0 if flip else 1.0)
            thetas.append(
                [
                    [sx, 0.0, (2 * left + w) / w_img - 1],
                    [0.0, h / h_img, (2 * top + h) / h_img - 1],
                ]
            )
        jitter = torch.tensor(factors, dtype=torch.float32) if factors else None
        return torch.tensor(thetas, dtype=torch.float32), torch.stack(noises), jitter

    def batch(self, indices: list[int], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        theta, noise, jitter = self.draws(indices, epoch)
        src = self.images[torch.as_tensor(indices, device=self.device)].float()
        s = self.cfg.img_size
        grid = F.affine_grid(theta.to(self.device), [len(indices), 3, s, s], align_corners=False)
        out = F.grid_sample(src, grid, mode="bicubic", padding_mode="border", align_corners=False)
        out = out.clamp_(0.0, 255.0)
        if jitter is not None:
            out = colour_jitter(out / 255.0, jitter.to(self.device)) * 255.0
        out = (out - self._mean) / self._std
        return out, noise.to(self.device)
