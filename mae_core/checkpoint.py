"""Weights in and out: our hub layout, and the loader that also reads the peers' formats
(official MAE `.pth` files and transformers ViTMAE folders, converted in `convert.py`).

Reading rules: safetensors, or `torch.load(weights_only=True)` with an explicit allow-list
(never a blind unpickle); every loader checks keys and shapes against the model and names
what is missing, unexpected or mis-shaped; nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import MAEConfig, heads_for_width, match_variant
from .errors import MAEError
from .model import MaskedAutoencoder, is_decoder_key
from .pos_embed import sincos_2d

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"  # timm's
ENCODER_FILE = "model.safetensors"
DECODER_FILE = "decoder.safetensors"
MAE_CONFIG_FILE = "mae_config.json"

# Globals an official MAE checkpoint may pickle besides tensors and containers.
SAFE_GLOBALS: list[Any] = [argparse.Namespace]


class CheckpointError(MAEError, ValueError):
    """A weights file or folder that cannot be loaded; the message says why."""


# ---------------------------------------------------------------------------------------
# Saving: the hub repo layout (DESIGN.md section 3)
# ---------------------------------------------------------------------------------------
_TIMM_ARCH = {
    192: "vit_tiny_patch16_224",
    384: "vit_small_patch16_224",
    768: "vit_base_patch16_224",
    1024: "vit_large_patch16_224",
    1280: "vit_huge_patch14_224",
}


def timm_config(cfg: MAEConfig) -> dict[str, Any]:
    """`config.json` for timm >= 1.0.16 (`hf-hub:` and `local-dir:` loading).

    Every architecture field is given in `model_args`, so the base architecture name only
    picks timm's ViT family; `pretrained_cfg` carries the preprocessing.
    """
    size = [cfg.in_chans, cfg.img_size, cfg.img_size]
    return {
        "architecture": _TIMM_ARCH.get(cfg.embed_dim, "vit_base_patch16_224"),
        "num_classes": 0,
        "num_features": cfg.embed_dim,
        "global_pool": "token",
        "model_args": {
            "img_size": cfg.img_size,
            "patch_size": cfg.patch_size,
            "in_chans": cfg.in_chans,
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
            "num_heads": cfg.num_heads,
            "mlp_ratio": cfg.mlp_ratio,
            "qkv_bias": True,
            "num_classes": 0,
            "global_pool": "token",
        },
        "pretrained_cfg": {
            "tag": "mae",
            "custom_load": False,
            "input_size": size,
            "fixed_input_size": True,
            "interpolation": cfg.interpolation,
            "crop_pct": cfg.crop_pct,
            "crop_mode": "center",
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def save_pretrained(
    model: MaskedAutoencoder,
    directory: str | Path,
    encoder_only: bool = False,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `config.json`, `model.safetensors` (encoder, timm keys), `decoder.safetensors`
    (unless `encoder_only` or the model has no decoder) and `mae_config.json`.

    decoder.safetensors holds every pretraining-only tensor (`model.DECODER_PREFIXES`): the
    decoder, and with the ablation options the encoder's mask token (`encoder_mask_tokens`)
    and the PCA basis of target "pca" (`target_pca_mean`, `target_pca_components`). The
    encoder file stays exactly what timm's ViT loads."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if cfg.layer_norm_eps != 1e-6:
        warnings.warn(
            f"layer_norm_eps is {cfg.layer_norm_eps}; timm's ViT uses 1e-6, so timm's features "
            "will differ slightly from mae_core's for this model",
            stacklevel=2,
        )
    meta = {"format": "mae-hub", "format_version": FORMAT_VERSION}
    st_meta = {"format": "pt", "mae_hub_format": str(FORMAT_VERSION)}  # strings only
    save_file(_contiguous(model.encoder_state_dict()), str(out / ENCODER_FILE), metadata=st_meta)
    decoder = model.has_decoder and not encoder_only
    if decoder:
        save_file(
            _contiguous(model.decoder_state_dict()), str(out / DECODER_FILE), metadata=st_meta
        )
    elif (out / DECODER_FILE).exists():
        (out / DECODER_FILE).unlink()  # a stale decoder must not pair with new encoder weights
    _write_json(out / CONFIG_FILE, timm_config(cfg))
    mae = {**meta, **cfg.to_dict(), "has_decoder": decoder}
    if training:
        mae["training"] = training
    _write_json(out / MAE_CONFIG_FILE, mae)
    return out


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def load_weights(
    source: str | Path,
    *,
    with_decoder: bool | None = None,
    **overrides: Any,
) -> MaskedAutoencoder:
    """Load a local weights folder or file (format detected) into a `MaskedAutoencoder`.

    with_decoder: None loads the decoder when the weights have one; True requires it;
    False skips it (embedding-only use). `overrides` replace inferred `MAEConfig` fields
    (e.g. `norm_pix_loss`, `num_heads` for unusual widths).
    """
    from .convert import is_transformers_dir, read_official, read_transformers

    path = Path(source).expanduser()
    hints = dict(overrides)
    if path.is_dir():
        if (path / MAE_CONFIG_FILE).is_file():
            cfg, sd, fmt = _read_ours(path, with_decoder)
        elif is_transformers_dir(path):
            cfg, sd, fmt = read_transformers(path)
        elif (path / ENCODER_FILE).is_file():
            cfg, sd, fmt = _read_timm_dir(path, hints)
        else:
            raise CheckpointError(
                f"{path} is not a model folder: expected {MAE_CONFIG_FILE} (mae-hub), a "
                f"transformers config.json with model_type 'vit_mae', or a timm {ENCODER_FILE}"
            )
    elif path.is_file():
        if path.suffix == ".safetensors":
            sd, fmt = load_safetensors(path), "safetensors"
            cfg = infer_config(sd, hints)
        else:
            cfg, sd, fmt = read_official(path, hints)
    else:
        raise CheckpointError(f"no such file or folder: {path}")

    try:
        cfg = cfg.replace(**overrides) if overrides else cfg
    except TypeError as e:
        raise CheckpointError(f"unknown MAEConfig override: {e}") from e
    has_decoder = any(is_decoder_key(k) for k in sd)
    if with_decoder and not has_decoder:
        raise CheckpointError(
            f"{path} holds encoder weights only (an encoder-only repo or an official "
            "mae_pretrain_* file); reconstructions need a full checkpoint with the decoder"
        )
    keep_decoder = has_decoder if with_decoder is None else with_decoder
    if not keep_decoder:
        sd = {k: v for k, v in sd.items() if not is_decoder_key(k)}
    model = MaskedAutoencoder(cfg, with_decoder=keep_decoder)
    assign_state_dict(model, sd, source=str(path))
    model.source_info = {"source": str(path), "format": fmt, "weights": _weight_files(path)}
    return model.eval()


def assign_state_dict(model: MaskedAutoencoder, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy `sd` into `model`, refusing any missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                shown = ", ".join(items[:8]) + (
                    f", ... ({len(items)} in all)" if len(items) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"weights from {source} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
    grid = model.config.grid_size
    for name in ("pos_embed", "decoder_pos_embed"):
        if name in sd:
            ref = sincos_2d(sd[name].shape[-1], grid)[None]
            if not torch.allclose(sd[name].float(), ref, atol=1e-4):
                model.learned_tables.add(name)


def _weight_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    names = (ENCODER_FILE, DECODER_FILE, "pytorch_model.bin")
    files = [path / n for n in names if (path / n).is_file()]
    files += sorted(path.glob("model-*-of-*.safetensors"))
    return [str(f) for f in files]


# -- config inference from weights ------------------------------------------------------
def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_config(sd: dict[str, torch.Tensor], hints: dict[str, Any] | None = None) -> MAEConfig:
    """An `MAEConfig` from weights in timm/official key names, plus `hints` where weights are
    silent (head counts, norm_pix_loss, ...)."""
    hints = dict(hints or {})
    for key in ("cls_token", "patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise CheckpointError(f"not an MAE/ViT state dict: no {key!r} among its keys")
    dim = sd["cls_token"].shape[-1]
    proj = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    patch, in_chans = proj.shape[-1], proj.shape[1]
    side = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
    if side * side + 1 != sd["pos_embed"].shape[1]:
        raise CheckpointError(
            f"pos_embed of shape {tuple(sd['pos_embed'].shape)} is not a class token plus a "
            "square grid"
        )
    fields: dict[str, Any] = {
        "img_size": side * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": dim,
        "depth": _count_blocks(sd, "blocks."),
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
    }
    if "decoder_embed.weight" in sd:
        ddim = sd["decoder_embed.weight"].shape[0]
        dfc1 = sd.get("decoder_blocks.0.mlp.fc1.weight")
        dratio = dfc1.shape[0] / ddim if dfc1 is not None else fields["mlp_ratio"]
        fields.update(
            decoder_embed_dim=ddim,
            decoder_depth=_count_blocks(sd, "decoder_blocks."),
            decoder_mlp_ratio=None if dratio == fields["mlp_ratio"] else dratio,
        )
    # The ablation options leave tensors of their own (mae-hub state dicts only).
    if "target_pca_components" in sd:
        fields.update(target="pca", pca_components=sd["target_pca_components"].shape[0])
    if "encoder_mask_token" in sd:
        fields["encoder_mask_tokens"] = True
    fields.update({k: v for k, v in hints.items() if v is not None})
    if "num_heads" not in fields:
        fields["num_heads"] = heads_for_width(dim)
    if "decoder_embed_dim" in fields and "decoder_num_heads" not in fields:
        fields["decoder_num_heads"] = heads_for_width(fields["decoder_embed_dim"], decoder=True)
    try:
        cfg = MAEConfig(**{**_paper_decoder_defaults(), **fields})
    except TypeError as e:
        raise CheckpointError(f"unknown MAEConfig field: {e}") from e
    return cfg.replace(variant=match_variant(cfg)) if cfg.variant == "custom" else cfg


def _paper_decoder_defaults() -> dict[str, Any]:
    # An encoder-only checkpoint says nothing about a decoder; record the paper's.
    return {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}


# -- our layout -------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _read_ours(path: Path, with_decoder: bool | None) -> tuple[MAEConfig, dict, str]:
    meta = read_json(path / MAE_CONFIG_FILE)
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer mae-hub (format {meta['format_version']}); upgrade"
        )
    fields = {k: v for k, v in meta.items() if k not in ("format", "format_version", "has_decoder")}
    try:
        cfg = MAEConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / MAE_CONFIG_FILE}: {e}") from e
    if not (path / ENCODER_FILE).is_file():
        raise CheckpointError(f"{path} has {MAE_CONFIG_FILE} but no {ENCODER_FILE}")
    sd = load_safetensors(path / ENCODER_FILE)
    if with_decoder is not False and (path / DECODER_FILE).is_file():
        sd.update(load_safetensors(path / DECODER_FILE))
    return cfg, sd, "mae-hub"


def _read_timm_dir(path: Path, hints: dict[str, Any]) -> tuple[MAEConfig, dict, str]:
    sd = load_safetensors(path / ENCODER_FILE)
    if (path / CONFIG_FILE).is_file():
        args = read_json(path / CONFIG_FILE).get("model_args", {})
        hints = {"num_heads": args.get("num_heads"), **hints}
    return infer_config(sd, hints), sd, "timm"


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e


# -- official MAE .pth ------------------------------------------------------------------
def safe_torch_load(path: str | Path) -> Any:
    """`torch.load(weights_only=True)`, allowing only `SAFE_GLOBALS` beyond tensors."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        if "global" in reason.lower():
            raise CheckpointError(
                f"refusing to load {path}: it pickles objects outside the allow-list of "
                f"tensors, containers and argparse.Namespace ({reason})"
            ) from e
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {reason}") from e
    except Exception as e:  # a damaged or foreign file can fail anywhere in the unpickler
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint: {type(e).__name__}: {e}"
        ) from e


def _unpickler_reason(message: str) -> str:
    """The useful line of torch's long weights-only error (after 'WeightsUnpickler error:')."""
    _, _, tail = message.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (tail or message).splitlines() if ln.strip()]
    # torch goes on to suggest allow-listing the global; for an untrusted file, do not.
    return lines[0].split(" Please use")[0] if lines else "not a valid pickle"
