"""The `mae` command. Thin: each subcommand parses its flags, calls one library function
and prints what it returns; the work (and its checks) is the library's.

Errors: a `mae_core.errors.MAEError` (bad input, a refused resume, a hub that says no) or an
`OSError` (a missing file, a full disk) prints as one line, `mae: error: ...`, exit status
2. Anything else is a bug and shows its traceback.

One concept, the command line, in one file: past 450 lines only because every flag's help
text is written here, beside the flag (train's flags come from `TrainConfig`'s fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MAEError


class CLIError(MAEError):
    """A bad combination of flags: printed as `mae: error: ...`, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# -- mae info ---------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, format_info

    d = describe(args.model, args.revision, hashes=not args.no_hash)
    print(json.dumps(d, indent=2) if args.json else format_info(d))
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


# -- mae train --------------------------------------------------------------------------
def add_settings_flags(
    parser: argparse.ArgumentParser, settings: type, skip: tuple[str, ...] = ()
) -> None:
    """One flag per field of the dataclass `settings` that carries help text: `--kebab-name`,
    typed by the field's annotation, `--name/--no-name` for booleans, the default shown.
    The parser must use `argument_default=argparse.SUPPRESS`, so that only the flags given
    reach the namespace (a resumed run takes the others from its checkpoint)."""
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        if "help" not in f.metadata or f.name in skip:
            continue
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        text = f.metadata["help"]
        if f.default not in (dataclasses.MISSING, None) and base is not bool:
            text += f" (default {f.default})"
        flag = "--" + f.name.replace("_", "-")
        if base is bool:
            on = "on" if f.default else "off"
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                help=f"{text} (default {on})",
            )
        else:
            meta = f.metadata.get("metavar")
            parser.add_argument(flag, dest=f.name, type=base, metavar=meta, help=text)


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from .config import TrainConfig, load_config_file
    from .train import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_config_file(args.config) if getattr(args, "config", None) else {}
    settings.update({k: v for k, v in vars(args).items() if k in TrainConfig.fields()})
    for key in ("data", "output"):
        if key not in settings:
            raise CLIError(f"train needs --{key} (on the command line or in --config)")
    final = train(settings)
    if final is not None:
        print(f"final model: {final}")
    return 0


def add_train(sub: Any) -> None:
    from .config import TrainConfig

    p = sub.add_parser(
        "train",
        help="pretrain an MAE on images (resumable, multi-GPU with torchrun)",
        description="Pretrain an MAE with the paper's recipe. SOURCE is a folder of images, a "
        ".tar/.tar.gz archive, shards, or cifar10[:train] / tinyimagenet[:train]. Settings not "
        "given come from --config, then the defaults; with --resume, from the checkpoint.",
        argument_default=argparse.SUPPRESS,
    )
    add_settings_flags(p, TrainConfig)
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of these settings")
    p.set_defaults(func=cmd_train)


# -- mae finetune -----------------------------------------------------------------------
def cmd_finetune(args: argparse.Namespace) -> int:
    import logging

    from .config import load_config_file
    from .finetune import FinetuneConfig, finetune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_config_file(args.config) if getattr(args, "config", None) else {}
    settings.update({k: v for k, v in vars(args).items() if k in FinetuneConfig.fields()})
    for key in ("data", "output"):
        if key not in settings:
            raise CLIError(f"finetune needs --{key} (on the command line or in --config)")
    final = finetune(settings)
    if final is not None:
        print(f"classifier: {final}")
    return 0


def add_finetune(sub: Any) -> None:
    from .finetune import FinetuneConfig

    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder into a classifier (the paper's recipe)",
        description="Fine-tune MODEL's encoder on labelled images with the paper's recipe "
        "(layer-wise lr decay, drop path, RandAugment, random erasing, Mixup/CutMix, label "
        "smoothing; timm's parts), scoring held-out images after each epoch. SOURCE: class "
        "folders, an archive of them, cifar10 or tinyimagenet. DIR/final/ is a timm classifier "
        "folder (timm.create_model('local-dir:DIR/final', pretrained=True)). --from-scratch "
        "trains the same network from random weights: the baseline. Resumable, torchrun-ready "
        "as mae train. See docs/finetune.md.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("model", metavar="MODEL", help="the pretrained encoder: any model id")
    add_settings_flags(p, FinetuneConfig, skip=("model",))
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of these settings")
    p.set_defaults(func=cmd_finetune)


# -- mae shard --------------------------------------------------------------------------
def cmd_shard(args: argparse.Namespace) -> int:
    import logging
    import shlex

    from .info import human
    from .shard import DEFAULT_MAX_BYTES, parse_size, write_shards

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        max_bytes = parse_size(args.max_size) if args.max_size else DEFAULT_MAX_BYTES
    except ValueError as e:
        raise CLIError(f"--max-size: {e}") from None
    s = write_shards(
        args.source,
        args.output_dir,
        prefix=args.prefix,
        max_images=args.max_images,
        max_bytes=max_bytes,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        limit=args.limit,
        overwrite=args.overwrite,
    )
    order = f"shuffled with seed {s.seed}" if s.shuffle else "in source order"
    print(
        f"wrote {s.images} images ({order}) into {len(s.shard_files)} "
        f"shard{'s' if len(s.shard_files) != 1 else ''}, "
        f"{human(s.total_bytes, 'B')}, in {s.output_dir}"
    )
    labels = f"{len(s.classes)} classes (names in dataset.json)" if s.classes else "no labels"
    print(f"  {labels}; {s.unreadable} unreadable files skipped")
    print(f"  train on them: mae train --data {shlex.quote(s.pattern)} --output DIR")
    return 0


def add_shard(sub: Any) -> None:
    p = sub.add_parser(
        "shard",
        help="write a data source as WebDataset shards (for shared storage, several nodes)",
        description="Write the images of SOURCE (a folder of images, a .tar/.tar.gz archive, "
        "cifar10[:train] / tinyimagenet[:train], or shards) into OUTPUT_DIR as uncompressed "
        "WebDataset shards PREFIX-000000.tar, ...: each image with its original bytes as "
        "KEY.jpg (or its own extension) plus its label as KEY.cls, and dataset.json with the "
        "class names and the pattern to give mae train --data. Same input, same bytes; the "
        "shards appear under their final names only once all of them are written.",
    )
    p.add_argument("source", metavar="SOURCE", help="the images to shard")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the shards")
    p.add_argument("--prefix", default="train", help="shard name prefix (default train)")
    p.add_argument(
        "--max-images",
        type=int,
        default=10_000,
        metavar="N",
        help="images per shard at most (default 10000)",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        help="bytes per shard at most, e.g. 500MB, 2GB, 1GiB (default 1GB)",
    )
    p.add_argument(
        "--no-shuffle",
        action="store_true",
        help="keep the source order (default: shuffle, so every shard mixes the classes)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    p.add_argument(
        "--limit", type=int, metavar="N", help="shard an evenly strided subset of N images"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace PREFIX-*.tar shards and dataset.json already in OUTPUT_DIR",
    )
    p.set_defaults(func=cmd_shard)


# -- mae eval ---------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import logging

    from .evaluate import evaluate_sources, format_table

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.method == "classifier":
        return _eval_classifier(args)
    if args.confusion:
        raise CLIError(
            "--confusion draws a classifier's confusion matrix: give --method classifier"
        )
    result = evaluate_sources(
        args.model,
        args.data,
        args.test_data,
        revision=args.revision,
        methods=("knn", "linear") if args.method == "all" else (args.method,),
        poolings=("cls", "mean") if args.pooling == "both" else (args.pooling,),
        limit=args.limit,
        baseline=not args.no_baseline,
        reconstruction=not args.no_reconstruction,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        seed=args.seed,
        backend=args.backend,
        precision=args.precision,
    )
    print(format_table(result))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _eval_classifier(args: argparse.Namespace) -> int:
    from .classify import evaluate_classifier, format_classifier, plot_confusion

    if args.backend != "torch":
        raise CLIError("--method classifier runs the classifier with torch: drop --backend")
    if args.precision == "bf16":
        raise CLIError(
            "--method classifier scores in fp32, as fine-tuning records its score: drop --precision"
        )
    result = evaluate_classifier(
        args.model,
        args.data,
        args.test_data,
        revision=args.revision,
        limit=args.limit,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
    )
    print(format_classifier(result))
    if args.output:  # before the picture: a missing matplotlib must not lose the scores
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    if args.confusion:
        print(f"wrote {plot_confusion(result, args.confusion)}")
    return 0


def add_eval(sub: Any) -> None:
    from .config import PRECISIONS, default_workers
    from .export import BACKENDS

    p = sub.add_parser(
        "eval",
        help="k-NN and linear-probe accuracy of a model's frozen features, beside random init; "
        "a fine-tuned classifier's accuracy",
        description="Evaluate frozen features by weighted k-NN (k=20, T=0.07) and a linear probe "
        "(BatchNorm without affine + linear), each beside the same architecture with random "
        "weights; and, when the model has its decoder, its reconstruction loss on the test "
        "images beside the random-init twin's (same masks). SOURCE is cifar10 or tinyimagenet "
        "(their held-out split is the test set), or a labelled folder/archive with --test-data. "
        "--method classifier scores a classifier of mae finetune instead (top-1, top-5, per "
        "class, --confusion PNG) on --test-data, the held-out split of a named SOURCE, or "
        "SOURCE itself.",
    )
    p.add_argument("model", metavar="MODEL", help="model id (folder, .pth, local:, hf-hub:)")
    p.add_argument("--data", required=True, metavar="SOURCE", help="labelled training images")
    p.add_argument("--test-data", metavar="SOURCE", help="labelled test images")
    p.add_argument(
        "--method",
        choices=("knn", "linear", "all", "classifier"),
        default="all",
        help="knn, linear, all (both: the default) for an encoder's frozen features; "
        "classifier for a fine-tuned classifier's own predictions",
    )
    p.add_argument(
        "--confusion",
        metavar="PNG",
        help="with --method classifier: draw the confusion matrix there (needs matplotlib)",
    )
    p.add_argument("--pooling", choices=("cls", "mean", "both"), default="cls")
    p.add_argument("--output", metavar="FILE", help="write the results as JSON")
    p.add_argument("--revision", help="branch or commit for local:/hf-hub: ids")
    p.add_argument(
        "--limit", type=_positive_int, help="an evenly strided subset of N images per split"
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init twin")
    p.add_argument(
        "--no-reconstruction",
        action="store_true",
        help="skip the reconstruction loss on the test images (reported when the model has "
        "its decoder)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=256, help="feature extraction batch")
    p.add_argument(
        "--num-workers",
        type=int,
        default=default_workers(),
        help="data loader processes (default: half the cores, 1 to 8)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: CUDA when present), cpu, cuda, cuda:N"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the baseline and the probe")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="who runs the encoder: torch (default; fused encoder layers on a CPU, as "
        "mae serve runs it), or its ONNX export by ONNX Runtime on the CPU, in fp32 or int8, "
        "as `mae serve --backend` does (needs the onnx extra); the reconstruction loss stays "
        "torch's",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the torch forward's precision: auto (bf16 autocast on CUDA, fp32 on a CPU), "
        "fp32, or bf16 (on a CPU too, with the fused encoder layers in bf16: on one with "
        "AVX512-BF16 or AMX about twice as fast, k-NN within 0.2 points on CIFAR-10, "
        "BENCHMARKS.md)",
    )
    p.set_defaults(func=cmd_eval)


# -- mae reconstruct --------------------------------------------------------------------
def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .visualize import reconstruct_file

    out, panels = reconstruct_file(
        args.model,
        args.image,
        args.output,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        revision=args.revision,
        device=args.device,
        mask_strategy=args.mask_strategy,
    )
    print(
        f"wrote {out}: loss {panels.loss:.4f} on {int(panels.mask.sum())} hidden patches "
        f"of {panels.mask.size}; {panels.caption}"
    )
    return 0


def add_reconstruct(sub: Any) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="hide patches of an image and write the model's reconstruction as a picture",
        description="Mask IMAGE (at random unless --mask-strategy says otherwise; "
        "reproducible with --seed), run the full MAE, and write one picture: original | "
        "masked | reconstruction | reconstruction with the visible patches pasted back.",
    )
    p.add_argument("image", metavar="IMAGE", help="a JPEG, PNG, WebP, ... file")
    p.add_argument("--model", required=True, help="a model id with its decoder")
    p.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="where to write the picture: .png, .jpg/.jpeg or .webp (the format follows the "
        "extension)",
    )
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=0, help="masking seed")
    p.add_argument(
        "--mask-strategy",
        metavar="S",
        help="which patches to hide: random, block (rectangles of patches), grid (one patch "
        "kept per 2x2 cell; --mask-ratio 0.75 only) or centre (a centred square); default: "
        "the model's own (random unless it was trained otherwise)",
    )
    p.add_argument("--revision", help="branch or commit for local:/hf-hub: ids")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=cmd_reconstruct)


def cmd_curve(args: argparse.Namespace) -> int:
    from .curve import plot_curve

    out = plot_curve(args.run, args.output or Path(args.run) / "curve.png")
    print(f"wrote {out}")
    return 0


def add_curve(sub: Any) -> None:
    p = sub.add_parser(
        "curve",
        help="plot a run's training curve (loss and learning rate) as a PNG",
        description="Read RUN/metrics.jsonl (written by mae train) and plot the loss and the "
        "learning rate against epochs. Needs matplotlib: pip install 'mae-hub[plot]'.",
    )
    p.add_argument("run", metavar="RUN", help="a run folder of mae train")
    p.add_argument("--output", metavar="PNG", help="where to write it (default RUN/curve.png)")
    p.set_defaults(func=cmd_curve)


# -- mae ablate ---------------------------------------------------------------------------
def cmd_ablate(args: argparse.Namespace) -> int:
    import logging

    from .ablate import format_summary, run_ablation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = run_ablation(
        args.spec, args.output, progress=lambda line: print(line, flush=True), dry_run=args.dry_run
    )
    if args.dry_run:
        return 0
    if result.stopped:
        print(f"stopped in run {result.stopped}, checkpointed: run the same command to go on")
        return 130
    print(format_summary(result))
    return 0


def add_ablate(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="run a sweep of training runs (one factor at a time), evaluate, tabulate, plot",
        description="Train one run per value of each setting SPEC varies (the others at its "
        "base), each an ordinary run folder DIR/runs/<name>; evaluate each (k-NN and/or linear "
        "probe top-1, reconstruction loss, images/s, wall time) and write DIR/results.json, "
        "DIR/results.md and a PNG per factor (needs matplotlib). Run it again to continue: "
        "finished runs are skipped, interrupted ones resumed, evaluations cached. See "
        "docs/ablations.md for the spec's format.",
    )
    p.add_argument("spec", metavar="SPEC", help="YAML or JSON file: name, base, vary, eval")
    p.add_argument("--output", required=True, metavar="DIR", help="folder of the sweep")
    p.add_argument(
        "--dry-run", action="store_true", help="check the spec and list the runs, train nothing"
    )
    p.set_defaults(func=cmd_ablate)


# -- mae export ---------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    result = export_model(
        args.model,
        args.output,
        quantize=args.quantize,
        revision=args.revision,
        images=args.check_images,
    )
    print(f"wrote {', '.join(result.files)} into {result.folder}")
    for check in result.checks:
        print(f"  checked against torch: {check.line()}")
    print(
        f"  serve it: mae serve {args.model} --backend onnxruntime (with the onnx/ folder beside its weights)"
    )
    return 0


def add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a model's encoder as ONNX (optionally int8), checked against torch",
        description="Write MODEL's encoder into OUTPUT/onnx/: model.onnx (input pixel_values "
        "(N, 3, S, S), normalised as the model's pretrained_cfg says; output "
        "last_hidden_state (N, 1+L, D) after the final norm; dynamic batch) and, with "
        "--quantize int8, model_quantized.onnx (ONNX Runtime's dynamic quantisation). Each "
        "file is run by ONNX Runtime at once and compared with torch on real photos; a "
        "mismatch is an error. Needs pip install 'mae-hub[onnx]'.",
    )
    p.add_argument("model", metavar="MODEL", help="model id (folder, .pth, local:, hf-hub:)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="only onnx so far")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write onnx/ into")
    p.add_argument("--quantize", choices=("int8",), help="also write a quantised copy")
    p.add_argument("--revision", help="branch or commit for local:/hf-hub: ids")
    p.add_argument(
        "--check-images",
        nargs="+",
        metavar="IMAGE",
        help="photos to compare on (default: the demo page's sample photos)",
    )
    p.set_defaults(func=cmd_export)


# -- mae push / mae pull -----------------------------------------------------------------
def cmd_push(args: argparse.Namespace) -> int:
    from .publish import push

    if args.endpoint and args.to_models_dir:
        raise CLIError("give --endpoint or --to-models-dir, not both")
    result = push(
        args.model_dir,
        args.repo_id,
        endpoint=args.endpoint,
        revision=args.revision,
        private=args.private,
        encoder_only=args.encoder_only,
        message=args.message,
        token=args.token,
        to_models_dir=args.to_models_dir,
        license=args.license,
        eval_file=args.eval,
        card_image=args.card_image,
        with_onnx=args.with_onnx,
    )
    print(
        f"pushed {len(result.files)} files to {result.repo_id}@{result.revision}: commit {result.commit}"
    )
    print(f"  {result.url}")
    print(f"  files: {', '.join(result.files)}")
    if args.to_models_dir:
        print(
            f"  load: mae_core.load_model('local:{result.repo_id}@{result.commit[:12]}') with MAE_MODELS_DIR={args.to_models_dir}"
        )
    else:
        print(
            f"  load: timm.create_model('hf-hub:{result.repo_id}', pretrained=True)  (HF_ENDPOINT={args.endpoint or 'default'})"
        )
    return 0


def add_push(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="publish a model folder to a Hugging Face-compatible hub, with a model card",
        description="Upload MODEL_DIR (a save_pretrained folder, e.g. a run's final/, or any model "
        "mae can load) to REPO_ID as one commit, with a generated model card (README.md): "
        "training recipe, evaluation beside the random-init baseline (eval.json in the folder "
        "or its parent, or --eval), a reconstruction picture, and how to load it. A classifier "
        "of mae finetune (DIR/final) is pushed as timm's folder with an image-classification "
        "card and, from mae eval --method classifier --output, its accuracy and confusion "
        "matrix. The token comes from HF_TOKEN or --token and is never printed.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("repo_id", metavar="REPO_ID", help="<namespace>/<name>")
    p.add_argument("--endpoint", help="hub URL, e.g. http://127.0.0.1:8000 (default HF_ENDPOINT)")
    p.add_argument(
        "--to-models-dir", metavar="DIR", help="write the commit straight into a models folder"
    )
    p.add_argument(
        "--revision", help="branch to commit to (default main; created from main if new)"
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--encoder-only", action="store_true", help="leave the decoder out")
    p.add_argument("--message", help="commit message")
    p.add_argument("--token", help="hub token (default HF_TOKEN)")
    p.add_argument(
        "--license", default="apache-2.0", help="licence in the card (default apache-2.0)"
    )
    p.add_argument(
        "--eval",
        metavar="FILE",
        action="append",
        help="mae eval --output JSON to cite in the card (repeat for several datasets)",
    )
    p.add_argument("--card-image", metavar="IMAGE", help="reconstruct this image for the card")
    p.add_argument(
        "--with-onnx",
        action="store_true",
        help="also export the encoder as ONNX (fp32 and int8, checked against torch) into the "
        "repo's onnx/ folder: mae serve --backend onnxruntime then uses it as is",
    )
    p.set_defaults(func=cmd_push)


def cmd_pull(args: argparse.Namespace) -> int:
    from .hub import parse_model_id
    from .pull import pull

    mid = parse_model_id("hf-hub:" + args.repo_id.removeprefix("hf-hub:"))
    folder = pull(
        mid.name, mid.revision, local_dir=args.local_dir, endpoint=args.endpoint, token=args.token
    )
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    print(f"{mid}: {len(files)} files verified in {folder}")
    print(f"  files: {', '.join(files)}")
    return 0


def add_pull(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="download a model repo, pinned to a revision, every file verified",
        description="Download REPO_ID[@REVISION] (branch or commit sha) with huggingface_hub into "
        "its cache (or --local-dir) and check every file's size and sha256 / git hash against "
        "the hub's record; a mismatch deletes the file and fails. HF_HUB_OFFLINE=1 serves the "
        "cache only.",
    )
    p.add_argument("repo_id", metavar="REPO_ID[@REVISION]")
    p.add_argument("--local-dir", metavar="DIR", help="download into DIR instead of the cache")
    p.add_argument("--endpoint", help="hub URL (default HF_ENDPOINT)")
    p.add_argument("--token", help="hub token (default HF_TOKEN)")
    p.set_defaults(func=cmd_pull)


# -- mae serve ---------------------------------------------------------------------------
def _serve_env(args: argparse.Namespace) -> dict[str, str]:
    """The MAE_* variables the flags stand for (flags override the environment)."""
    env: dict[str, str] = {}
    models = [*([args.model] if args.model else []), *(args.models or [])]
    if models:
        env["MAE_MODEL"] = ",".join(models)
    for flag, var in (
        ("host", "HOST"),
        ("port", "PORT"),
        ("device", "DEVICE"),
        ("dtype", "DTYPE"),
        ("models_dir", "MODELS_DIR"),
        ("backend", "BACKEND"),
    ):
        value = getattr(args, flag)
        if value is not None and value != "":
            env[f"MAE_{var}"] = str(value)
    if args.hub_only:
        env["MAE_HUB_ONLY"] = "true"
    if args.no_reconstruction:
        env["MAE_RECONSTRUCTION"] = "false"
    return env


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.server import serve
    from service.settings import Settings, settings_error_message

    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    os.environ.update(_serve_env(args))  # worker processes (--workers) read them too
    try:
        settings = Settings()
    except ValidationError as e:
        raise CLIError(f"bad setting: {settings_error_message(e)}") from None
    serve(settings, workers=args.workers, log_level=args.log_level)
    return 0


def add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP service: embeddings, reconstructions, demo page, hub",
        description="Serve MODEL: batched embeddings (/v1/embeddings), masked reconstructions "
        "(/v1/reconstructions), the demo page (/), /v1/models, /health, /ready, /metrics, and "
        "the embedded hub (MAE_MODELS_DIR) over the Hugging Face Hub protocol. Every setting "
        "is also an MAE_* variable (see docs/service.md); flags override them.",
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="model id: local:<ns>/<name>[@rev], hf-hub:<ns>/<name>, a folder or a .pth file",
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="ID",
        help="another model to serve (repeatable; the first served is the default)",
    )
    p.add_argument(
        "--host", help="address to bind (default MAE_HOST, else 127.0.0.1; 0.0.0.0: every one)"
    )
    p.add_argument("--port", type=int, help="port to listen on (default MAE_PORT, else 8000)")
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", help="auto (default), float32, bfloat16, float16")
    p.add_argument(
        "--backend",
        help="torch (default), onnxruntime or onnxruntime-int8 (CPU; needs mae-hub[onnx])",
    )
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own model")
    p.add_argument(
        "--no-reconstruction",
        action="store_true",
        help="load the encoder only (no decoder, no /v1/reconstructions)",
    )
    p.add_argument("--hub-only", action="store_true", help="serve the hub, load no model")
    p.add_argument("--models-dir", metavar="DIR", help="the hub's folder (default MAE_MODELS_DIR)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)


# -- the parser -------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[Any], None]] = [
    add_info,
    add_train,
    add_finetune,
    add_shard,
    add_eval,
    add_reconstruct,
    add_curve,
    add_ablate,
    add_export,
    add_push,
    add_pull,
    add_serve,
]


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
    try:
        return int(args.func(args) or 0)
    except (MAEError, OSError) as e:
        print(f"mae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
