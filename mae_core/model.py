"""The Masked Autoencoder: a ViT encoder on the visible patches, a light decoder after it.

Module and parameter names follow the official code (and so timm's ViT for the encoder):
`patch_embed`, `cls_token`, `pos_embed`, `blocks`, `norm`, then `decoder_embed`,
`mask_token`, `decoder_pos_embed`, `decoder_blocks`, `decoder_norm`, `decoder_pred`.
Options of the paper's ablations add pretraining-only tensors that travel with the decoder:
`encoder_mask_token` (`encoder_mask_tokens`) and `target_pca_mean` / `target_pca_components`
(target "pca").
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, NamedTuple

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from .config import MAEConfig, variant_config
from .errors import DecoderMissing
from .masking import Masking, check_mask_ratio, check_mask_strategy, sample_mask
from .pos_embed import sincos_2d
from .targets import NORM_PIX_EPS, PCABasisMissing, interpolate_patch_stats, patch_stats

# Keys that exist for pretraining and reconstructions only: they go to decoder.safetensors,
# never to the timm-loadable encoder file. `encoder_mask_token` too: timm's ViT has no such
# key (a strict load would refuse it) and features never use it (no patch is hidden there).
DECODER_PREFIXES = ("mask_token", "decoder_", "encoder_mask_token", "target_pca_")


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # () mean squared error over the masked patches
    pred: torch.Tensor  # (N, L, T) predicted targets (T = model.target_dim), patch order
    mask: torch.Tensor  # (N, L) 1 = removed (predicted), 0 = visible
    ids_restore: torch.Tensor  # (N, L)


def is_decoder_key(key: str) -> bool:
    return key.startswith(DECODER_PREFIXES)


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder (timm `Block`s) and a Transformer decoder.

    `imgs` everywhere are normalised float tensors (N, C, H, W) with H and W multiples of
    the patch size. Sizes other than `config.img_size` work: the fixed sin-cos tables are
    recomputed for the new grid.
    """

    def __init__(self, config: MAEConfig, *, with_decoder: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config
        norm_layer = partial(nn.LayerNorm, eps=c.layer_norm_eps)

        self.patch_embed = PatchEmbed(
            img_size=c.img_size,
            patch_size=c.patch_size,
            in_chans=c.in_chans,
            embed_dim=c.embed_dim,
            strict_img_size=False,  # we check sizes ourselves, with a clearer message
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Fixed tables: buffers, so no optimiser ever sees them; persistent, so they travel
        # with the weights under the names timm and the official code use.
        self.register_buffer("pos_embed", sincos_2d(c.embed_dim, c.grid_size)[None])
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(c.depth)
        )
        self.norm = norm_layer(c.embed_dim)
        self.has_decoder = False
        # Names of position tables loaded from weights that are not the sin-cos table (a
        # trained table is resampled, not recomputed, for another image size).
        self.learned_tables: set[str] = set()
        # Where the weights came from (set by the loaders; shown by `mae info`).
        self.source_info: dict[str, Any] = {}
        # Whether the "pca" target's basis is known to be set (checked once, then cached).
        self._pca_ready = False
        if with_decoder:
            self._build_decoder(norm_layer)
        self.initialize_weights()

    def _build_decoder(self, norm_layer: Any) -> None:
        c = self.config
        ratio = c.decoder_mlp_ratio if c.decoder_mlp_ratio is not None else c.mlp_ratio
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim, bias=True)
        if c.encoder_mask_tokens:
            # The encoder's mask token takes the decoder's place; an unused parameter would
            # also stall distributed training (DDP waits for a gradient that never comes).
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        else:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(c.decoder_embed_dim, c.grid_size)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(
                c.decoder_embed_dim,
                c.decoder_num_heads,
                ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
            )
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = norm_layer(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, self.target_dim, bias=True)
        if c.target == "pca":
            # Zeros until `set_pca_basis` (or loading) fills them: all-zero components mean
            # "no basis yet", which `patch_targets` refuses.
            size = c.patch_size**2 * c.in_chans
            self.register_buffer("target_pca_mean", torch.zeros(size))
            self.register_buffer("target_pca_components", torch.zeros(c.pca_components, size))
        self.has_decoder = True

    def drop_decoder(self) -> MaskedAutoencoder:
        """Free the decoder (for embedding-only use). Returns self."""
        for name in (
            "decoder_embed",
            "mask_token",
            "decoder_pos_embed",
            "decoder_blocks",
            "decoder_norm",
            "decoder_pred",
            "encoder_mask_token",
            "target_pca_mean",
            "target_pca_components",
        ):
            if hasattr(self, name):
                delattr(self, name)
        self.has_decoder = False
        return self

    # -- initialisation (the official recipe) -------------------------------------------
    def initialize_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over the flat patch
        nn.init.normal_(self.cls_token, std=0.02)
        if self.has_decoder:
            token = self.encoder_mask_token if self.config.encoder_mask_tokens else self.mask_token
            nn.init.normal_(token, std=0.02)
        self.apply(_init_module)

    # -- patches ----------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def target_dim(self) -> int:
        """T, the values the decoder predicts per patch: K for target "pca", else p*p*C."""
        c = self.config
        return c.pca_components if c.target == "pca" else c.patch_size**2 * c.in_chans

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> (N, L, p*p*C), pixels of a patch in (row, col, channel) order."""
        p = self.patch_size
        n, c, hp, wp = imgs.shape
        h, w = hp // p, wp // p
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """x: (N, L, p*p*C) -> (N, C, H, W). `grid_size` (h, w) defaults to a square grid."""
        p, c = self.patch_size, self.config.in_chans
        n, length, _ = x.shape
        if grid_size is None:
            side = round(length**0.5)
            if side * side != length:
                raise ValueError(f"{length} patches is not a square grid; pass grid_size=(h, w)")
            grid_size = (side, side)
        h, w = grid_size
        x = x.reshape(n, h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, h * p, w * p)

    def check_images(self, imgs: torch.Tensor) -> tuple[int, int]:
        """Raise a ValueError naming the problem unless imgs fits the model; returns the grid."""
        c = self.config
        if not isinstance(imgs, torch.Tensor):
            raise TypeError(f"imgs must be a torch.Tensor, got {type(imgs).__name__}")
        if imgs.ndim != 4:
            raise ValueError(f"imgs must have shape (N, C, H, W), got {tuple(imgs.shape)}")
        if not imgs.is_floating_point():
            raise ValueError(f"imgs must be a normalised float tensor, got dtype {imgs.dtype}")
        _n, ch, h, w = imgs.shape
        if ch != c.in_chans:
            raise ValueError(
                f"model expects {c.in_chans} channels, got {ch} (imgs {tuple(imgs.shape)})"
            )
        p = c.patch_size
        if h < p or w < p or h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not a positive multiple of the patch size {p} "
                f"(this model was trained at {c.img_size}x{c.img_size})"
            )
        return h // p, w // p

    # -- position tables for any grid -------------------------------------------------------
    def _table(self, name: str, grid: tuple[int, int]) -> torch.Tensor:
        table: torch.Tensor = getattr(self, name)
        if grid == self.config.grid_size:
            return table
        if name not in self.learned_tables:
            new = sincos_2d(table.shape[-1], grid)[None]
            return new.to(device=table.device, dtype=table.dtype)
        # A table that is not the fixed sin-cos one (imported, trained): resample it.
        return resample_abs_pos_embed(table, new_size=list(grid), num_prefix_tokens=1)

    # -- encoder / decoder --------------------------------------------------------------
    def _embed_patches(
        self, imgs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        grid = self.check_images(imgs)
        pos = self._table("pos_embed", grid)  # (1, 1+L, D)
        x = self.patch_embed(imgs) + pos[:, 1:, :]  # (N, L, D)
        return x, pos, grid

    def _prepend_cls(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (N, len, D) -> (N, 1+len, D): the class token (plus its position) first."""
        cls = (self.cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def _encode(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self._prepend_cls(x, pos)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_encoder(
        self,
        imgs: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mask_strategy: str | None = None,
    ) -> tuple[torch.Tensor, Masking]:
        """imgs (N, C, H, W) -> latent (N, 1+len_keep, D) of the visible patches, and the masking.

        With `config.encoder_mask_tokens` the latent is (N, 1+L, D) in patch order: every
        hidden patch enters the encoder as `encoder_mask_token` plus its position.
        `mask_strategy`: one of `masking.MASK_STRATEGIES`; None: the config's.
        """
        x, pos, grid = self._embed_patches(imgs)
        strategy = self.config.mask_strategy if mask_strategy is None else mask_strategy
        masking = sample_mask(
            x, mask_ratio, strategy, noise=noise, generator=generator, grid_size=grid
        )
        if self.config.encoder_mask_tokens:
            return self._encode(self._fill_hidden(x, masking.mask, pos), pos), masking
        return self._encode(masking.x_masked, pos), masking

    def _fill_hidden(self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (N, L, D), mask (N, L) -> (N, L, D): hidden tokens replaced by the encoder's mask
        token plus their position embedding, so the encoder knows where each one stands."""
        self._require_decoder("masking with encoder_mask_tokens")
        token = self.encoder_mask_token + pos[:, 1:, :]  # (1, L, D)
        return torch.where(mask.unsqueeze(-1).bool(), token, x)

    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """latent (N, 1+len_keep, D), ids_restore (N, L) -> pred (N, L, T), T = target_dim.

        With `config.encoder_mask_tokens` the latent is already (N, 1+L, D) in patch order
        and no mask token is inserted.
        """
        self._require_decoder("forward_decoder")
        x = self.decoder_embed(latent)  # (N, 1+len_keep, Dd)
        n, length = ids_restore.shape
        if self.config.encoder_mask_tokens:
            if x.shape[1] != 1 + length:
                raise ValueError(
                    f"with encoder_mask_tokens the latent holds all 1+L = {1 + length} tokens, "
                    f"got {x.shape[1]}"
                )
        else:
            mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
            x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd), shuffled order
            x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
            x = torch.cat([x[:, :1, :], x_], dim=1)  # (N, 1+L, Dd), original order
        if grid_size is None:
            grid_size = self.config.grid_size
        x = x + self._table("decoder_pos_embed", grid_size)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]  # drop the class token

    # -- reconstruction targets ----------------------------------------------------------
    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> (N, L, T): what the decoder is trained to predict.

        "norm_pix": each patch's pixels less its mean, over its std (unbiased variance +
        1e-6, as in the official code); "pixel": the patches as they are; "pca": the
        patches' coefficients (x - mean) @ components.T in the stored basis (float32).
        """
        target = self.patchify(imgs)
        kind = self.config.target
        if kind == "norm_pix":
            mean, std = patch_stats(target)
            target = (target - mean) / std
        elif kind == "pca":
            mean, components = self._pca_basis(target.device)
            with torch.autocast(target.device.type, enabled=False):
                target = (target.float() - mean) @ components.T  # (N, L, K)
        return target

    def pred_to_pixels(
        self,
        pred: torch.Tensor,
        imgs: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pred (N, L, T) -> (N, L, p*p*C) patches in the normalised image's space (then
        `unpatchify(..., grid)` gives images): the one way back from predictions to pixels.

        "pixel": pred as it is. "pca": coefficients @ components + mean (exact for the
        span of the K components). "norm_pix": pred * std + mean per patch, with the
        statistics of the visible patches of `imgs` (N, C, H, W) and, for the hidden ones
        (`mask` (N, L), 1 = hidden), statistics interpolated from their nearest visible
        patches (`targets.interpolate_patch_stats`): no hidden pixel is looked at. Both
        `imgs` and `mask` are needed for "norm_pix" only.
        """
        kind = self.config.target
        if kind == "pixel":
            return pred
        if kind == "pca":
            mean, components = self._pca_basis(pred.device)
            with torch.autocast(pred.device.type, enabled=False):
                return pred.float() @ components + mean  # (N, L, P)
        if imgs is None or mask is None:
            raise ValueError(
                "a norm_pix model's predictions need imgs and mask to map back to pixels (the "
                "visible patches' mean and std)"
            )
        grid = self.check_images(imgs)
        pix = self.patchify(imgs).to(pred.device, torch.float32)  # (N, L, P)
        # The statistics patch_targets divided out: unbiased var + 1e-6, as in training.
        stats = torch.stack(
            [pix.mean(-1), (pix.var(-1) + NORM_PIX_EPS).sqrt()], dim=-1
        )  # (N, L, 2)
        stats = torch.stack(
            [interpolate_patch_stats(s, m, grid) for s, m in zip(stats, mask, strict=True)]
        )
        return pred * stats[..., 1:] + stats[..., :1]

    def set_pca_basis(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        """Store the "pca" target's basis: mean (P,), components (K, P) with orthonormal rows
        (`targets.fit_pca_basis`), K = config.pca_components, P = p*p*C. Call once before
        training; the basis is saved with the decoder weights and restored on load."""
        c = self.config
        if c.target != "pca":
            raise ValueError(f"set_pca_basis is for target 'pca'; this model's is {c.target!r}")
        self._require_decoder("set_pca_basis")
        size = c.patch_size**2 * c.in_chans
        if tuple(mean.shape) != (size,) or tuple(components.shape) != (c.pca_components, size):
            raise ValueError(
                f"a PCA basis for this model is mean ({size},) and components "
                f"({c.pca_components}, {size}); got {tuple(mean.shape)} and "
                f"{tuple(components.shape)}"
            )
        comps = components.detach().to("cpu", torch.float64)
        gram = comps @ comps.T  # (K, K)
        if not bool(torch.isfinite(gram).all() and torch.isfinite(mean).all()):
            raise ValueError("the PCA basis holds NaN or infinite values")
        if not torch.allclose(gram, torch.eye(len(gram), dtype=torch.float64), atol=1e-4):
            raise ValueError("the PCA components must be orthonormal rows (fit_pca_basis)")
        with torch.no_grad():
            self.target_pca_mean.copy_(mean)
            self.target_pca_components.copy_(components)
        self._pca_ready = True

    @property
    def has_pca_basis(self) -> bool:
        """Whether a "pca"-target model has its basis (set or loaded); False otherwise."""
        if self.config.target != "pca" or not self.has_decoder:
            return False
        if not self._pca_ready:
            self._pca_ready = bool(torch.count_nonzero(self.target_pca_components))
        return self._pca_ready

    def _pca_basis(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (P,), components (K, P)) float32 on `device`; refused until a basis is set."""
        self._require_decoder("the pca target")
        if not self.has_pca_basis:
            raise PCABasisMissing(
                "this model predicts PCA coefficients (target 'pca') but has no PCA basis: fit "
                "one on training patches (targets.fit_pca_target(model, batches), or "
                "model.set_pca_basis(*targets.fit_pca_basis(patches, k))) before computing a "
                "loss or a reconstruction"
            )
        mean = self.target_pca_mean.to(device, torch.float32)
        return mean, self.target_pca_components.to(device, torch.float32)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._pca_ready = False  # a new basis (or none): look again when next needed
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only.

        With no masked patch (mask_ratio 0) the loss is 0 rather than 0/0.
        """
        per_patch = ((pred.float() - self.patch_targets(imgs).float()) ** 2).mean(dim=-1)  # (N, L)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mask_strategy: str | None = None,
    ) -> MAEOutput:
        """One MAE step. Same `noise` (N, L) or same generator state -> same mask and loss.

        `mask_ratio` and `mask_strategy` (`masking.MASK_STRATEGIES`) default to the config's.
        """
        self._require_decoder("forward")
        ratio = check_mask_ratio(self.config.mask_ratio if mask_ratio is None else mask_ratio)
        strategy = check_mask_strategy(
            self.config.mask_strategy if mask_strategy is None else mask_strategy
        )
        grid = self.check_images(imgs)
        latent, m = self.forward_encoder(
            imgs, ratio, noise=noise, generator=generator, mask_strategy=strategy
        )
        pred = self.forward_decoder(latent, m.ids_restore, grid)
        loss = self.forward_loss(imgs, pred, m.mask)
        return MAEOutput(loss, pred, m.mask, m.ids_restore)

    # -- features -------------------------------------------------------------------------
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> tokens (N, 1+L, D) after the final norm.

        No masking and no shuffling: token 1+i is patch i in row-major order, unlike the
        official code and transformers, which shuffle even at mask ratio 0.
        """
        x, pos, _grid = self._embed_patches(imgs)
        return self._encode(x, pos)

    def embed(self, imgs: torch.Tensor, pooling: Literal["cls", "mean"] = "cls") -> torch.Tensor:
        """imgs (N, C, H, W) -> (N, D): the class token, or the mean of the patch tokens."""
        tokens = self.forward_features(imgs)
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "mean":
            return tokens[:, 1:].mean(dim=1)
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")

    # -- weights --------------------------------------------------------------------------
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder alone, in timm ViT key names (no `mask_token`: timm would take it for
        a DINOv2 checkpoint; no `encoder_mask_token` or PCA basis: see `DECODER_PREFIXES`)."""
        return {k: v for k, v in self.state_dict().items() if not is_decoder_key(k)}

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        self._require_decoder("decoder_state_dict")
        return {k: v for k, v in self.state_dict().items() if is_decoder_key(k)}

    def num_params(self) -> dict[str, int]:
        enc = dec = 0
        for name, p in self.named_parameters():
            if is_decoder_key(name):
                dec += p.numel()
            else:
                enc += p.numel()
        return {"encoder": enc, "decoder": dec}

    def save_pretrained(self, directory: Any, encoder_only: bool = False, **kwargs: Any) -> Any:
        """Write the hub repo layout (see `mae_core.checkpoint.save_pretrained`)."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, encoder_only=encoder_only, **kwargs)

    def _require_decoder(self, what: str) -> None:
        if not self.has_decoder:
            raise DecoderMissing(
                f"{what} needs the MAE decoder, but this model has none (encoder-only weights "
                "or drop_decoder() was called); load a full checkpoint for reconstructions"
            )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"variant={c.variant}, img_size={c.img_size}, patch_size={c.patch_size}, "
            f"decoder={'yes' if self.has_decoder else 'no'}"
        )


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def create_model(name: str = "mae_vit_base_patch16", **overrides: Any) -> MaskedAutoencoder:
    """A randomly initialised MAE of a named variant, e.g. `create_model("mae_vit_tiny_patch8")`.

    Overrides are `MAEConfig` fields (`img_size=96`, `norm_pix_loss=False`, ...);
    `with_decoder=False` builds the encoder alone.
    """
    with_decoder = overrides.pop("with_decoder", True)
    return MaskedAutoencoder(variant_config(name, **overrides), with_decoder=with_decoder)
