"""mae-hub: Masked Autoencoders (He et al. 2021) that train, publish and serve.

    import mae_core
    model = mae_core.create_model("mae_vit_tiny_patch8")
    out = model(imgs, mask_ratio=0.75)          # MAEOutput(loss, pred, mask, ids_restore)
    emb = model.embed(imgs, pooling="cls")      # (N, D)
    model.save_pretrained("my-mae")             # timm-loadable hub layout
    model = mae_core.load_model("my-mae")       # also official .pth, transformers, local:, hf-hub:

The public names load lazily, so `import mae_core` (and `mae --help`) does not pay for
importing torch and timm until a model is touched.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("mae-hub")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "save_pretrained": "checkpoint",
    "VARIANTS": "config",
    "MAEConfig": "config",
    "variant_config": "config",
    "ModelNotFoundError": "hub",
    "load_model": "hub",
    "parse_model_id": "hub",
    "Masking": "masking",
    "random_masking": "masking",
    "MAEOutput": "model",
    "MaskedAutoencoder": "model",
    "create_model": "model",
    "sincos_2d": "pos_embed",
}

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoencoder",
    "Masking",
    "ModelNotFoundError",
    "__version__",
    "create_model",
    "load_model",
    "parse_model_id",
    "random_masking",
    "save_pretrained",
    "sincos_2d",
    "variant_config",
]

if TYPE_CHECKING:
    from .checkpoint import CheckpointError, save_pretrained
    from .config import VARIANTS, MAEConfig, variant_config
    from .hub import ModelNotFoundError, load_model, parse_model_id
    from .masking import Masking, random_masking
    from .model import MAEOutput, MaskedAutoencoder, create_model
    from .pos_embed import sincos_2d


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mae_core' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
