"""The model card (`README.md`) written by `mae push`: a YAML header the Hub reads, then
what the model is, how it was trained, what its features are worth, and how to load it."""

from __future__ import annotations

from typing import Any

import yaml

from .config import VARIANTS

PAPER = "He et al., 2021, *Masked Autoencoders Are Scalable Vision Learners* (arXiv:2111.06377)"
DATASET_IDS = {"cifar10": "cifar10", "tinyimagenet": "tiny-imagenet-200"}
DATASET_NOTES = {
    "cifar10": "CIFAR-10 (Krizhevsky, 2009, *Learning Multiple Layers of Features from Tiny "
    "Images*): 60,000 32x32 images in 10 classes.",
    "tinyimagenet": "Tiny-ImageNet-200 (Stanford CS231n): 110,000 64x64 images in 200 classes, "
    "a subset of ImageNet. The images are ImageNet's and its terms apply to them: "
    "non-commercial research and education. Check that your use of weights trained on "
    "them fits those terms.",
}


CITATION = [
    "## Citation",
    "",
    "```bibtex",
    "@inproceedings{he2022masked,",
    "  title={Masked Autoencoders Are Scalable Vision Learners},",
    "  author={He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},",
    "  booktitle={CVPR},",
    "  year={2022}",
    "}",
    "```",
    "",
]


def _top(header: dict[str, Any], repo_id: str) -> list[str]:
    """A card's first lines: the YAML header the Hub reads, then the repo's name as title."""
    return ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {repo_id}", ""]


def _dataset_name(source: str) -> str:
    return source.partition(":")[0].partition("[")[0]


def _dataset(source: str) -> str | None:
    return DATASET_IDS.get(_dataset_name(source))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def eval_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Frozen features, {result.get('train_size')} train / {result.get('test_size')} test images "
        f"({result.get('train_data', '?')} -> {result.get('test_data', '?')}), "
        f"{result.get('num_classes')} classes. Accuracies in %; the random-init column is the same "
        "architecture with random weights, so the gain is what pretraining bought.",
        "",
        "| method | pooling | top-1 | top-5 | random-init top-1 | gain (points) |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in result.get("results", []):
        name = (
            f"k-NN (k={r.get('k')}, T={r.get('temperature')})"
            if r["method"] == "knn"
            else "linear probe"
        )
        base = r.get("baseline_top1")
        gain = "-" if base is None else f"{r['top1'] - base:+.2f}"
        lines.append(
            f"| {name} | {r['pooling']} | {_fmt(r['top1'])} | {_fmt(r.get('top5'))} | {_fmt(base)} | {gain} |"
        )
    rec = result.get("reconstruction")
    if rec:
        base = rec.get("baseline_loss")
        lines += [
            "",
            f"Reconstruction loss (the training loss: MSE on the masked patches) on the "
            f"{rec.get('images')} test images at mask ratio {rec.get('mask_ratio')}: "
            f"{_loss(rec.get('loss'))}"
            + ("" if base is None else f"; the random-init twin's, same masks: {_loss(base)}")
            + ".",
        ]
    return lines


def _target(c: dict[str, Any]) -> str:
    """The reconstruction target of a mae_config.json (older ones hold norm_pix_loss only)."""
    return str(c.get("target") or ("norm_pix" if c.get("norm_pix_loss", True) else "pixel"))


def _target_phrase(c: dict[str, Any]) -> str:
    target = _target(c)
    if target == "pca":
        return (
            f" as their coefficients on a {c.get('pca_components')}-component PCA basis of "
            "training patches."
        )
    return " from per-patch-normalised pixels." if target == "norm_pix" else " (raw-pixel targets)."


def recipe_choices(c: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """How this model's training departs from the paper's defaults, as its Table 1 names
    them (mask sampling, target, mask tokens, decoder, augmentation): [] for none."""
    out = []
    if c.get("mask_strategy", "random") != "random":
        out.append(f"{c['mask_strategy']} mask sampling (paper's default: random)")
    target = _target(c)
    if target != "norm_pix":
        what = (
            f"PCA coefficients ({c.get('pca_components')} components)"
            if target == "pca"
            else "raw pixels of the normalised image"
        )
        out.append(f"target: {what} (paper's best: per-patch-normalised pixels)")
    if c.get("encoder_mask_tokens"):
        out.append("mask tokens in the encoder (paper's default: decoder only)")
    base = VARIANTS.get(str(c.get("variant")))
    dec = ("decoder_depth", "decoder_embed_dim", "decoder_num_heads")
    if base is not None and any(c.get(k) != getattr(base, k) for k in dec):
        out.append(
            f"decoder: {c.get('decoder_depth')} blocks, {c.get('decoder_embed_dim')}-d, "
            f"{c.get('decoder_num_heads')} heads (the variant's: {base.decoder_depth} blocks, "
            f"{base.decoder_embed_dim}-d, {base.decoder_num_heads} heads)"
        )
    augment = training.get("augment", "crop-rand")
    if augment != "crop-rand":
        out.append(
            f"augmentation: {augment} (paper's default: crop-rand, random resized crop + flip)"
        )
    return out


def render_card(
    repo_id: str,
    mae_config: dict[str, Any],
    params: dict[str, int],
    *,
    encoder_only: bool,
    license: str = "apache-2.0",
    eval_result: dict[str, Any] | list[dict[str, Any]] | None = None,
    picture: str | None = None,
    picture_caption: str = "",
    onnx: dict[str, Any] | None = None,
) -> str:
    """Markdown with a YAML header: library_name timm, tags, license, datasets, pipeline tag."""
    training = mae_config.get("training") or {}
    data = training.get("data") or {}
    dataset = _dataset(str(data.get("source", "")))
    header: dict[str, Any] = {
        "library_name": "timm",
        "license": license,
        "tags": [
            "mae",
            "masked-autoencoder",
            "image-feature-extraction",
            "vision-transformer",
            "mae-hub",
        ],
        "pipeline_tag": "image-feature-extraction",
    }
    if dataset:
        header["datasets"] = [dataset]
    c = mae_config
    size = f"{c['img_size']}x{c['img_size']} px, patch {c['patch_size']}"
    enc = f"{c['embed_dim']}-d, {c['depth']} blocks, {c['num_heads']} heads"
    lines = [
        *_top(header, repo_id),
        f"A Masked Autoencoder ({PAPER}) `{c.get('variant') or 'custom'}`: a ViT encoder ({enc}, "
        f"{params.get('encoder', 0) / 1e6:.1f}M parameters) at {size}, pretrained by hiding "
        f"{round(100 * c.get('mask_ratio', 0.75))}% of the patches"
        + (
            ""
            if c.get("mask_strategy", "random") == "random"
            else f" ({c['mask_strategy']} masking)"
        )
        + " and reconstructing them"
        + _target_phrase(c),
        "",
        "`model.safetensors` holds the encoder in timm's ViT key names (load it with timm as is); "
        + (
            "this repo has no decoder (encoder-only): it gives embeddings, not reconstructions."
            if encoder_only
            else f"`decoder.safetensors` holds the MAE decoder ({c['decoder_embed_dim']}-d, "
            f"{c['decoder_depth']} blocks, {params.get('decoder', 0) / 1e6:.1f}M parameters) for "
            "reconstructions; `mae_config.json` holds the MAE settings and the training summary."
        ),
        "",
        "## Use",
        "",
        "```python",
        "import timm  # >= 1.0.16; HF_ENDPOINT may point at a self-hosted mae-hub",
        f'encoder = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
        "cfg = timm.data.resolve_data_config({}, model=encoder)",
        "transform = timm.data.create_transform(**cfg)",
        "tokens = encoder.forward_features(transform(image).unsqueeze(0))  # (1, 1 + patches, D)",
        "```",
        "",
        "```python",
        "import mae_core",
        f'model = mae_core.load_model("hf-hub:{repo_id}")  # pin with "@<commit sha>"',
        'embedding = model.embed(images, pooling="cls")  # (N, D)',
        "```",
        "",
        f"Served by mae-hub: `mae serve hf-hub:{repo_id}`, then `POST /v1/embeddings`.",
        "",
    ]
    if onnx:
        checks = "; ".join(
            f"`{c['file']}`: max abs difference {c['max_abs']:.1e}, cosine {c['min_cosine']:.5f}"
            for c in onnx.get("checks", [])
        )
        lines += [
            "## ONNX",
            "",
            "`onnx/model.onnx` (and `onnx/model_quantized.onnx`, int8 dynamic quantisation) hold "
            "the encoder for ONNX Runtime: input `pixel_values` (N, 3, S, S), preprocessed as "
            "above; output `last_hidden_state` (N, 1+L, D) after the final norm. Checked "
            f"against torch when exported: {checks}.",
            "",
            f"Served with ONNX Runtime: `mae serve hf-hub:{repo_id} --backend onnxruntime`.",
            "",
        ]
    if training:
        lines += [
            "## Training",
            "",
            "| setting | value |",
            "|---|---|",
            f"| data | {data.get('source', '?')} ({data.get('images', '?')} images) |",
            f"| steps / epochs | {training.get('steps')} / {training.get('epochs')} "
            f"(schedule {training.get('schedule_epochs')} epochs"
            + ("" if training.get("schedule_complete", True) else ", stopped early")
            + ") |",
            f"| effective batch | {training.get('effective_batch')} |",
            f"| optimiser | AdamW (0.9, 0.95), base lr {training.get('blr')} (lr {training.get('lr')}), "
            f"weight decay {training.get('weight_decay')}, warmup {training.get('warmup_epochs')} epochs, cosine |",
            f"| mask ratio | {training.get('mask_ratio')} |",
            *(
                [f"| differs from the paper's defaults (Table 1) | {'; '.join(choices)} |"]
                if (choices := recipe_choices(c, training))
                else []
            ),
            f"| final loss | {_loss(training.get('final_loss'))} |",
            f"| device | {training.get('device')} x {training.get('world_size', 1)} |",
            f"| versions | {', '.join(f'{k} {v}' for k, v in (training.get('versions') or {}).items())} |",
            "",
        ]
        note = DATASET_NOTES.get(_dataset_name(str(data.get("source", ""))))
        lines += [
            "## Data and licence",
            "",
            *([note, ""] if note else []),
            f"The weights are released under {license}"
            + (
                "; the data's own terms, above, still apply to what was learned from it."
                if note
                else "."
            ),
            "",
        ]
    if eval_result:
        lines += ["## Evaluation", ""]
        for result in eval_result if isinstance(eval_result, list) else [eval_result]:
            lines += [*eval_table(result), ""]
    if picture:
        lines += ["## Reconstructions", "", f"![reconstruction]({picture})", ""]
        if picture_caption:
            lines += [picture_caption, ""]
    lines += CITATION
    return "\n".join(lines)


_RECIPE_ROWS = (
    ("epochs", "epochs"),
    ("blr", "base lr (x batch / 256)"),
    ("min_lr", "min lr"),
    ("warmup_epochs", "warmup epochs"),
    ("weight_decay", "weight decay"),
    ("layer_decay", "layer-wise lr decay"),
    ("drop_path", "drop path"),
    ("smoothing", "label smoothing"),
    ("mixup", "Mixup alpha"),
    ("cutmix", "CutMix alpha"),
    ("auto_augment", "RandAugment"),
    ("reprob", "random erasing"),
    ("seed", "seed"),
)


def _shown(source: str) -> str:
    """A data source as a card shows it: a named one as given, a folder by its name."""
    if _dataset(source.partition(":")[0].partition("[")[0]):
        return source
    return _index_dataset(source)["name"] + source.partition("[")[1] + source.partition("[")[2]


def _index_dataset(source: str) -> dict[str, str]:
    """The `dataset` of a model-index result for the images a score is on: a named source
    by its Hub id and split (`cifar10:test[:200]` -> cifar10, test), a folder by its own
    name only (no path of this machine goes into a card)."""
    name, _, split = source.partition("[")[0].partition(":")
    known = _dataset(name)
    if known:
        return {"name": name, "type": known, "split": split or "train"}
    return {"name": name.rstrip("/").rpartition("/")[2] or name, "type": "imagefolder"}


def render_classifier_card(
    repo_id: str,
    config: dict[str, Any],
    params: dict[str, int],
    *,
    license: str = "apache-2.0",
    eval_result: dict[str, Any] | None = None,
    picture: str | None = None,
) -> str:
    """The card of a fine-tuned classifier (`mae finetune`'s `config.json`): what it was
    fine-tuned from (id, commit, encoder sha256), the recipe, its accuracy (held-out during
    fine-tuning, and `mae eval --method classifier` when given), the labels, how to use it
    with timm. The YAML header has pipeline_tag image-classification and a model-index."""
    ft = config.get("mae_finetune") or {}
    data = ft.get("data") or {}
    dataset = _dataset(str(data.get("source", "")))
    labels = list(config.get("label_names") or [])
    origin = ft.get("from") or {}
    header: dict[str, Any] = {
        "library_name": "timm",
        "license": license,
        "tags": ["image-classification", "timm", "mae", "vision-transformer", "mae-hub"],
        "pipeline_tag": "image-classification",
    }
    if dataset:
        header["datasets"] = [dataset]
    model_from = str(origin.get("model") or "")
    if model_from.startswith("hf-hub:"):
        header["base_model"] = model_from.removeprefix("hf-hub:").partition("@")[0]
    # (where, images, top-1 %, top-5 %, source, whether it may stand in the model-index:
    # held out and every class scored)
    scores: list[tuple[str, Any, float, float | None, str, bool]] = []
    if eval_result:
        source = str(eval_result.get("test_data"))
        classes = len(eval_result.get("per_class") or []) or eval_result.get("num_classes")
        trained = bool(eval_result.get("on_training_data"))
        where = _shown(source) + (" (the fine-tuning data, not held out)" if trained else "")
        if classes != config.get("num_classes"):
            where += f" ({classes} of the {config.get('num_classes')} classes)"
        full = not trained and classes == config.get("num_classes")
        top5 = eval_result.get("top5")
        scores.append(
            (where, eval_result.get("test_size"), eval_result["top1"], top5, source, full)
        )
    acc = ft.get("accuracy")
    if acc:
        source = str(ft.get("val_data"))
        where = f"{_shown(source)} (held out, scored at the end of fine-tuning)"
        top5 = None if acc.get("top5") is None else 100 * acc["top5"]
        scores.append((where, acc.get("images"), 100 * acc["top1"], top5, source, True))
    indexed = next((s for s in scores if s[5]), None)
    if indexed is not None:
        _, _, top1, top5, source, _ = indexed
        metrics = [{"type": "accuracy", "name": "top-1", "value": round(top1, 2)}]
        if top5 is not None:
            metrics.append({"type": "accuracy", "name": "top-5", "value": round(top5, 2)})
        header["model-index"] = [
            {
                "name": repo_id,
                "results": [
                    {
                        "task": {"type": "image-classification"},
                        "dataset": _index_dataset(source),
                        "metrics": metrics,
                    }
                ],
            }
        ]
    args = config.get("model_args", {})
    size = f"{args.get('img_size')}x{args.get('img_size')} px, patch {args.get('patch_size')}"
    enc = f"{args.get('embed_dim')}-d, {args.get('depth')} blocks, {args.get('num_heads')} heads"
    if ft.get("from_scratch"):
        came = (
            "trained from random initialisation with the same recipe (`mae finetune "
            "--from-scratch`): the baseline an MAE-pretrained encoder is measured against"
        )
    else:
        rev = origin.get("revision")
        came = f"fine-tuned from the MAE encoder `{model_from or '?'}`" + (
            f" at commit `{rev}`" if rev else ""
        )
        if origin.get("encoder_sha256"):
            came += f" (its `model.safetensors`: sha256 `{origin['encoder_sha256']}`)"
        came += f", pretrained as in {PAPER}"
    shown = ", ".join(labels[:20]) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
    lines = [
        *_top(header, repo_id),
        f"A ViT image classifier ({enc}, {size}; {params.get('total', 0) / 1e6:.1f}M "
        f"parameters) for {config.get('num_classes')} classes, {came}. Global average pooling "
        "of the patch tokens, `fc_norm`, then a linear head, as the paper fine-tunes.",
        "",
        f"Labels (`label_names` in `config.json`, in output order): {shown}.",
        "",
        "## Use",
        "",
        "```python",
        "import timm, torch  # timm >= 1.0.16; HF_ENDPOINT may point at a self-hosted mae-hub",
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        "with torch.no_grad():",
        "    probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]",
        'labels = model.pretrained_cfg["label_names"]',
        "print(labels[int(probs.argmax())], float(probs.max()))",
        "```",
        "",
        f"Score it on your labelled images: `mae eval hf-hub:{repo_id} --data SOURCE --method "
        "classifier --confusion confusion.png`.",
        "",
    ]
    if scores:
        lines += [
            "## Accuracy",
            "",
            "| images | count | top-1 (%) | top-5 (%) |",
            "|---|--:|--:|--:|",
        ]
        for where, n, top1, top5, _, _ in scores:
            lines.append(f"| {where} | {n} | {_fmt(top1)} | {_fmt(top5)} |")
        lines.append("")
    if picture:
        lines += [
            "## Confusion matrix",
            "",
            f"![confusion matrix]({picture})",
            "",
            "Rows are the true classes, columns the predictions, each row in % of its class.",
            "",
        ]
    recipe = ft.get("recipe") or {}
    lines += [
        "## Fine-tuning",
        "",
        "The paper's recipe (its Table 9) with timm's parts: AdamW, warmup then cosine, "
        "layer-wise lr decay, drop path, RandAugment, random erasing, Mixup/CutMix with label "
        "smoothing.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| data | {_shown(str(data.get('source', '?')))} ({data.get('images', '?')} images) |",
        f"| steps / epochs | {ft.get('steps')} / {ft.get('epochs')}"
        + ("" if ft.get("schedule_complete", True) else " (stopped before the schedule's end)")
        + " |",
        f"| effective batch / lr | {ft.get('effective_batch')} / {ft.get('lr')} |",
        *(f"| {name} | {recipe[key]} |" for key, name in _RECIPE_ROWS if key in recipe),
        f"| final training loss | {_loss(ft.get('final_loss'))} |",
        "",
    ]
    note = DATASET_NOTES.get(_dataset_name(str(data.get("source", ""))))
    if note:
        lines += ["## Data and licence", "", note, ""]
    lines += CITATION
    return "\n".join(lines)


def front_matter(text: str) -> dict[str, Any]:
    """The YAML header of a card (`---` ... `---` at the top), {} when there is none;
    ValueError, saying what is wrong, when it is not closed, not YAML or not a mapping."""
    if not text.startswith("---"):
        return {}
    header, sep, _ = text[3:].partition("\n---")
    if not sep:
        raise ValueError("the YAML header opened with '---' is never closed")
    try:
        meta = yaml.safe_load(header)
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML header: {e}") from None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError("the YAML header must be a mapping")
    return meta
