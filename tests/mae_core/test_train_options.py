"""The paper's ablation choices as training options (Table 1): each one reaches the model's
config, the checkpoint and final/, reloads, resumes exactly, and bad values are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mae_core import load_model
from mae_core.cli import main
from mae_core.config import TrainConfig
from mae_core.data import PCA_IMAGES, pca_batches
from mae_core.resume import load_checkpoint, merge_settings
from mae_core.sources import index_folder
from mae_core.train import Trainer, TrainingError, train
from tests.mae_core.test_train import metrics, run_cfg

# A smaller batch than test_train's FAST: two steps are all these runs need.
QUICK = {"batch_size": 16, "max_steps": 2}


def _newest_checkpoint(out: Path) -> dict:
    return load_checkpoint(sorted((out / "checkpoints").glob("ckpt-*.pt"))[-1])


@pytest.mark.parametrize(
    ("option", "saved_as"),
    [
        ({"mask_strategy": "block"}, {"mask_strategy": "block"}),
        ({"target": "pixel"}, {"target": "pixel", "norm_pix_loss": False}),
        ({"norm_pix_loss": False}, {"target": "pixel", "norm_pix_loss": False}),
        ({"decoder_depth": 1}, {"decoder_depth": 1}),
        (
            {"decoder_embed_dim": 64, "decoder_num_heads": 2},
            {"decoder_embed_dim": 64, "decoder_num_heads": 2},
        ),
        ({"encoder_mask_tokens": True}, {"encoder_mask_tokens": True}),
        ({"augment": "none"}, {}),
    ],
    ids=[
        "block",
        "pixel",
        "no-norm-pix-loss",
        "decoder-depth",
        "decoder-width",
        "encoder-mask-tokens",
        "augment-none",
    ],
)
def test_option_is_saved_and_reloads(
    cifar_folder: Path, tmp_path: Path, option: dict, saved_as: dict
) -> None:
    out = tmp_path / "run"
    final = train(run_cfg(cifar_folder, out, **QUICK, **option))
    assert final is not None
    assert all(math.isfinite(r["loss"]) for r in metrics(out)) and len(metrics(out)) == 2
    written = json.loads((final / "mae_config.json").read_text())
    ckpt = _newest_checkpoint(out)
    model = load_model(final)
    for key, value in saved_as.items():
        assert written[key] == value, key
        assert ckpt["model_config"][key] == value, key
        assert getattr(model.config, key) == value, key
    for key, value in option.items():
        assert ckpt["train_config"][key] == value, key
    # The run's choices are in the training summary, the augmentation among them.
    summary = written["training"]
    assert summary["augment"] == option.get("augment", "crop-rand")
    assert summary["mask_strategy"] == written["mask_strategy"]
    assert summary["target"] == written["target"]
    # The reloaded model computes the loss it was trained on.
    with torch.no_grad():
        loss = model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).loss
    assert math.isfinite(float(loss))


@pytest.mark.parametrize("strategy", ["block", "grid", "centre"])
def test_the_trainer_masks_with_the_strategy(
    cifar_folder: Path, tmp_path: Path, strategy: str
) -> None:
    from mae_core.masking import sample_mask

    trainer = Trainer(run_cfg(cifar_folder, tmp_path / "run", **QUICK, mask_strategy=strategy))
    net, seen = trainer.net, []

    def spy(imgs, **kw):
        out = net(imgs, **kw)
        seen.append((kw["noise"], out.mask))
        return out

    trainer.net = spy
    trainer.run()
    assert len(seen) == 2
    for noise, mask in seen:
        tokens = torch.zeros(16, 16, 1)  # 16 images of 4x4 patches
        want = sample_mask(tokens, 0.75, strategy, noise=noise, grid_size=(4, 4)).mask
        random = sample_mask(tokens, 0.75, "random", noise=noise).mask
        assert torch.equal(mask, want) and not torch.equal(mask, random)


def test_pca_target_fits_saves_and_reloads_its_basis(cifar_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = Trainer(run_cfg(cifar_folder, out, **QUICK, target="pca", pca_components=12))
    fitted = trainer.model.target_pca_components.clone()
    mean = trainer.model.target_pca_mean.clone()
    assert fitted.shape == (12, 8 * 8 * 3) and mean.shape == (192,)
    # Orthonormal rows, fitted on the sampled training images (not zeros, not random).
    torch.testing.assert_close(fitted @ fitted.T, torch.eye(12), atol=1e-5, rtol=0)
    final = trainer.run()
    assert final is not None and all(math.isfinite(r["loss"]) for r in metrics(out))
    # Training never changes the basis; the checkpoint's model state and final/ hold it.
    assert torch.equal(trainer.model.target_pca_components, fitted)
    ckpt = _newest_checkpoint(out)
    assert torch.equal(ckpt["model"]["target_pca_components"], fitted)
    assert torch.equal(ckpt["model"]["target_pca_mean"], mean)
    model = load_model(final)
    assert model.config.target == "pca" and model.config.pca_components == 12
    assert torch.equal(model.target_pca_components, fitted)
    assert torch.equal(model.target_pca_mean, mean)
    written = json.loads((final / "mae_config.json").read_text())
    assert written["target"] == "pca" and written["pca_components"] == 12
    # The basis travels with the decoder; the encoder file stays timm's.
    from safetensors import safe_open

    with safe_open(str(final / "decoder.safetensors"), "pt") as f:
        assert {"target_pca_mean", "target_pca_components"} <= set(f.keys())
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        encoder_keys = set(f.keys())
    assert encoder_keys and not any(k.startswith("target_pca") for k in encoder_keys)
    # The basis is that of the seeded sample of the training images, reproducibly.
    from mae_core import create_model
    from mae_core.targets import fit_pca_target

    again = create_model("mae_vit_tiny_patch8", img_size=32, target="pca", pca_components=12)
    batches = pca_batches(index_folder(cifar_folder), again.config, seed=0)
    fit_pca_target(again, batches, max_images=PCA_IMAGES)
    assert torch.equal(again.target_pca_components, fitted)


def test_pca_sample_is_seeded_and_uncropped(cifar_folder: Path) -> None:
    from mae_core.config import variant_config

    cfg = variant_config("mae_vit_tiny_patch8", img_size=32)
    index = index_folder(cifar_folder)
    a = torch.cat(list(pca_batches(index, cfg, seed=1, max_images=40, batch_size=16)))
    b = torch.cat(list(pca_batches(index, cfg, seed=1, max_images=40, batch_size=16)))
    c = torch.cat(list(pca_batches(index, cfg, seed=2, max_images=40, batch_size=16)))
    assert a.shape == (40, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert len(list(pca_batches(index, cfg, seed=1, batch_size=128))) == 3  # all 300


def test_stop_and_resume_is_exact_with_options(
    cifar_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {
        "mask_strategy": "block",
        "target": "pca",
        "augment": "crop-fixed",
        "decoder_depth": 1,
        "batch_size": 16,
        "checkpoint_every": 100,
    }
    train(run_cfg(cifar_folder, tmp_path / "full", max_steps=6, **options))
    train(run_cfg(cifar_folder, tmp_path / "split", max_steps=3, **options))
    # The resumed run takes its basis from the checkpoint: it must not fit one again.
    import mae_core.targets

    def refit(*a, **kw):
        raise AssertionError("a resumed run fitted its PCA basis again")

    monkeypatch.setattr(mae_core.targets, "fit_pca_target", refit)
    given = {"data": str(cifar_folder), "output": str(tmp_path / "split")}
    train({**given, "resume": "auto", "max_steps": 6})
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 7))
    for a, b in zip(full, split, strict=True):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])
    wa = load_model(tmp_path / "full" / "final").state_dict()
    wb = load_model(tmp_path / "split" / "final").state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The model card says how this model was trained, where it departs from the paper.
    from mae_core.model_card import render_card

    card = render_card(
        "me/ablated",
        json.loads((tmp_path / "full" / "final" / "mae_config.json").read_text()),
        {"encoder": 5_000_000, "decoder": 200_000},
        encoder_only=False,
    )
    row = next(ln for ln in card.splitlines() if "differs from the paper's defaults" in ln)
    for said in (
        "block mask sampling",
        "PCA coefficients (16 components)",
        "decoder: 1 blocks, 128-d, 4 heads (the variant's: 4 blocks",
        "augmentation: crop-fixed",
    ):
        assert said in row, said
    assert "mask tokens in the encoder" not in row
    assert "(block masking) and reconstructing them as their coefficients on a 16-component" in (
        " ".join(card.split())
    )
    # These are the recipe: a resume that changes one is refused, naming it.
    for change, named in (
        ({"mask_strategy": "random"}, "mask_strategy: checkpoint 'block' vs now 'random'"),
        ({"augment": "crop-rand"}, "augment: checkpoint 'crop-fixed' vs now 'crop-rand'"),
        ({"decoder_depth": 2}, "decoder_depth: checkpoint 1 vs now 2"),
        ({"target": "pixel"}, "target: checkpoint 'pca' vs now 'pixel'"),
    ):
        with pytest.raises(TrainingError, match="cannot resume with different settings") as e:
            Trainer({**given, "resume": "auto", **change})
        assert named in str(e.value)


def test_model_card_of_a_default_run_lists_no_departures() -> None:
    from mae_core.config import variant_config
    from mae_core.model_card import render_card

    cfg = variant_config("mae_vit_tiny_patch8", img_size=32).to_dict()
    training = {"data": {"source": "cifar10", "images": 300}, "augment": "crop-rand"}
    card = render_card("me/plain", {**cfg, "training": training}, {}, encoder_only=False)
    assert "## Training" in card and "differs from the paper's defaults" not in card
    assert "reconstructing them from per-patch-normalised pixels." in " ".join(card.split())
    pixel = variant_config("mae_vit_tiny_patch8", target="pixel").to_dict()
    card = render_card("me/pixel", {**pixel, "training": training}, {}, encoder_only=False)
    assert "target: raw pixels of the normalised image" in card


def test_checkpoint_older_than_the_options_cannot_switch_them_on() -> None:
    """A checkpoint written before these settings existed trained with their defaults."""
    saved = TrainConfig(data="d", output="o", variant="mae_vit_tiny_patch8").to_dict()
    for name in ("mask_strategy", "target", "augment", "decoder_depth"):
        saved.pop(name)
    given = {"data": "d", "output": "o", "resume": "auto"}
    assert merge_settings(saved, given).mask_strategy == "random"
    assert merge_settings(saved, {**given, "augment": "crop-rand"}).augment == "crop-rand"
    with pytest.raises(TrainingError, match="mask_strategy: checkpoint 'random' vs now 'grid'"):
        merge_settings(saved, {**given, "mask_strategy": "grid"})
    with pytest.raises(TrainingError, match="decoder_depth: checkpoint None vs now 1"):
        merge_settings(saved, {**given, "decoder_depth": 1})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--mask-strategy", "grid", "--mask-ratio", "0.5"],
            "mask-strategy grid keeps one patch of every 2x2 cell, i.e. mask-ratio 0.75; got 0.5",
        ),
        (["--mask-strategy", "blok"], "got 'blok' (did you mean block?)"),
        (["--target", "tokens"], "target must be one of norm_pix, pixel, pca, got 'tokens'"),
        (["--target", "pca", "--no-norm-pix-loss"], "target pca contradicts --no-norm-pix-loss"),
        (["--target", "pca", "--pca-components", "500"], "at most the 192 values of a patch"),
        (
            ["--decoder-embed-dim", "100", "--decoder-num-heads", "3"],
            "decoder-embed-dim 100 is not divisible by decoder-num-heads 3",
        ),
        (
            ["--decoder-num-heads", "5"],
            "decoder-embed-dim 128 (the mae_vit_tiny_patch8 default) is not divisible by "
            "decoder-num-heads 5",
        ),
        (["--decoder-embed-dim", "102", "--decoder-num-heads", "2"], "a multiple of 4"),
        (["--decoder-depth", "0"], "decoder-depth must be a positive integer, got 0"),
        (
            ["--augment", "heavy"],
            "augment must be one of none, crop-fixed, crop-rand, crop-rand+jitter, got 'heavy'",
        ),
    ],
)
def test_bad_option_is_one_clear_line(
    cifar_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags, message
) -> None:
    from tests.mae_core.test_train import _fast_flags

    # One step at most, should a bad value ever slip through.
    limits = ["--epochs", "1", "--max-steps", "1"]
    code = main([*_fast_flags(cifar_folder, tmp_path / "run"), *limits, *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_help_shows_the_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--mask-strategy",
        "--target",
        "--pca-components",
        "--encoder-mask-tokens",
        "--decoder-depth",
        "--decoder-embed-dim",
        "--decoder-num-heads",
        "--augment",
    ):
        assert flag in text, flag
    assert "Table 1(e), ViT-L fine-tuned: 84.0, 84.7, 84.9, 84.3" in text
    assert "(default crop-rand)" in text and "(default random)" in text


def test_docs_name_real_flags() -> None:
    """docs/training.md's section on the ablations names flags `mae train` has."""
    import re

    from mae_core.cli import build_parser

    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    section = doc.split("## 10. The paper's ablations as options")[1].split("\n## ")[0]
    named = set(re.findall(r"`(--[a-z-]+)", section))
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    assert named and named <= flags, sorted(named - flags)
    for flag in ("--mask-strategy", "--target", "--augment", "--decoder-depth"):
        assert flag in named
