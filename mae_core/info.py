"""What `mae info` shows about a model: its variant, sizes, parameter counts, source and
weight hashes, as a dict (`describe`) and as an aligned table (`format_info`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import sha256_file


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.2M' (with `unit` appended: '1.2MB')."""
    for suffix in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{int(n)}{unit}"
        n /= 1000
    return f"{n:.1f}T{unit}"


def describe(model_id: str, revision: str | None = None, hashes: bool = True) -> dict[str, Any]:
    """Config, parameter counts, source and weight files (with sha256 when `hashes`) of
    any model id, or of a variant name (random initialisation, nothing loaded)."""
    import torch

    from .config import VARIANTS
    from .hub import load_model
    from .model import create_model

    if model_id in VARIANTS and not Path(model_id).exists():
        with torch.device("meta"):  # counts only: no memory, no init
            model = create_model(model_id)
        source = {
            "source": "random initialisation (a variant name, no weights)",
            "format": None,
            "weights": [],
        }
    else:
        from .classify import describe_classifier, resolve_classifier

        folder = resolve_classifier(model_id, revision)
        if folder is not None:  # a fine-tuned classifier: its head and labels, no MAE
            shown = model_id if revision is None else f"{model_id}@{revision}"
            return describe_classifier(folder, shown, hashes)
        model = load_model(model_id, revision)
        source = model.source_info
    c = model.config
    weights = weight_files(source.get("weights", []), hashes)
    return {
        "model_id": model_id if revision is None else f"{model_id}@{revision}",
        "variant": c.variant,
        "img_size": c.img_size,
        "patch_size": c.patch_size,
        "num_patches": c.num_patches,
        "in_chans": c.in_chans,
        "encoder": {"embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads},
        "decoder": (
            {
                "embed_dim": c.decoder_embed_dim,
                "depth": c.decoder_depth,
                "num_heads": c.decoder_num_heads,
            }
            if model.has_decoder
            else None
        ),
        "params": model.num_params(),
        "norm_pix_loss": c.norm_pix_loss,
        "target": c.target,
        "pca_components": c.pca_components if c.target == "pca" else None,
        "mask_ratio": c.mask_ratio,
        "mask_strategy": c.mask_strategy,
        "encoder_mask_tokens": c.encoder_mask_tokens,
        "layer_norm_eps": c.layer_norm_eps,
        "source": source.get("source"),
        "format": source.get("format"),
        "weights": weights,
    }


def format_info(d: dict[str, Any]) -> str:
    """A `describe` result as two aligned columns, one fact per line."""
    if d.get("kind") == "classifier":
        from .classify import format_classifier_info

        return format_classifier_info(d)
    enc, dec, params = d["encoder"], d["decoder"], d["params"]
    g = d["img_size"] // d["patch_size"]
    rows = [
        ("model", d["model_id"]),
        ("variant", d["variant"]),
        (
            "image",
            f"{d['img_size']}x{d['img_size']} px, patch {d['patch_size']} "
            f"({g}x{g} = {d['num_patches']} patches), {d['in_chans']} channels",
        ),
        (
            "encoder",
            f"{enc['embed_dim']}-d, {enc['depth']} blocks, {enc['num_heads']} heads: "
            f"{human(params['encoder'])} parameters",
        ),
        (
            "decoder",
            f"{dec['embed_dim']}-d, {dec['depth']} blocks, {dec['num_heads']} heads: "
            f"{human(params['decoder'])} parameters"
            if dec
            else "none (encoder-only weights: embeddings yes, reconstructions no)",
        ),
        ("loss", _loss_line(d)),
        ("source", f"{d['source']}" + (f" ({d['format']})" if d["format"] else "")),
    ]
    return aligned(rows, d["weights"])


def weight_files(files: Any, hashes: bool = True) -> list[dict[str, Any]]:
    """Each weights file's path and size, and its sha256 when `hashes`."""
    out = []
    for f in files:
        entry: dict[str, Any] = {"file": str(f), "size": Path(f).stat().st_size}
        if hashes:
            entry["sha256"] = sha256_file(f)
        out.append(entry)
    return out


def aligned(rows: list[tuple[str, str]], weights: list[dict[str, Any]]) -> str:
    """`rows` and a line per weights file as two aligned columns, one fact per line."""
    for w in weights:
        size = human(w["size"], "B")
        rows.append(("weights", f"{Path(w['file']).name}  {size}  sha256:{w.get('sha256', '-')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


_TARGETS = {
    "norm_pix": "per-patch normalised pixel targets",
    "pixel": "pixel targets (not normalised per patch)",
    "pca": "targets the first {k} coefficients of a per-patch PCA basis",
}


def _loss_line(d: dict) -> str:
    target = _TARGETS[d["target"]].format(k=d.get("pca_components"))
    masking = f"mask ratio {d['mask_ratio']}"
    if d.get("mask_strategy", "random") != "random":
        masking += f", {d['mask_strategy']} masking"
    if d.get("encoder_mask_tokens"):
        masking += ", mask tokens in the encoder"
    return f"MSE on masked patches, {target}, {masking}"
