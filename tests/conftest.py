"""Shared test set-up: the house tiny config, the `gpu` marker, a seeded RNG per test."""

from __future__ import annotations

import pytest
import torch

from mae_core import MaskedAutoencoder
from mae_core.config import MAEConfig
from tests.reference import TINY, perturb_


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> MAEConfig:
    return TINY


@pytest.fixture
def tiny_model(tiny_cfg: MAEConfig) -> MaskedAutoencoder:
    return perturb_(MaskedAutoencoder(tiny_cfg)).eval()


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32)


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory):
    """300 real CIFAR-10 test JPEGs, 30 per class, in class folders."""
    from tests.data_fixtures import extract_cifar_subset

    return extract_cifar_subset(tmp_path_factory.mktemp("cifar300"), per_class=30)


@pytest.fixture(scope="session")
def cifar_splits(cifar_folder, tmp_path_factory: pytest.TempPathFactory):
    """The 300 CIFAR JPEGs split 2:1 into train/ and test/ class folders (symlinks)."""
    from tests.data_fixtures import split_two_to_one

    return split_two_to_one(cifar_folder, tmp_path_factory.mktemp("cifar_split"))


@pytest.fixture(scope="session")
def finetuned_run(cifar_splits, tmp_path_factory: pytest.TempPathFactory):
    """A run folder of `mae finetune` from the default model: 2 epochs of 3 steps on the 200
    train JPEGs, scored on the 100 test ones after each epoch; `final/` is the classifier."""
    from mae_core.finetune import finetune
    from tests.mae_core.test_finetune import DEFAULT, QUICK

    train, test = cifar_splits
    out = tmp_path_factory.mktemp("finetuned") / "run"
    settings = {"model": DEFAULT, "data": str(train), "val_data": str(test), "output": str(out)}
    finetune({**settings, **QUICK, "batch_size": 64, "epochs": 2})
    return out
