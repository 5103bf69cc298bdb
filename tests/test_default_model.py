"""The default model shipped in models/ (mae/vit-tiny-tinyimagenet): it loads the ways the
model card says, and what it learned shows on images it never saw.

- Features: weighted k-NN on real CIFAR-10 test JPEGs (upscaled to 64 px; the model was
  trained on Tiny-ImageNet only) beats the random-init twin by several points.
- Reconstruction: on scikit-image's sample photos (not from either dataset) its loss is
  well under two thirds of the untrained twin's, with the same masks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from mae_core import MaskedAutoencoder, load_model
from mae_core.data import EvalDataset, eval_transform
from mae_core.hub import resolve_local
from mae_core.probe import extract_pooled, knn_classify
from mae_core.sources import index_folder
from tests.data_fixtures import extract_cifar_subset, split_two_to_one

MODEL = "mae/vit-tiny-tinyimagenet"
# The checkout's models/ (MAE_MODELS_DIR points elsewhere, e.g. to try a candidate).
MODELS = Path(os.environ.get("MAE_MODELS_DIR") or Path(__file__).resolve().parent.parent / "models")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # skimage cat() is chelsea()


@pytest.fixture(scope="module")
def snapshot() -> Path:
    return resolve_local(MODEL, root=MODELS)


@pytest.fixture(scope="module")
def model(snapshot: Path) -> MaskedAutoencoder:
    return load_model(snapshot)


@pytest.fixture(scope="module")
def twin(model: MaskedAutoencoder) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(model.config).eval()


def test_the_published_repo_is_small_complete_and_loads_in_timm(snapshot: Path) -> None:
    files = {p.name for p in snapshot.iterdir()}
    assert {"config.json", "model.safetensors", "decoder.safetensors", "mae_config.json"} <= files
    assert {"README.md", "eval_results.json", "reconstruction.png"} <= files
    size = sum(p.lstat().st_size for p in (MODELS / MODEL).rglob("*") if not p.is_dir())
    assert size < 40 * 2**20
    card = (snapshot / "README.md").read_text()
    assert "tiny-imagenet-200" in card and "![reconstruction](reconstruction.png)" in card
    assert "## Data and licence" in card and "non-commercial" in card
    training = json.loads((snapshot / "mae_config.json").read_text())["training"]
    assert training["data"]["source"].startswith("tinyimagenet")

    import timm

    encoder = timm.create_model(f"local-dir:{snapshot}", pretrained=True).eval()
    ours = load_model(snapshot, with_decoder=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.forward_features(x), ours.forward_features(x), rtol=1e-5, atol=1e-5
        )


def test_its_features_beat_the_random_twin_on_cifar10_knn(
    model: MaskedAutoencoder, twin: MaskedAutoencoder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = extract_cifar_subset(tmp_path_factory.mktemp("cifar"), per_class=150)
    # 100 train / 50 test images per class
    train_dir, test_dir = split_two_to_one(folder, tmp_path_factory.mktemp("split"))
    train = EvalDataset(index_folder(train_dir), model.config)
    test = EvalDataset(index_folder(test_dir), model.config)
    best = {}
    for name, net in (("model", model), ("twin", twin)):
        xtr, ytr = extract_pooled(net, train, progress=False)
        xte, yte = extract_pooled(net, test, progress=False)
        best[name] = max(knn_classify(xtr[p], ytr, xte[p], yte)["top1"] for p in ("cls", "mean"))
    assert best["model"] >= best["twin"] + 4, best


def test_it_reconstructs_photos_it_never_saw(
    model: MaskedAutoencoder, twin: MaskedAutoencoder
) -> None:
    from skimage import data

    imgs = torch.stack(
        [
            eval_transform(Image.fromarray(getattr(data, name)()).convert("RGB"), model.config)
            for name in PHOTOS
        ]
    )
    noise = torch.rand(len(PHOTOS), model.config.num_patches, generator=torch.manual_seed(0))
    with torch.no_grad():
        loss = float(model(imgs, 0.75, noise=noise).loss)
        untrained = float(twin(imgs, 0.75, noise=noise).loss)
    assert loss < 2 / 3 * untrained, (loss, untrained)
