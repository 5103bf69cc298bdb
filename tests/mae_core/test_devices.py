"""The core's checks on every device: the CPU here, and a CUDA device where there is one
(those cases are marked `gpu`; `bench/gpu.sh` runs them). What a GPU changes is its own
kernels (cuDNN's convolution in TF32, cuBLAS, flash attention), autocast's bf16 by default,
its RNG and its memory, so each check holds the device's answer against the CPU's float32
one, or a resumed run against an uninterrupted one, with tolerances stated per precision.
On the CPU the same code runs, so the checks themselves are tested wherever the suite is."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from mae_core import MaskedAutoencoder
from mae_core.data import EvalDataset
from mae_core.evaluate import evaluate_model
from mae_core.finetune import finetune
from mae_core.sources import index_folder
from mae_core.train import train
from tests.mae_core.test_train import metrics, run_cfg

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)
DEVICES = ["cpu", CUDA]
# (device, precision): fp32 everywhere; bf16 autocast on the CPU (AVX512-BF16 or emulated)
# and on CUDA, where it is also what precision auto means.
PRECISIONS = [
    ("cpu", "fp32"),
    ("cpu", "bf16"),
    pytest.param("cuda", "fp32", marks=pytest.mark.gpu),
    pytest.param("cuda", "bf16", marks=pytest.mark.gpu),
]
# TF32 convolutions (cuDNN's default) put fp32 on CUDA a few 1e-4 off the CPU; bf16 keeps
# 8 bits of mantissa (on this CPU: loss 4e-5 off, worst gradient cosine 0.9998).
LOSS_RTOL = {"fp32": 2e-3, "bf16": 1e-2}
MIN_GRAD_COSINE = {"fp32": 0.999, "bf16": 0.995}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def _loss_and_grads(
    model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor, device: str, precision: str
) -> tuple[float, dict[str, torch.Tensor]]:
    model = model.to(device).train()
    model.zero_grad(set_to_none=True)
    bf16 = precision == "bf16"
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        out = model(imgs.to(device), mask_ratio=0.75, noise=noise.to(device))
    out.loss.backward()
    grads = {
        n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None
    }
    return out.loss.item(), grads


@pytest.mark.parametrize(("device", "precision"), PRECISIONS)
def test_the_loss_and_every_gradient_match_the_cpu(tiny_model, device: str, precision: str) -> None:
    """One MAE step (encoder on the visible quarter, decoder, masked MSE) on the device, in
    its precision, against the CPU in float32 with the same images and masks."""
    g = torch.Generator().manual_seed(1)
    s = tiny_model.config.img_size
    imgs = torch.randn(4, 3, s, s, generator=g)
    noise = torch.rand(4, tiny_model.config.num_patches, generator=g)
    want, want_grads = _loss_and_grads(tiny_model, imgs, noise, "cpu", "fp32")
    got, got_grads = _loss_and_grads(tiny_model, imgs, noise, device, precision)
    assert got == pytest.approx(want, rel=LOSS_RTOL[precision])
    assert got_grads.keys() == want_grads.keys() and len(want_grads) > 10
    worst = min(_cosine(got_grads[n], want_grads[n]) for n in want_grads)
    assert worst > MIN_GRAD_COSINE[precision], worst


def _pretrain(data: Path, out: Path, device: str, **kw: object) -> Path | None:
    """test_train's short run (FAST), one epoch of 9 steps, on `device`."""
    return train(run_cfg(data, out, epochs=1, device=device, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_pretraining_runs_and_resumes_on_the_device(
    cifar_folder: Path, tmp_path: Path, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`mae train` on real CIFAR-10 JPEGs with the defaults (precision auto: bf16 autocast
    on CUDA, fp32 on a CPU), said in the log. Stopped after 4 of 9 steps and resumed, it
    ends where the uninterrupted run ends: exactly where the device's kernels are
    deterministic (two uninterrupted runs agree bit for bit; always so on a CPU), else
    within their spread. A resume that lost state (the optimizer's moments, the schedule,
    the data order, an RNG) moves the losses by percents."""
    with caplog.at_level(logging.INFO, logger="mae_core.train"):
        final = _pretrain(cifar_folder, tmp_path / "full", device)
    assert final is not None and (final / "model.safetensors").is_file()
    precision = "bf16 autocast" if device == "cuda" else "fp32"
    # CUDA is named with its index (cuda:0): the trainer asks for the local rank's device.
    assert re.search(rf"device {device}(:\d+)? \({precision}\)", caplog.text), caplog.text
    assert ("linear layers:" in caplog.text) == (device == "cpu")  # oneDNN's is the CPU's
    _pretrain(cifar_folder, tmp_path / "again", device)
    _pretrain(cifar_folder, tmp_path / "part", device, max_steps=4)
    _pretrain(cifar_folder, tmp_path / "part", device, resume="auto")
    full, again, part = (metrics(tmp_path / n) for n in ("full", "again", "part"))
    assert len(full) == len(again) == len(part) == 9
    losses = [torch.tensor([r["loss"] for r in rows]) for rows in (full, again, part)]
    assert torch.isfinite(losses[0]).all() and losses[0][-1] < losses[0][0]
    noise = (losses[1] - losses[0]).abs().max().item()
    gap = (losses[2] - losses[0]).abs().max().item()
    if device == "cpu":
        assert noise == 0
    if noise == 0:  # deterministic kernels: the resumed run is the same run, bit for bit
        assert gap == 0, gap
    else:  # atomics (flash attention's backward): within the runs' own spread, or 0.1%
        assert gap <= max(4 * noise, 1e-3 * losses[0].max().item()), (gap, noise)


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_features_score_as_on_the_cpu(tiny_model, cifar_splits, device: str) -> None:
    """`mae eval`'s k-NN on the device, in float32, within one test image of the CPU's, and
    the JSON says which forward ran (the fused layers are the CPU's)."""
    train_ds, test_ds = (EvalDataset(index_folder(p), tiny_model.config) for p in cifar_splits)
    kw = {"methods": ("knn",), "poolings": ("cls", "mean"), "progress": False, "precision": "fp32"}
    want = evaluate_model(tiny_model, train_ds, test_ds, device="cpu", **kw)
    got = evaluate_model(tiny_model, train_ds, test_ds, device=device, **kw)
    one_image = 100.0 / got["test_size"]
    for a, b in zip(got["results"], want["results"], strict=True):
        for key in ("top1", "top5", "baseline_top1"):
            assert abs(a[key] - b[key]) <= one_image + 1e-9, (key, a, b)
    assert want["forward"].endswith("float32") and want["forward"] == want["baseline_forward"]
    assert (got["forward"] == "plain, float32") == (device == "cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_finetuning_runs_on_the_device(cifar_splits, tmp_path: Path, device: str) -> None:
    """`mae finetune` from the default model for a few steps on the device, with the
    recipe's random parts on: finite losses, a held-out score, a classifier folder."""
    train_dir, test_dir = cifar_splits
    out = tmp_path / "ft"
    final = finetune(
        {
            "model": "local:mae/vit-tiny-tinyimagenet",
            "data": str(train_dir),
            "val_data": str(test_dir),
            "output": str(out),
            "device": device,
            "batch_size": 32,
            "epochs": 1,
            "max_steps": 4,
            "warmup_epochs": 1,
            "log_every": 1,
            "num_workers": 0,
            "mixup": 0.8,
            "cutmix": 1.0,
        }
    )
    assert final is not None and (final / "model.safetensors").is_file()
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    record = json.loads((final / "config.json").read_text())["mae_finetune"]
    assert 0.0 <= record["accuracy"]["top1"] <= 1.0
