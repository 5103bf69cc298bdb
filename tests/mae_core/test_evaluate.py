"""Frozen-feature evaluation: weighted k-NN against a brute-force reference, the linear probe
on separable features, and `evaluate_model` on real CIFAR-10 JPEGs with its baseline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mae_core import MaskedAutoencoder
from mae_core.data import EvalDataset
from mae_core.evaluate import (
    evaluate_model,
    evaluate_reconstruction,
    format_table,
    random_twin,
    reconstruction_loss,
)
from mae_core.fused import fused_encoder
from mae_core.probe import extract_features, extract_pooled, knn_classify, knn_votes, linear_probe
from mae_core.sources import index_folder


def clusters(
    n_per: int, classes: int, dim: int, spread: float, seed: int, draw: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random unit centres (fixed by `seed`; `draw` picks the sample):
    features (N, D), labels (N,)."""
    centres = torch.nn.functional.normalize(
        torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed)), dim=1
    )
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centres[y] + spread * torch.randn(
        len(y), dim, generator=torch.Generator().manual_seed(1000 + draw)
    )
    return x, y


def brute_force_knn(train_x, train_y, test_x, k, t, c):
    """Per-row Python reference of weighted k-NN voting (cosine, exp(sim / T))."""
    votes = torch.zeros(len(test_x), c, dtype=torch.float64)
    for i, q in enumerate(test_x):
        sims = [
            float(q.double() @ x.double() / (q.double().norm() * x.double().norm()))
            for x in train_x
        ]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        for j in order:
            votes[i, int(train_y[j])] += math.exp(sims[j] / t)
    return votes


def test_knn_votes_match_a_brute_force_reference() -> None:
    train_x, train_y = clusters(12, 4, 8, spread=0.8, seed=1)
    test_x, _ = clusters(5, 4, 8, spread=0.8, seed=1, draw=1)
    ours = knn_votes(train_x, train_y, test_x, k=7, temperature=0.1, chunk=3).double()
    ref = brute_force_knn(train_x, train_y, test_x, 7, 0.1, 4)
    # ours divides each row by its top weight (overflow guard): compare normalised votes
    torch.testing.assert_close(
        ours / ours.sum(1, keepdim=True), ref / ref.sum(1, keepdim=True), rtol=1e-5, atol=1e-6
    )


def test_knn_accuracy_on_separable_and_on_shuffled_labels() -> None:
    train_x, train_y = clusters(30, 6, 16, spread=0.05, seed=3)
    test_x, test_y = clusters(10, 6, 16, spread=0.05, seed=3, draw=1)
    r = knn_classify(train_x, train_y, test_x, test_y)
    assert r["top1"] == 100.0 and r["top5"] == 100.0 and r["k"] == 20
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    assert knn_classify(train_x, shuffled, test_x, test_y)["top1"] < 60.0


def test_knn_clamps_k_and_reports_no_top5_under_five_classes() -> None:
    train_x, train_y = clusters(2, 3, 4, spread=0.1, seed=0)
    r = knn_classify(train_x, train_y, train_x, train_y, k=50)
    assert r["k"] == 6 and r["top5"] is None
    # a tiny temperature must not overflow into NaN
    assert knn_classify(train_x, train_y, train_x, train_y, temperature=1e-4)["top1"] == 100.0


def test_linear_probe_learns_separable_features_deterministically() -> None:
    train_x, train_y = clusters(60, 5, 32, spread=0.3, seed=4)
    test_x, test_y = clusters(20, 5, 32, spread=0.3, seed=4, draw=1)
    before = torch.get_rng_state()
    a = linear_probe(train_x, train_y, test_x, test_y, epochs=10, seed=7)
    assert torch.equal(before, torch.get_rng_state()), "the probe must not touch the global RNG"
    b = linear_probe(train_x, train_y, test_x, test_y, epochs=10, seed=7)
    assert a == b
    assert a["top1"] >= 95.0 and a["train_loss"] < 0.5
    noise = linear_probe(
        torch.randn_like(train_x), train_y, torch.randn_like(test_x), test_y, epochs=10
    )
    assert noise["top1"] < 50.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda x, y: knn_classify(x, y, x[:, :3], y),
            "train features have D=8, test features D=3",
        ),
        (lambda x, y: knn_classify(x, torch.zeros_like(y), x, y), "fewer than 2 classes"),
        (lambda x, y: knn_classify(x, y.float(), x, y), "1-D integer tensor"),
        (lambda x, y: knn_classify(x, y[:-1], x, y), "feature rows but"),
        (lambda x, y: knn_classify(x, y, x, y, k=0), "k must be >= 1"),
        (
            lambda x, y: knn_classify(x, y, x, y, num_classes=2),
            "num_classes=2 but labels go up to 3",
        ),
        (lambda x, y: linear_probe(x, y, x, y, batch_size=1), "batch_size >= 2"),
        (lambda x, y: linear_probe(x, y - 1, x, y), "non-negative"),
    ],
)
def test_bad_inputs_name_the_problem(call, message: str) -> None:
    x, y = clusters(4, 4, 8, spread=0.1, seed=0)
    with pytest.raises(ValueError, match=message):
        call(x, y)


# -- on real images ------------------------------------------------------------------------
def test_extract_pooled_equals_embed(tiny_model: MaskedAutoencoder, cifar_splits) -> None:
    ds = EvalDataset(index_folder(cifar_splits[1], limit=20), tiny_model.config)
    feats, labels = extract_pooled(tiny_model, ds, ("cls", "mean"), batch_size=8, progress=False)
    imgs = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        for pooling in ("cls", "mean"):
            torch.testing.assert_close(
                feats[pooling], tiny_model.embed(imgs, pooling), rtol=1e-5, atol=1e-5
            )
    assert labels.tolist() == [ds[i][1] for i in range(len(ds))]
    single, _ = extract_features(tiny_model, ds, "mean", batch_size=7, progress=False)
    torch.testing.assert_close(single, feats["mean"], rtol=1e-5, atol=1e-5)
    assert not tiny_model.training


def test_evaluate_model_on_real_images_reports_the_baseline(
    tiny_model: MaskedAutoencoder, cifar_splits
) -> None:
    cfg = tiny_model.config
    train = EvalDataset(index_folder(cifar_splits[0]), cfg)
    test = EvalDataset(index_folder(cifar_splits[1]), cfg)
    state = torch.get_rng_state()
    result = evaluate_model(
        tiny_model, train, test, poolings=("cls", "mean"), progress=False, epochs=3
    )
    assert torch.equal(state, torch.get_rng_state())
    assert (result["train_size"], result["test_size"], result["num_classes"]) == (200, 100, 10)
    assert [(r["method"], r["pooling"]) for r in result["results"]] == [
        ("knn", "cls"),
        ("linear", "cls"),
        ("knn", "mean"),
        ("linear", "mean"),
    ]
    for r in result["results"]:
        for key in ("top1", "top5", "baseline_top1", "baseline_top5"):
            assert 0.0 <= r[key] <= 100.0, (key, r)
        assert r["top5"] >= r["top1"]
    # the baseline is a different network: its numbers come from different features
    assert any(r["top1"] != r["baseline_top1"] for r in result["results"])
    json.dumps(result)  # serialisable as-is
    table = format_table(result)
    assert (
        "200 train / 100 test images, 10 classes" in table and table.count("| k-NN (k=20) |") == 2
    )

    alone = evaluate_model(
        tiny_model, train, test, methods=("knn",), baseline=False, progress=False
    )
    assert alone["results"][0]["baseline_top1"] is None
    assert alone["results"][0]["top1"] == result["results"][0]["top1"]  # same features, same answer
    assert "| - | - |" in format_table(alone)


def test_the_model_and_its_baseline_both_get_the_fused_forward(
    tiny_model: MaskedAutoencoder, cifar_splits, caplog: pytest.LogCaptureFixture
) -> None:
    """On the CPU in fp32 `mae eval` extracts with the fused encoder layers, for the
    baseline twin too (it is built in training mode), and leaves the model's mode as it was."""
    cfg = tiny_model.config
    train = EvalDataset(index_folder(cifar_splits[0]), cfg)
    test = EvalDataset(index_folder(cifar_splits[1]), cfg)
    for mode in (True, False):
        tiny_model.train(mode)
        caplog.clear()
        with caplog.at_level("INFO", logger="mae.export"):
            evaluate_model(tiny_model, train, test, methods=("knn",), progress=False)
        assert caplog.text.count("fused encoder layers on: checked") == 2, caplog.text
        assert tiny_model.training is mode


def test_evaluate_model_rejects_bad_options(tiny_model: MaskedAutoencoder, cifar_splits) -> None:
    ds = EvalDataset(index_folder(cifar_splits[1], limit=20), tiny_model.config)
    with pytest.raises(ValueError, match="methods must be"):
        evaluate_model(tiny_model, ds, ds, methods=("svm",))
    with pytest.raises(ValueError, match="pooling must be"):
        evaluate_model(tiny_model, ds, ds, poolings=("max",))
    with pytest.raises(TypeError, match="unknown probe option"):
        evaluate_model(tiny_model, ds, ds, neighbours=5)


def test_reconstruction_loss_is_the_mae_loss_under_seeded_masks(
    tiny_model: MaskedAutoencoder, cifar_splits
) -> None:
    ds = EvalDataset(index_folder(cifar_splits[1], limit=20), tiny_model.config)
    imgs = torch.stack([ds[i][0] for i in range(len(ds))])
    loss = reconstruction_loss(tiny_model, ds, 0.75, seed=3, batch_size=8, progress=False)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the same masks, drawn batch by batch from the same generator
        parts = [
            tiny_model(chunk, 0.75, generator=gen).loss * len(chunk) for chunk in imgs.split(8)
        ]
    assert loss == pytest.approx(float(sum(parts)) / len(ds), rel=1e-5)
    assert reconstruction_loss(tiny_model, ds, 0.75, seed=3, batch_size=8, progress=False) == loss
    assert reconstruction_loss(tiny_model, ds, 0.75, seed=4, batch_size=8, progress=False) != loss

    result = evaluate_reconstruction(tiny_model, ds, seed=3, batch_size=8, progress=False)
    assert result["mask_ratio"] == tiny_model.config.mask_ratio and result["images"] == len(ds)
    assert result["baseline_loss"] > 0 and result["baseline_loss"] != result["loss"]
    table = format_table({"train_size": 1, "test_size": 1, "num_classes": 2, "results": [],
                          "reconstruction": result})  # fmt: skip
    assert f"{result['loss']:.4f}" in table and "random-init twin" in table


def test_bf16_precision_runs_the_forward_in_bf16_on_the_cpu(
    tiny_model: MaskedAutoencoder, cifar_splits
) -> None:
    """precision="bf16" (`mae eval --precision bf16`): the encoder's matmuls in bf16 on the
    CPU too, features back in fp32 and close to fp32's, the same for the reconstruction
    loss, recorded in the result; a bad value and bf16 with an ONNX backend refused."""
    ds = EvalDataset(index_folder(cifar_splits[1], limit=20), tiny_model.config)
    seen: set[torch.dtype] = set()
    hook = tiny_model.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    f32, _ = extract_pooled(tiny_model, ds, ("cls",), batch_size=8, progress=False)
    assert seen == {torch.float32}
    seen.clear()
    b16, _ = extract_pooled(
        tiny_model, ds, ("cls",), batch_size=8, progress=False, precision="bf16"
    )
    hook.remove()
    assert seen == {torch.bfloat16} and b16["cls"].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(f32["cls"], b16["cls"]).min()
    assert cosine > 0.99 and not torch.equal(f32["cls"], b16["cls"])
    kw = {"seed": 3, "batch_size": 8, "progress": False}
    loss32 = reconstruction_loss(tiny_model, ds, 0.75, **kw)
    loss16 = reconstruction_loss(tiny_model, ds, 0.75, precision="bf16", **kw)
    assert loss16 == pytest.approx(loss32, rel=0.05) and loss16 != loss32
    result = evaluate_model(
        tiny_model, ds, ds, methods=("knn",), baseline=False, progress=False, precision="bf16"
    )
    # The forward that ran is recorded and said: the fused bf16 layers where this CPU runs
    # them (mae_core.fused), else the plain forward under bf16 autocast.
    fused_bf16 = fused_encoder(tiny_model.eval(), torch.device("cpu"), torch.bfloat16)[0]
    assert result["precision"] == "bf16" and result["forward"] == (
        "fused layers (encoder-layer kernel), bfloat16" if fused_bf16 else "plain, bf16 autocast"
    )
    assert result["baseline_forward"] is None
    assert f"; torch forward: {result['forward']}" in format_table(result)
    # A result written before the forward was recorded still says its precision.
    old = {k: v for k, v in result.items() if k not in ("forward", "baseline_forward")}
    assert "; torch forward: bf16" in format_table(old)
    assert "torch forward" not in format_table({**old, "precision": "fp32"})
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        evaluate_model(tiny_model, ds, ds, precision="fp16")
    with pytest.raises(ValueError, match="the onnxruntime backend has its own"):
        evaluate_model(tiny_model, ds, ds, precision="bf16", backend="onnxruntime")


def test_reconstruction_loss_needs_the_decoder(tiny_cfg, cifar_splits) -> None:
    encoder = MaskedAutoencoder(tiny_cfg, with_decoder=False)
    ds = EvalDataset(index_folder(cifar_splits[1], limit=4), tiny_cfg)
    with pytest.raises(Exception, match="decoder"):
        reconstruction_loss(encoder, ds, progress=False)


def test_one_random_twin_with_or_without_its_decoder(tiny_model: MaskedAutoencoder) -> None:
    full = random_twin(tiny_model, 5, with_decoder=True)
    encoder = random_twin(tiny_model, 5, with_decoder=False)
    assert full.has_decoder and not encoder.has_decoder
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(tensor, full.state_dict()[name], rtol=0, atol=0)
    other = random_twin(tiny_model, 6, with_decoder=False)
    assert not torch.equal(other.patch_embed.proj.weight, encoder.patch_embed.proj.weight)
