"""Data sources, decoding, augmentation and the epoch sampler, on real CIFAR-10 JPEGs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae_core import variant_config
from mae_core.config import AUGMENTS
from mae_core.data import (
    EpochSampler,
    EvalDataset,
    PretrainDataset,
    colour_jitter,
    draw_augment,
    random_resized_crop_box,
    sample_generator,
)
from mae_core.sources import DataError, index_folder, index_source, open_rgb

CFG = variant_config("mae_vit_tiny_patch8", img_size=32)


def test_folder_with_classes(cifar_folder: Path) -> None:
    idx = index_folder(cifar_folder)
    assert len(idx) == 300 and len(idx.classes) == 10
    assert idx.classes[0] == "airplane" and sorted(set(idx.labels)) == list(range(10))
    assert idx.labels.count(3) == 30


def test_limit_is_an_even_subset(cifar_folder: Path) -> None:
    idx = index_source(str(cifar_folder), limit=50)
    assert len(idx) == 50 and len(set(idx.labels)) == 10  # strided: every class present


def test_formats_and_modes_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    variants = {
        "grey.png": rgb.convert("L"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "alpha.png": rgb.convert("RGBA"),
        "palette.gif": rgb.convert("P"),
        "photo.webp": rgb,
        "photo.bmp": rgb,
        "photo.tiff": rgb,
        "deep.png": Image.fromarray((rng.integers(0, 65535, (20, 24))).astype(np.uint16)),
    }
    for name, img in variants.items():
        img.save(tmp_path / name)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    idx = index_folder(tmp_path)
    assert len(idx) == 9 and idx.classes == [] and set(idx.labels) == {-1}
    for item in idx.items:
        img = open_rgb(item)
        assert img.mode == "RGB" and img.size == (24, 20), item
    deep = np.asarray(open_rgb(tmp_path / "deep.png"))
    assert deep.max() > 128  # 16-bit values scaled into 8 bits, not clipped to 255 or 0


def test_unreadable_files_are_counted_not_fatal(cifar_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mixed" / "cat"
    bad.mkdir(parents=True)
    for f in sorted((cifar_folder / "cat").iterdir())[:5]:
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "broken.jpg").write_bytes(b"not a jpeg at all")
    (bad / "notes.txt").write_text("ignored: not an image extension")
    idx = index_folder(tmp_path / "mixed")
    assert len(idx) == 5 and len(idx.unreadable) == 1 and idx.summary()["unreadable"] == 1


def test_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        index_source(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no images found"):
        index_source(str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of its 1 files is a readable image"):
        index_source(str(tmp_path))
    with pytest.raises(DataError, match="cifar10 has splits train and test"):
        index_source("cifar10:holdout")


def test_tar_archives_read_in_place(cifar_folder: Path, tmp_path: Path) -> None:
    for name, mode in (("imgs.tar", "w"), ("imgs.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            tar.add(cifar_folder, arcname="cifar")
        idx = index_source(str(tmp_path / name))
        assert len(idx) == 300 and len(idx.classes) == 10
        assert open_rgb(idx.items[0]).size == (32, 32)
    with pytest.raises(DataError, match="cannot read archive"):
        (tmp_path / "bad.tar").write_bytes(b"x" * 1000)
        index_source(str(tmp_path / "bad.tar"))


def test_missing_archive_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MAE_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    import mae_core.sources as sources

    monkeypatch.setattr(sources, "_archive_dirs", lambda: [tmp_path / "nowhere"])
    with pytest.raises(DataError, match=r"archive tinyimagenet200\.tar\.gz not found; put it in"):
        index_source("tinyimagenet")


def test_named_cifar10_unpacks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path))
    idx = index_source("cifar10:test", limit=100)
    assert idx.name == "cifar10:test[:100]" and len(idx.classes) == 10
    assert (tmp_path / "cifar10" / ".complete").is_file()
    assert len(list((tmp_path / "cifar10" / "train").rglob("*.jpg"))) == 50_000
    mtime = (tmp_path / "cifar10" / ".complete").stat().st_mtime
    assert len(index_source("cifar10:val", limit=10)) == 10  # val is an alias of test
    assert (tmp_path / "cifar10" / ".complete").stat().st_mtime == mtime


def test_crop_box_stays_inside_and_is_seeded() -> None:
    for i in range(200):
        g = sample_generator(0, 0, i)
        top, left, h, w = random_resized_crop_box(40, 30, g)
        assert top >= 0 and top + h <= 30 and left >= 0 and left + w <= 40
        assert 0.2 * 1200 * 0.5 <= h * w <= 1200
    a = random_resized_crop_box(64, 64, sample_generator(1, 2, 3))
    assert a == random_resized_crop_box(64, 64, sample_generator(1, 2, 3))


def test_sample_is_a_pure_function_of_seed_epoch_index(cifar_folder: Path) -> None:
    ds = PretrainDataset(index_folder(cifar_folder), CFG, seed=5)
    x1, n1, _ = ds[(7, 2)]
    ds[(8, 2)]  # other draws in between change nothing
    x2, n2, _ = ds[(7, 2)]
    assert torch.equal(x1, x2) and torch.equal(n1, n2)
    assert x1.shape == (3, 32, 32) and n1.shape == (16,)
    x3, _, _ = ds[(7, 3)]
    assert not torch.equal(x1, x3)  # a new epoch, a new crop


def test_augment_presets_are_seeded_and_differ(cifar_folder: Path) -> None:
    index = index_folder(cifar_folder)
    default = PretrainDataset(index, CFG, seed=5)
    seen = {}
    for augment in AUGMENTS:
        ds = PretrainDataset(index, CFG, seed=5, augment=augment)
        x1, n1, _ = ds[(7, 2)]
        ds[(8, 2)]
        x2, n2, _ = ds[(7, 2)]
        assert torch.equal(x1, x2) and torch.equal(n1, n2), augment
        assert x1.shape == (3, 32, 32) and n1.shape == (16,)
        seen[augment] = x1
        other_epoch = ds[(7, 3)][0]
        # "none" draws nothing: every epoch sees the same picture; the others do not.
        assert torch.equal(x1, other_epoch) == (augment == "none"), augment
    assert torch.equal(seen["crop-rand"], default[(7, 2)][0])  # the default preset
    for a in AUGMENTS:
        for b in AUGMENTS:
            assert a == b or not torch.equal(seen[a], seen[b]), (a, b)
    with pytest.raises(ValueError, match="unknown augment 'heavy'; choose one of: none, "):
        PretrainDataset(index, CFG, seed=5, augment="heavy")


def test_crop_rand_draws_what_it_drew_before_the_presets() -> None:
    """Runs (and checkpoints) from before `--augment` must see the same crops and masks."""
    for i in range(50):
        g_old, g_new = sample_generator(3, 1, i), sample_generator(3, 1, i)
        box = random_resized_crop_box(40, 30, g_old)
        flip = torch.rand(1, generator=g_old).item() < 0.5
        d = draw_augment("crop-rand", 40, 30, g_new)
        assert (d.box, d.flip, d.jitter) == (box, flip, None)
        assert torch.equal(torch.rand(16, generator=g_old), torch.rand(16, generator=g_new))
        # +jitter draws the same box and flip, then its colour factors
        j = draw_augment("crop-rand+jitter", 40, 30, sample_generator(3, 1, i))
        assert (j.box, j.flip) == (box, flip)
        assert j.jitter is not None and all(0.6 <= f <= 1.4 for f in j.jitter)


def test_fixed_size_and_centre_boxes() -> None:
    places = set()
    for i in range(100):
        top, left, h, w = draw_augment("crop-fixed", 40, 32, sample_generator(0, 0, i)).box
        assert h == w == 28  # 0.875 (crop_pct) of the shorter side
        assert 0 <= top <= 32 - 28 and 0 <= left <= 40 - 28
        places.add((top, left))
    assert len(places) > 20  # 5 x 13 places, drawn at random
    for i in range(3):
        none = draw_augment("none", 40, 32, sample_generator(0, 0, i))
        assert none == ((2, 6, 28, 28), False, None)


def test_colour_jitter_is_torchvisions() -> None:
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(3, 3, 8, 8)
    factors = torch.tensor([[1.0, 1.0, 1.0], [1.3, 0.7, 1.2], [0.6, 1.4, 0.6]])
    out = colour_jitter(x, factors)
    torch.testing.assert_close(out[0], x[0])
    for k in (1, 2):
        b, c, s = factors[k].tolist()
        want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[k], b), c), s)
        torch.testing.assert_close(out[k], want, atol=1e-6, rtol=1e-5)


def test_eval_dataset_is_centre_crop(cifar_folder: Path) -> None:
    cfg64 = variant_config("mae_vit_tiny_patch8")  # 64 px: CIFAR upscaled
    x, label = EvalDataset(index_folder(cifar_folder), cfg64)[31]
    assert x.shape == (3, 64, 64) and label == 1


def test_sampler_global_batches_do_not_depend_on_world_size() -> None:
    single = list(EpochSampler(100, 8, seed=1, epoch=0))
    assert len(single) == 96 and len({i for i, _ in single}) == 96
    two = [list(EpochSampler(100, 4, seed=1, epoch=0, rank=r, world=2)) for r in range(2)]
    for b in range(12):
        merged = {i for r in range(2) for i, _ in two[r][b * 4 : (b + 1) * 4]}
        assert merged == {i for i, _ in single[b * 8 : (b + 1) * 8]}
    resumed = list(EpochSampler(100, 8, seed=1, epoch=0, start_batch=5))
    assert resumed == single[40:]
    assert list(EpochSampler(100, 8, seed=1, epoch=1)) != single
    assert len(list(EpochSampler(100, 8, seed=1, epoch=0, num_batches=4))) == 32


def test_loader_workers_do_not_change_batches(cifar_folder: Path) -> None:
    ds = PretrainDataset(index_folder(cifar_folder), CFG, seed=0)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=16,
            sampler=EpochSampler(len(ds), 16, 0, 0, num_batches=3),
            num_workers=workers,
        )
        batches.append([(x, n, i) for x, n, i in loader])
    for (xa, na, ia), (xb, nb, ib) in zip(*batches, strict=True):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(na, nb)


def test_bytes_and_paths_decode_alike(cifar_folder: Path) -> None:
    path = sorted((cifar_folder / "dog").iterdir())[0]
    a = np.asarray(open_rgb(path))
    b = np.asarray(open_rgb(io.BytesIO(path.read_bytes()).getvalue()))
    assert np.array_equal(a, b)


def test_plain_tar_is_read_by_offset(cifar_folder: Path, tmp_path: Path) -> None:
    from mae_core.sources import TarMember

    with tarfile.open(tmp_path / "imgs.tar", "w") as tar:
        tar.add(cifar_folder / "ship", arcname="ship")
    idx = index_source(str(tmp_path / "imgs.tar"))
    assert all(isinstance(i, TarMember) for i in idx.items)
    first = sorted((cifar_folder / "ship").iterdir())[0]
    assert idx.items[0].read() == first.read_bytes()


def test_webdataset_shards_with_labels(cifar_folder: Path, tmp_path: Path) -> None:
    files = sorted(cifar_folder.rglob("*.jpg"))[:40]
    for shard in range(4):
        with tarfile.open(tmp_path / f"shard-{shard:06d}.tar", "w") as tar:
            for k, f in enumerate(files[shard * 10 : (shard + 1) * 10]):
                key = f"{shard:02d}{k:04d}"
                tar.add(f, arcname=f"{key}.jpg")
                label = str(["airplane", "automobile"].index(f.parent.name)).encode()
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = len(label)
                tar.addfile(info, io.BytesIO(label))
    idx = index_source(str(tmp_path / "shard-{000000..000003}.tar"))
    assert len(idx) == 40 and idx.labels[:3] == [0, 0, 0] and idx.labels[-1] == 1
    assert np.asarray(open_rgb(idx.items[0])).shape == (32, 32, 3)
    with pytest.raises(DataError, match="1 of 5 shards"):
        index_source(str(tmp_path / "shard-{000000..000004}.tar"))
