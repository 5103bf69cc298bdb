"""Fine-tuning step throughput: `mae finetune`'s step against the same network trained as
the official MAE repo's main_finetune.py trains it, and transformers' ViTForImageClassification.

One step is one AdamW update of a classifier on one batch: the forward, Mixup/CutMix's
soft-target cross-entropy, the backward, the gradient's norm and the update, and the loss
read back as a number (what `mae finetune`'s loop, the official repo's and transformers'
Trainer each do every step). All three run in one process, one step of each in turn
(`features.timed`, so none gains from its place in the order), on the same batch, mixed
once (Mixup's draw is the same for all), in the same precision (`--dtype`: by default bf16
autocast on CUDA, fp32 on a CPU, as `mae finetune --precision auto`; the official repo ran
fp16 autocast with a GradScaler on its GPUs, which this bench does not copy).

- `mae_core`: the classifier `mae finetune` builds (`finetune.build_classifier`, a timm
  `VisionTransformer` with global pooling, `fc_norm` and drop path; the encoder's weights
  loaded), layer-wise lr decay groups, the AdamW `mae finetune` picks for the device
  (`schedule.adamw_options`: fused on a CPU), and in fp32 on a CPU oneDNN's linears
  (`mae_core.onednn`, `--onednn-linears`).
- `timm, as main_finetune.py`: a copy of the same classifier and groups, torch's default
  AdamW and torch's own linears: the model and optimiser of the official repo's loop.
- `transformers ViTForImageClassification`: the same sizes (hidden size, depth, heads,
  MLP, patch, image), class-token pooling as transformers does it, random weights (the
  speed does not depend on them), its dropout off; no drop path (transformers' ViT has
  none), so it does a little less work; AdamW as the timm peer.

    .venv/bin/python bench/finetune.py
    .venv/bin/python bench/finetune.py --model local:mae/vit-tiny-tinyimagenet --batch 64 --dtype bf16
    .venv/bin/python bench/finetune.py --variant mae_vit_base_patch16 --batch 128 --device cuda

Prints a Markdown table; the last columns are each peer's time over ours (above 1: we are
faster).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch

# bench/ is on sys.path when a script here runs: share the timer and the peer's sizes
from features import hf_encoder_fields, timed

import mae_core
from mae_core.config import PRECISIONS
from mae_core.distributed import uses_bf16
from mae_core.finetune import build_classifier, encoder_into_classifier
from mae_core.onednn import onednn_linears, why_not
from mae_core.schedule import adamw_options, param_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model",
        help="the pretrained encoder to start from (any id load_model takes); default: a "
        "random init of --variant",
    )
    ap.add_argument("--variant", default="mae_vit_tiny_patch8", help="without --model")
    ap.add_argument("--classes", type=int, default=10, help="classes of the head")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--drop-path", type=float, default=0.1, help="mae finetune's default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype",
        choices=PRECISIONS,
        default="auto",
        help="precision of all: auto (bf16 autocast on CUDA, fp32 on a CPU), fp32 or bf16",
    )
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    dev = torch.device(args.device)
    bf16 = uses_bf16(args.dtype, dev)  # as `mae finetune --precision` decides
    dtype = torch.bfloat16 if bf16 else torch.float32

    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import param_groups_layer_decay
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if args.model:
        encoder = mae_core.load_model(args.model, with_decoder=False)
    else:
        encoder = mae_core.create_model(args.variant)
    cfg = encoder.config
    ours = build_classifier(cfg, args.classes, args.drop_path)
    encoder_into_classifier(ours, encoder.encoder_state_dict())
    peer = copy.deepcopy(ours)
    hf = ViTForImageClassification(
        ViTConfig(
            **hf_encoder_fields(cfg),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=args.classes,
        )
    )
    for m in (ours, peer, hf):
        m.to(dev).train()

    # one batch, mixed once: every implementation learns from the same soft targets
    x = torch.randn(args.batch, 3, cfg.img_size, cfg.img_size, device=dev)
    y = torch.randint(0, args.classes, (args.batch,), device=dev)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=args.classes)
    x, y = mixup(x, y)
    criterion = SoftTargetCrossEntropy()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    onednn = why_not(dev, dtype) is None

    def groups(model: torch.nn.Module) -> list[dict]:  # mae finetune's: layer-wise lr decay
        return param_groups_layer_decay(
            model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.75
        )

    def stepper(
        model: torch.nn.Module,
        logits: Callable[[], torch.Tensor],
        opt: torch.optim.Optimizer,
        linears: bool = False,
    ) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast, onednn_linears(linears):
                loss = criterion(logits().float(), y)  # the loss in fp32, as mae finetune
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # logged by all
            opt.step()
            loss.item()

        return step

    steps = {
        "mae_core (mae finetune's step)": stepper(
            ours,
            lambda: ours(x),
            torch.optim.AdamW(groups(ours), lr=1e-4, **adamw_options(dev)),
            onednn,
        ),
        "timm, as main_finetune.py": stepper(
            peer, lambda: peer(x), torch.optim.AdamW(groups(peer), lr=1e-4)
        ),
        "transformers ViTForImageClassification": stepper(
            hf,
            lambda: hf(pixel_values=x).logits,
            torch.optim.AdamW(param_groups(hf, 0.05), lr=1e-4),
        ),
    }
    t = timed(steps, args.steps, args.warmup, dev.type)
    names = list(steps)
    t_ours = t[names[0]]

    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    adamw = "fused" if adamw_options(dev).get("fused") else "torch's default"
    head = (
        f"{args.model or args.variant} classifier, {cfg.img_size} px, {args.classes} classes, "
        f"batch {args.batch}, drop path {args.drop_path} (not transformers'), {name}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, torch {torch.__version__}; ours: AdamW "
        f"{adamw}{', oneDNN linears' if onednn else ''}; the peers: torch's default AdamW "
        f"and linears; median of {args.steps} interleaved steps after {args.warmup} warm-up"
    )
    print(head)
    print("| implementation | img/s | its time / ours |")
    print("| --- | ---: | ---: |")
    for label in names:
        print(f"| {label} | {args.batch / t[label]:.0f} | {t[label] / t_ours:.2f} |")
    if args.json:
        out = {
            "setup": head,
            "args": vars(args),
            "img_s": {label: args.batch / t[label] for label in names},
            "over_ours": {label: t[label] / t_ours for label in names[1:]},
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
