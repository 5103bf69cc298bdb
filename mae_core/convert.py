"""Weights of the peers, converted to ours: official MAE `.pth` checkpoints and
transformers ViTMAE folders (`ViTMAEForPreTraining` / `ViTMAEModel`). `load_weights` in
`checkpoint.py` picks the reader; each returns (MAEConfig, state dict in our keys, format).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    infer_config,
    load_safetensors,
    read_json,
    safe_torch_load,
)
from .config import MAEConfig, match_variant


# -- official MAE .pth ------------------------------------------------------------------
def read_official(path: Path, hints: dict[str, Any]) -> tuple[MAEConfig, dict, str]:
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    sd = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no state dict of tensors under 'model' or 'state_dict'")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    hints = dict(hints)
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        a = vars(args)
        for key, kind in (("norm_pix_loss", bool), ("mask_ratio", float)):
            if isinstance(a.get(key), kind):
                hints.setdefault(key, a[key])
    if "norm_pix_loss" not in hints:
        # The released visualisation checkpoints predict raw pixels; the pretraining ones
        # were trained with normalised-pixel targets.
        hints["norm_pix_loss"] = "visualize" not in path.name
    return infer_config(sd, hints), sd, "official-mae"


# -- transformers ViTMAE ----------------------------------------------------------------
def is_transformers_dir(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    return cfg.is_file() and read_json(cfg).get("model_type") == "vit_mae"


_HF_LAYER = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
}
_HF_LAYER_RE = re.compile(
    r"^(encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)$"
)


def convert_transformers_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViTMAE keys -> ours. Accepts `ViTMAEForPreTraining` (`vit.` prefix) and
    `ViTMAEModel` keys, and both decoder styles (`decoder.decoder_layers.N` in the published
    facebook/vit-mae-* repos, `decoder.decoder_encoder.layer.N` as transformers 5 writes)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        k = key.removeprefix("vit.")
        if k in _HF_TOP:
            out[_HF_TOP[k]] = value
            continue
        m = re.match(r"^decoder\.(decoder_embed|decoder_norm|decoder_pred)\.(weight|bias)$", k)
        if m:
            out[f"{m.group(1)}.{m.group(2)}"] = value
            continue
        m = _HF_LAYER_RE.match(k)
        if m:
            blocks = "blocks" if m.group(1) == "encoder.layer" else "decoder_blocks"
            prefix, rest = f"{blocks}.{m.group(2)}", m.group(3)
            mq = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if mq:
                qkv.setdefault((prefix, mq.group(2)), {})[mq.group(1)] = value
                continue
            mp = re.match(r"^(.+)\.(weight|bias)$", rest)
            if mp and mp.group(1) in _HF_LAYER:
                out[f"{prefix}.{_HF_LAYER[mp.group(1)]}.{mp.group(2)}"] = value
                continue
        unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (
            f", ... ({len(unknown)} in all)" if len(unknown) > 8 else ""
        )
        raise CheckpointError(f"unexpected keys for a transformers ViTMAE checkpoint: {shown}")
    for (prefix, kind), parts in qkv.items():
        absent = [p for p in ("query", "key", "value") if p not in parts]
        if absent:
            raise CheckpointError(f"missing keys: {prefix} attention {'/'.join(absent)} {kind}")
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def read_transformers_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        return load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
            sd.update(load_safetensors(path / shard))
        return sd
    if (path / "pytorch_model.bin").is_file():
        obj = safe_torch_load(path / "pytorch_model.bin")
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path / 'pytorch_model.bin'} is not a state dict")
        return obj
    raise CheckpointError(
        f"{path} has a transformers config.json but no model.safetensors(.index.json) or "
        "pytorch_model.bin"
    )


def read_transformers(path: Path) -> tuple[MAEConfig, dict, str]:
    hf = read_json(path / CONFIG_FILE)
    if hf.get("qkv_bias", True) is not True:
        raise CheckpointError(f"{path}: ViTMAE with qkv_bias=false is not supported")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {hf['hidden_act']!r} is not supported (gelu)")
    img = hf.get("image_size", 224)
    img = img[0] if isinstance(img, list | tuple) else img
    hidden = hf.get("hidden_size", 768)
    dec_hidden = hf.get("decoder_hidden_size", 512)
    ratio = hf.get("intermediate_size", 4 * hidden) / hidden
    dec_ratio = hf.get("decoder_intermediate_size", 4 * dec_hidden) / dec_hidden
    cfg = MAEConfig(
        img_size=int(img),
        patch_size=int(hf.get("patch_size", 16)),
        in_chans=int(hf.get("num_channels", 3)),
        embed_dim=hidden,
        depth=int(hf.get("num_hidden_layers", 12)),
        num_heads=int(hf.get("num_attention_heads", 12)),
        decoder_embed_dim=dec_hidden,
        decoder_depth=int(hf.get("decoder_num_hidden_layers", 8)),
        decoder_num_heads=int(hf.get("decoder_num_attention_heads", 16)),
        mlp_ratio=ratio,
        decoder_mlp_ratio=None if dec_ratio == ratio else dec_ratio,
        norm_pix_loss=bool(hf.get("norm_pix_loss", False)),
        mask_ratio=float(hf.get("mask_ratio", 0.75)),
        # Kept as the file says so outputs match transformers; the published facebook
        # configs say 1e-12 although the weights were trained with 1e-6.
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )
    cfg = cfg.replace(variant=match_variant(cfg))
    sd = convert_transformers_state_dict(read_transformers_weights(path))
    return cfg, sd, "transformers-vit_mae"
