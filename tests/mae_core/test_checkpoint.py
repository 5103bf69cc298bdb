"""Weights in and out, against the real peers: transformers' ViTMAE, timm, official .pth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mae_core import CheckpointError, MaskedAutoencoder, load_model
from mae_core.checkpoint import load_weights
from mae_core.config import MAEConfig
from mae_core.targets import fit_pca_basis
from tests.reference import TINY, perturb_, reference_table


# -- transformers ViTMAEForPreTraining ---------------------------------------------------
def _hf_model(norm_pix_loss: bool = True, eps: float = 1e-6) -> ViTMAEForPreTraining:
    cfg = ViTMAEConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
        layer_norm_eps=eps,
    )
    return perturb_(ViTMAEForPreTraining(cfg)).eval()


def _assert_same_as_hf(hf: ViTMAEForPreTraining, ours: MaskedAutoencoder) -> None:
    x = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, 16)
    with torch.no_grad():
        ref = hf(pixel_values=x, noise=noise)
        out = ours(x, mask_ratio=0.75, noise=noise)
    assert torch.equal(out.mask, ref.mask)
    assert torch.equal(out.ids_restore, ref.ids_restore)
    torch.testing.assert_close(out.pred, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_transformers_parity(tmp_path: Path, norm_pix_loss: bool) -> None:
    hf = _hf_model(norm_pix_loss)
    hf.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("decoder.decoder_encoder.layer.") for k in keys)  # current style
    ours = load_model(tmp_path)
    assert ours.config.norm_pix_loss is norm_pix_loss
    assert ours.source_info["format"] == "transformers-vit_mae"
    _assert_same_as_hf(hf, ours)


def test_transformers_published_decoder_style_and_bin(tmp_path: Path) -> None:
    """facebook/vit-mae-* repos hold decoder.decoder_layers.N.*; older ones a .bin."""
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd = {
        k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v
        for k, v in sd.items()
    }
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    _assert_same_as_hf(hf, load_model(tmp_path))


def test_transformers_eps_is_kept_from_the_config(tmp_path: Path) -> None:
    hf = _hf_model(eps=1e-12)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.config.layer_norm_eps == 1e-12
    _assert_same_as_hf(hf, ours)


def test_transformers_then_ours_roundtrip(tmp_path: Path) -> None:
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    load_model(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    _assert_same_as_hf(hf, load_model(tmp_path / "ours"))


# -- timm: our save_pretrained -> timm local-dir -----------------------------------------
def test_save_pretrained_layout_and_timm_parity(tiny_model: MaskedAutoencoder, tmp_path: Path):
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "decoder.safetensors",
        "mae_config.json",
        "model.safetensors",
    ]
    enc = load_file(str(tmp_path / "model.safetensors"))
    assert "mask_token" not in enc and not any(k.startswith("decoder") for k in enc)
    assert set(load_file(str(tmp_path / "decoder.safetensors"))) == set(
        tiny_model.decoder_state_dict()
    )
    # The stored position table is the paper's, computed independently.
    torch.testing.assert_close(
        enc["pos_embed"][0].double(), torch.from_numpy(reference_table(32, 4, 4)), atol=1e-6, rtol=0
    )
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]

    vit = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            vit.forward_features(x), tiny_model.forward_features(x), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(vit(x), tiny_model.embed(x, "cls"), atol=1e-5, rtol=1e-5)
    data_cfg = timm.data.resolve_data_config({}, model=vit)
    assert tuple(data_cfg["mean"]) == tiny_model.config.mean
    assert data_cfg["interpolation"] == "bicubic"


def test_save_and_load_roundtrip_exact(tiny_model: MaskedAutoencoder, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)
    back = load_model(tmp_path)
    assert back.config == tiny_model.config
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    assert torch.equal(back(x, noise=noise).pred, tiny_model(x, noise=noise).pred)


def test_encoder_only_save_and_decoder_choice(tiny_model: MaskedAutoencoder, tmp_path: Path):
    tiny_model.save_pretrained(tmp_path / "enc", encoder_only=True)
    assert not (tmp_path / "enc" / "decoder.safetensors").exists()
    enc = load_model(tmp_path / "enc")
    assert not enc.has_decoder
    with pytest.raises(CheckpointError, match="holds encoder weights only"):
        load_model(tmp_path / "enc", with_decoder=True)
    tiny_model.save_pretrained(tmp_path / "full")
    assert not load_model(tmp_path / "full", with_decoder=False).has_decoder
    assert load_model(tmp_path / "full").has_decoder


# -- official MAE .pth files -------------------------------------------------------------
def _timm_vit(tiny_cfg: MAEConfig) -> torch.nn.Module:
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=0,
    )
    perturb_(vit)
    with torch.no_grad():
        vit.pos_embed.copy_(torch.from_numpy(reference_table(32, 4, 4))[None].float())
    return vit.eval()


def test_official_encoder_checkpoint_matches_timm(tiny_cfg: MAEConfig, tmp_path: Path) -> None:
    vit = _timm_vit(tiny_cfg)
    args = argparse.Namespace(model="mae_vit_tiny", norm_pix_loss=True, mask_ratio=0.75, lr=None)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": vit.state_dict(), "args": args, "epoch": 799}, path)
    ours = load_model(path, num_heads=2)
    assert not ours.has_decoder and ours.source_info["format"] == "official-mae"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(x), vit.forward_features(x), atol=1e-5, rtol=1e-5
        )


def test_official_full_checkpoint(tiny_model: MaskedAutoencoder, tmp_path: Path) -> None:
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    sd = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save(
        {
            "model": sd,
            "optimizer": optimizer,
            "epoch": 3,
            "scaler": {},
            "args": argparse.Namespace(norm_pix_loss=False),
        },
        path,
    )
    ours = load_model(path, num_heads=2, decoder_num_heads=2)
    assert ours.has_decoder and ours.config.norm_pix_loss is False
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(ours(x, noise=noise).pred, tiny_model(x, noise=noise).pred)


def test_unknown_width_asks_for_heads(tiny_model: MaskedAutoencoder, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": tiny_model.encoder_state_dict()}, path)
    with pytest.raises(ValueError, match="cannot infer the number of attention heads for width 32"):
        load_model(path)


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_outside_allow_list_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pth.*allow-list"):
        load_model(path)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pth"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="is not a model folder"):
        load_model(tmp_path)


# -- bad keys and shapes -----------------------------------------------------------------
def _edit_encoder(directory: Path, edit) -> None:
    f = directory / "model.safetensors"
    sd = load_file(str(f))
    edit(sd)
    save_file(sd, str(f))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: sd.pop("blocks.1.attn.qkv.weight"),
            r"missing keys: blocks\.1\.attn\.qkv\.weight",
        ),
        (
            lambda sd: sd.__setitem__("blocks.0.extra", torch.zeros(2)),
            r"unexpected keys: blocks\.0\.extra",
        ),
        (
            lambda sd: sd.__setitem__("norm.weight", torch.ones(31)),
            r"shape mismatches: norm\.weight: checkpoint \(31,\) vs model \(32,\)",
        ),
    ],
)
def test_bad_keys_are_named(tiny_model: MaskedAutoencoder, tmp_path: Path, edit, message) -> None:
    tiny_model.save_pretrained(tmp_path)
    _edit_encoder(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_transformers_unknown_key_is_named(tmp_path: Path) -> None:
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["vit.pooler.dense.weight"] = torch.zeros(2, 2)
    del sd["vit.encoder.layer.1.attention.attention.key.bias"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"vit\.pooler\.dense\.weight"):
        load_model(tmp_path)
    del sd["vit.pooler.dense.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.1 attention key bias"):
        load_model(tmp_path)


# -- the ablation options: targets and encoder mask tokens -------------------------------
def _option_model(changes: dict) -> MaskedAutoencoder:
    torch.manual_seed(0)
    model = perturb_(MaskedAutoencoder(TINY.replace(**changes))).eval()
    if model.config.target == "pca":
        patches = torch.randn(300, 192, generator=torch.Generator().manual_seed(5))
        model.set_pca_basis(*fit_pca_basis(patches * torch.linspace(3, 0.1, 192), 10))
    return model


@pytest.mark.parametrize(
    "changes",
    [
        {"target": "norm_pix"},
        {"target": "pixel"},
        {"target": "pca", "pca_components": 10},
        {"encoder_mask_tokens": True},
        {"target": "pca", "pca_components": 10, "encoder_mask_tokens": True},
    ],
    ids=["norm_pix", "pixel", "pca", "encoder_mask_tokens", "pca+encoder_mask_tokens"],
)
def test_options_survive_save_and_load(changes: dict, tmp_path: Path) -> None:
    model = _option_model(changes)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "mae_config.json").read_text())
    cfg = model.config
    assert (saved["target"], saved["norm_pix_loss"]) == (cfg.target, cfg.target == "norm_pix")
    assert saved["pca_components"] == cfg.pca_components
    assert saved["encoder_mask_tokens"] is cfg.encoder_mask_tokens
    # Pretraining-only tensors go with the decoder; the encoder file stays timm's.
    enc = load_file(str(tmp_path / "model.safetensors"))
    dec = load_file(str(tmp_path / "decoder.safetensors"))
    extra = {"encoder_mask_token"} if cfg.encoder_mask_tokens else set()
    if cfg.target == "pca":
        extra |= {"target_pca_mean", "target_pca_components"}
    assert extra <= set(dec) and not extra & set(enc)
    assert ("mask_token" in dec) is not cfg.encoder_mask_tokens
    assert dec["decoder_pred.weight"].shape[0] == model.target_dim

    back = load_weights(tmp_path)
    assert back.config == cfg and set(back.state_dict()) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back.has_pca_basis is (cfg.target == "pca")
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        a, b = model(x, noise=noise), back(x, noise=noise)
        assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)
        pixels = back.pred_to_pixels(b.pred, x, b.mask)
        assert torch.equal(model.pred_to_pixels(a.pred, x, a.mask), pixels)
    vit = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            vit.forward_features(x), back.forward_features(x), atol=1e-5, rtol=1e-5
        )
    # Encoder only: none of the pretraining tensors, and features unchanged.
    enc_only = load_weights(tmp_path, with_decoder=False)
    assert not extra & set(enc_only.state_dict()) and not enc_only.has_pca_basis
    assert torch.equal(enc_only.forward_features(x), back.forward_features(x))


def test_a_file_from_before_the_options_loads_with_defaults(tmp_path: Path) -> None:
    model = _option_model({"target": "pixel"})
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "mae_config.json").read_text())
    for key in ("target", "pca_components", "encoder_mask_tokens"):
        del meta[key]  # an older mae_config.json: norm_pix_loss false, nothing else
    (tmp_path / "mae_config.json").write_text(json.dumps(meta))
    back = load_weights(tmp_path)
    assert back.config.target == "pixel" and back.config.norm_pix_loss is False
    assert back.config.pca_components == 16 and back.config.encoder_mask_tokens is False
    assert not back.config.extra
    meta.update(target="pca", norm_pix_loss=True)  # a hand-edited file that contradicts itself
    (tmp_path / "mae_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="norm_pix_loss=True contradicts target 'pca'"):
        load_weights(tmp_path)


def test_a_safetensors_state_dict_tells_its_options(tmp_path: Path) -> None:
    model = _option_model({"target": "pca", "pca_components": 10, "encoder_mask_tokens": True})
    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    back = load_model(path, num_heads=2, decoder_num_heads=2)
    assert back.config.target == "pca" and back.config.pca_components == 10
    assert back.config.encoder_mask_tokens and back.has_pca_basis
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(back(x, noise=noise).loss, model(x, noise=noise).loss)


def test_pca_model_without_its_basis_file_entries_is_refused(tmp_path: Path) -> None:
    _option_model({"target": "pca", "pca_components": 10}).save_pretrained(tmp_path)
    dec = load_file(str(tmp_path / "decoder.safetensors"))
    del dec["target_pca_components"]
    save_file(dec, str(tmp_path / "decoder.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: target_pca_components"):
        load_weights(tmp_path)


def test_the_default_model_is_unchanged() -> None:
    from mae_core.hub import resolve_local

    models = Path(__file__).resolve().parents[2] / "models"
    model = load_model(resolve_local("mae/vit-tiny-tinyimagenet", root=models))
    assert model.config.target == "norm_pix" and not model.config.encoder_mask_tokens
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(4))
    # Captured before the targets and encoder mask tokens existed.
    assert out.loss.item() == pytest.approx(1.0395482778549194, rel=1e-5)
    assert out.pred.double().abs().sum().item() == pytest.approx(5456.3848520418105, rel=1e-5)
