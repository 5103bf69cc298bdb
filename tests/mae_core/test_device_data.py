"""The device-resident data path (`--data-on-device`), on the CPU: the same draws as the
loader path, pixels close to PIL's, and training/resume through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mae_core.config import variant_config
from mae_core.data import PretrainDataset
from mae_core.device_data import DeviceImages
from mae_core.sources import DataError, index_folder
from mae_core.train import train
from tests.mae_core.test_train import metrics, run_cfg

CFG = variant_config("mae_vit_tiny_patch8", img_size=32)


@pytest.fixture(scope="module")
def index(cifar_folder: Path):
    return index_folder(cifar_folder, limit=64)


def test_same_draws_and_close_pixels_as_the_loader_path(index) -> None:
    images = DeviceImages(index, CFG, seed=3, device=torch.device("cpu"), progress=False)
    assert images.images.shape == (64, 3, 32, 32) and images.images.dtype == torch.uint8
    loader = PretrainDataset(index, CFG, seed=3)
    picks = [0, 5, 17, 40, 63]
    for epoch in (0, 2):
        got, noise = images.batch(picks, epoch)
        assert got.shape == (5, 3, 32, 32) and noise.shape == (5, 16)
        for row, i in enumerate(picks):
            want, want_noise, _ = loader[(i, epoch)]
            assert torch.equal(noise[row], want_noise)  # the same masks
            # PIL bicubic (a=-0.5, rounded to uint8) vs grid_sample bicubic (a=-0.75), in
            # normalised units (one grey level is ~0.017): close, and clearly the same crop.
            diff = (got[row] - want).abs()
            assert diff.mean() < 0.06, (i, epoch, float(diff.mean()))
            corr = torch.corrcoef(torch.stack([got[row].flatten(), want.flatten()]))[0, 1]
            assert corr > 0.97, (i, epoch, float(corr))
    # and a wrong flip or box would show: a flipped image is far off
    flipped = images.batch([5], 0)[0][0].flip(-1)
    assert (flipped - loader[(5, 0)][0]).abs().mean() > 2 * (
        images.batch([5], 0)[0][0] - loader[(5, 0)][0]
    ).abs().mean()


@pytest.mark.parametrize("augment", ["none", "crop-fixed", "crop-rand+jitter"])
def test_every_augment_preset_matches_the_loader_path(index, augment: str) -> None:
    images = DeviceImages(
        index, CFG, seed=3, device=torch.device("cpu"), progress=False, augment=augment
    )
    loader = PretrainDataset(index, CFG, seed=3, augment=augment)
    picks = [0, 5, 17, 40, 63]
    got, noise = images.batch(picks, 1)
    for row, i in enumerate(picks):
        want, want_noise, _ = loader[(i, 1)]
        assert torch.equal(noise[row], want_noise), (augment, i)
        diff = (got[row] - want).abs()
        assert diff.mean() < 0.06, (augment, i, float(diff.mean()))
        corr = torch.corrcoef(torch.stack([got[row].flatten(), want.flatten()]))[0, 1]
        assert corr > 0.97, (augment, i, float(corr))
    # and the preset shows: the default crops elsewhere
    assert (got - images_default(index).batch(picks, 1)[0]).abs().mean() > 0.1


def images_default(index) -> DeviceImages:
    return DeviceImages(index, CFG, seed=3, device=torch.device("cpu"), progress=False)


def test_mixed_sizes_are_refused(tmp_path: Path, cifar_folder: Path) -> None:
    src = sorted((cifar_folder / "cat").iterdir())[:2]
    Image.open(src[0]).save(tmp_path / "a.png")
    Image.open(src[1]).resize((48, 40)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"needs images of one size.*32x32 and 48x40"):
        DeviceImages(
            index_folder(tmp_path), CFG, seed=0, device=torch.device("cpu"), progress=False
        )


def test_training_and_exact_resume_on_the_device_path(cifar_folder: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(run_cfg(cifar_folder, full, epochs=2, data_on_device=True))
    part = tmp_path / "part"
    train(run_cfg(cifar_folder, part, epochs=2, data_on_device=True, max_steps=11))
    train(run_cfg(cifar_folder, part, epochs=2, data_on_device=True, resume="auto"))
    a, b = metrics(full), metrics(part)
    assert len(a) == len(b) == 18
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    # the loader path on the same data: same masks and crops, nearly the same pixels
    train(run_cfg(cifar_folder, tmp_path / "loader", epochs=2, max_steps=1))
    loader = metrics(tmp_path / "loader")
    assert abs(loader[0]["loss"] - a[0]["loss"]) < 0.05 * a[0]["loss"]


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["crop-rand", "none", "crop-fixed", "crop-rand+jitter"])
def test_cuda_batches_match_the_cpu_ones(index, augment: str) -> None:
    kw = {"seed": 1, "progress": False, "augment": augment}
    cpu = DeviceImages(index, CFG, device=torch.device("cpu"), **kw)
    gpu = DeviceImages(index, CFG, device=torch.device("cuda"), **kw)
    assert torch.equal(cpu.images, gpu.images.cpu())
    a, na = cpu.batch(list(range(32)), 4)
    b, nb = gpu.batch(list(range(32)), 4)
    assert b.device.type == "cuda" and torch.equal(na, nb.cpu())
    torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)
