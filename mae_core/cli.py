"""The `mae` command. Thin: each subcommand parses its flags and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__


class CLIError(Exception):
    """A user error: printed as `mae: error: ...`, exit status 2, no traceback."""


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{int(n)}{unit}"
        n /= 1000
    return f"{n:.1f}T{unit}"


# -- mae info ---------------------------------------------------------------------------
def describe(model_id: str, revision: str | None = None, hashes: bool = True) -> dict[str, Any]:
    """What `mae info` shows, as a dict: config, parameter counts, source, weight hashes."""
    import torch

    from .checkpoint import sha256_file
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
        model = load_model(model_id, revision)
        source = model.source_info
    c = model.config
    weights = []
    for f in source.get("weights", []):
        entry = {"file": f, "size": Path(f).stat().st_size}
        if hashes:
            entry["sha256"] = sha256_file(f)
        weights.append(entry)
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
        "mask_ratio": c.mask_ratio,
        "layer_norm_eps": c.layer_norm_eps,
        "source": source.get("source"),
        "format": source.get("format"),
        "weights": weights,
    }


def _print_info(d: dict[str, Any]) -> None:
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
            f"{_human(params['encoder'])} parameters",
        ),
        (
            "decoder",
            f"{dec['embed_dim']}-d, {dec['depth']} blocks, {dec['num_heads']} heads: "
            f"{_human(params['decoder'])} parameters"
            if dec
            else "none (encoder-only weights: embeddings yes, reconstructions no)",
        ),
        (
            "loss",
            f"MSE on masked patches, {'per-patch normalised' if d['norm_pix_loss'] else 'raw'}"
            f" pixel targets, mask ratio {d['mask_ratio']}",
        ),
        ("source", f"{d['source']}" + (f" ({d['format']})" if d["format"] else "")),
    ]
    for w in d["weights"]:
        rows.append(
            (
                "weights",
                f"{Path(w['file']).name}  {_human(w['size'], 'B')}  sha256:{w.get('sha256', '-')}",
            )
        )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_info(args: argparse.Namespace) -> int:
    d = describe(args.model, args.revision, hashes=not args.no_hash)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_info(d)
    return 0


def add_info(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="show a model's variant, sizes, parameter counts, source and weight hashes",
        description="Load MODEL and describe it. MODEL is a folder or weights file (mae-hub, "
        "transformers ViTMAE, official MAE .pth), local:<ns>/<name>[@rev], "
        "hf-hub:<ns>/<name>[@rev], or a variant name such as mae_vit_base_patch16.",
    )
    p.add_argument("model", metavar="MODEL", help="model id")
    p.add_argument("--revision", help="branch or commit (same as MODEL@REV)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-hash", action="store_true", help="skip the sha256 of the weights")
    p.set_defaults(func=cmd_info)


# -- the parser -------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[Any], None]] = [add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mae",
        description="mae-hub: train Masked Autoencoders, publish their encoders, serve them.",
        epilog="Run 'mae COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"mae-hub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .checkpoint import CheckpointError  # after parsing: `mae --help` stays instant

    try:
        return int(args.func(args) or 0)
    except (CLIError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"mae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
