"""Frozen features and the two ways of scoring them: weighted k-NN and a linear probe.

    train_x, train_y = extract_features(model, train_set)        # (N, D) float32, (N,) int64
    knn_classify(train_x, train_y, test_x, test_y)               # {"top1": .., "top5": ..}
    linear_probe(train_x, train_y, test_x, test_y)               # the paper's BN + linear head

Datasets yield `(img (3, H, W) normalised float, label int)`, transformed as for evaluation
(resize / centre crop, no augmentation). Accuracies are percentages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .distributed import autocast as precision_autocast
from .errors import MAEValueError
from .model import MaskedAutoencoder

POOLINGS = ("cls", "mean")
METHODS = ("knn", "linear")
KNN_OPTIONS = {"k", "temperature", "chunk"}
LINEAR_OPTIONS = {"epochs", "lr", "probe_batch_size", "weight_decay"}


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def extract_features(
    model: MaskedAutoencoder,
    dataset: Dataset,
    pooling: str = "cls",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Embed every image of `dataset`: -> features (N, D) float32 and labels (N,) int64, on CPU.

    The model runs in eval mode (restored afterwards) under `precision` (as `mae train
    --precision`: auto is bf16 autocast on CUDA, fp32 elsewhere). With `device` the model is
    moved there (in place); by default it runs where it is.
    """
    feats, labels = extract_pooled(
        model, dataset, (pooling,), batch_size, device, num_workers, progress, precision=precision
    )
    return feats[pooling], labels


def extract_pooled(
    model: MaskedAutoencoder,
    dataset: Dataset,
    poolings: Sequence[str] = POOLINGS,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    forward: Callable[[Tensor], Tensor] | None = None,
    precision: str = "auto",
) -> tuple[dict[str, Tensor], Tensor]:
    """As `extract_features`, for several poolings from one pass: -> ({pooling: (N, D)}, labels).
    `forward` (pixel_values -> last_hidden_state) stands in for `model.forward_features`,
    e.g. an `export.OnnxEncoder` of the model."""
    for p in poolings:
        check_pooling(p)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty: no images to extract features from")
    if device is not None:
        model.to(device)
    dev = model_device(model)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(
            0
        ),  # else the loader draws a seed from the global RNG
    )
    from tqdm.auto import tqdm  # imported here: only extraction needs it

    was_training = model.training
    model.eval()
    feats: dict[str, list[Tensor]] = {p: [] for p in poolings}
    labels = []
    bar = tqdm(loader, desc="features", unit="batch", disable=None if progress else True)
    autocast = precision_autocast(precision, dev)
    try:
        for imgs, ys in bar:
            with torch.inference_mode(), autocast:
                tokens = (forward or model.forward_features)(imgs.to(dev, non_blocking=True))
                for p in poolings:
                    pooled = tokens[:, 0] if p == "cls" else tokens[:, 1:].mean(dim=1)
                    feats[p].append(pooled.float().cpu())
            labels.append(torch.as_tensor(ys).reshape(-1))
    finally:
        model.train(was_training)
    y = torch.cat(labels)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"dataset labels must be integers, got dtype {y.dtype}")
    return {p: torch.cat(f) for p, f in feats.items()}, y.long()


def _check_split(feats: Tensor, labels: Tensor, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} features must have shape (N, D), got {tuple(feats.shape)}")
    if labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(
            f"{name} labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if feats.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {feats.shape[0]} feature rows but {labels.shape[0]} labels")
    if feats.shape[0] == 0:
        raise ValueError(f"{name} set is empty")
    if labels.min() < 0:
        raise ValueError(f"{name} labels must be non-negative class indices")


def check_inputs(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int | None,
) -> int:
    """Validate both splits; returns the number of classes."""
    _check_split(train_feats, train_labels, "train")
    _check_split(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"train features have D={train_feats.shape[1]}, test features D={test_feats.shape[1]}"
        )
    if train_labels.unique().numel() < 2:
        raise MAEValueError("train labels hold fewer than 2 classes: nothing to classify")
    needed = int(max(train_labels.max(), test_labels.max())) + 1
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but labels go up to {needed - 1}")
    return num_classes


def _accuracy(scores: Tensor, labels: Tensor) -> tuple[float, float | None]:
    """scores (M, C), labels (M,) -> top-1 and top-5 accuracy in percent (top-5: None if C < 5)."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (M, <=5)
    hit = top == labels[:, None]
    top1 = 100.0 * hit[:, 0].float().mean().item()
    top5 = 100.0 * hit.any(dim=1).float().mean().item() if scores.shape[1] >= 5 else None
    return top1, top5


def knn_votes(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Weighted k-NN class votes (M, C): each test row's k most cosine-similar train rows
    vote for their class with weight exp(sim / T) (InstDisc / DINO). k is clamped to N.

    Weights are divided by the row's largest one (exp((sim - sim_max) / T)): the same
    ranking, but no overflow at small T. Test rows go `chunk` at a time, bounding memory to
    (chunk, N) similarities.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(
            f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}"
        )
    c = num_classes if num_classes is not None else int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(train.device)
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].float().to(train.device), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (chunk, k)
        weights = ((sim - sim[:, :1]) / temperature).exp()
        votes = torch.zeros(q.shape[0], c, device=train.device)
        out.append(votes.scatter_add_(1, labels[idx], weights).cpu())
    return torch.cat(out)


def knn_classify(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Weighted k-NN accuracy (see `knn_votes`). Features (N, D) / (M, D), labels (N,) / (M,).

    Returns {"top1", "top5" (None under 5 classes), "k" (after clamping), "temperature"}.
    """
    c = check_inputs(train_feats, train_labels, test_feats, test_labels, num_classes)
    votes = knn_votes(train_feats, train_labels, test_feats, k, temperature, c, chunk)
    top1, top5 = _accuracy(votes, test_labels.cpu())
    return {
        "top1": top1,
        "top5": top5,
        "k": min(k, train_feats.shape[0]),
        "temperature": temperature,
    }


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    epochs: int = 30,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Train the paper's probe head on frozen features (N, D); test on (M, D).

    Head: BatchNorm1d(D, affine=False, eps=1e-6) then Linear(D, C), weight trunc-normal
    std 0.01, bias 0 (MAE's `main_linprobe.py`). Recipe, chosen to converge in seconds on
    CPU: SGD momentum 0.9, lr `lr * batch_size / 256`, one warm-up epoch then a per-step
    cosine decay to 0, `epochs` passes over shuffled features, last partial batch dropped
    (BatchNorm cannot train on a batch of one). Deterministic given `seed` (own generator;
    the global RNG is untouched). Runs on `device`, by default the features' device.

    Returns {"top1", "top5" (None under 5 classes), "train_loss" (mean over the last epoch),
    "epochs", "lr", "batch_size"}.
    """
    c = check_inputs(train_feats, train_labels, test_feats, test_labels, num_classes)
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 2, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    dev = torch.device(device) if device is not None else train_feats.device
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
        head = nn.Sequential(
            nn.BatchNorm1d(train_feats.shape[1], affine=False, eps=1e-6),
            nn.Linear(train_feats.shape[1], c),
        )
    nn.init.trunc_normal_(head[1].weight, std=0.01, generator=g)
    nn.init.zeros_(head[1].bias)
    head.to(dev)
    x, y = train_feats.float().to(dev), train_labels.to(dev)
    n = x.shape[0]
    bs = min(batch_size, n)
    steps_per_epoch = n // bs
    total, warmup = epochs * steps_per_epoch, steps_per_epoch if epochs > 1 else 0
    peak = lr * bs / 256  # the paper's linear scaling rule
    opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=0.9, weight_decay=weight_decay)
    step, epoch_loss = 0, 0.0
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(dev)
        epoch_loss = 0.0
        for i in range(steps_per_epoch):
            if step < warmup:
                opt.param_groups[0]["lr"] = peak * (step + 1) / warmup
            else:
                opt.param_groups[0]["lr"] = (
                    peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
                )
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.item()
            step += 1
    head.eval()
    with torch.inference_mode():
        logits = torch.cat([head(t.float().to(dev)).cpu() for t in test_feats.split(8192)])
    top1, top5 = _accuracy(logits, test_labels.cpu())
    return {
        "top1": top1,
        "top5": top5,
        "train_loss": epoch_loss / steps_per_epoch,
        "epochs": epochs,
        "lr": lr,
        "batch_size": bs,
    }
