"""mae-hub: Masked Autoencoders (He et al. 2021) that train, publish and serve.

import mae_core
model = mae_core.create_model("mae_vit_tiny_patch8")
out = model(imgs, mask_ratio=0.75)          # MAEOutput(loss, pred, mask, ids_restore)
emb = model.embed(imgs, pooling="cls")      # (N, D)
model.save_pretrained("my-mae")             # timm-loadable hub layout
model = mae_core.load_model("my-mae")       # also official .pth, transformers, local:, hf-hub:
"""

from importlib.metadata import PackageNotFoundError, version

from .checkpoint import CheckpointError, save_pretrained
from .config import VARIANTS, MAEConfig, variant_config
from .hub import ModelNotFoundError, load_model, parse_model_id
from .masking import Masking, random_masking
from .model import MAEOutput, MaskedAutoencoder, create_model
from .pos_embed import sincos_2d

try:
    __version__ = version("mae-hub")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

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
