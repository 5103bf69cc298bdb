"""Publishing a model: stage its repo (weights in our layout, the model card, evaluation,
a reconstruction picture; for a fine-tuned classifier its timm folder, card and confusion
matrix) and push it as one commit to a Hugging Face-compatible hub, or
straight into a models folder (the embedded hub)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MAEError, MAEValueError, MissingDependency
from .hub import load_model
from .pull import transport_errors

log = logging.getLogger("mae_core.publish")


class PushError(MAEError, RuntimeError):
    """The hub refused the push or could not be reached."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit: str
    url: str
    files: tuple[str, ...]


def stage_repo(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    dest: Path,
    *,
    encoder_only: bool = False,
    license: str = "apache-2.0",
    eval_file: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
    card_image: str | os.PathLike[str] | None = None,
    with_onnx: bool = False,
) -> list[str]:
    """Write into `dest` what `push` uploads: the weights in our layout (copied byte for
    byte when `model_dir` is already in it, else converted), `README.md` (the model card),
    `eval_results.json` and `reconstruction.png` when available, and with `with_onnx`
    `onnx/` (`export_onnx`: fp32 and int8, checked on the sample photos). Returns the file
    paths, relative to `dest`.

    The evaluation comes from `eval_file` (one file or a list: several evaluations, e.g.
    one per dataset, kept as a JSON list), else `eval.json` in the model folder or its
    parent (a training run's folder). The picture: reconstructions of `card_image` by this
    model, else the newest panel of the run's `panels/`."""
    import json
    import shutil

    from .checkpoint import CONFIG_FILE, DECODER_FILE, ENCODER_FILE, MAE_CONFIG_FILE
    from .model_card import render_card

    src = Path(model_dir)
    dest.mkdir(parents=True, exist_ok=True)
    from .finetune import is_classifier_dir

    if src.is_dir() and is_classifier_dir(src):
        if encoder_only or card_image is not None or with_onnx:
            given = [
                flag
                for flag, on in (
                    ("--encoder-only", encoder_only),
                    ("--card-image", card_image is not None),
                    ("--with-onnx", with_onnx),
                )
                if on
            ]
            raise MAEValueError(
                f"{src} is a fine-tuned classifier: {', '.join(given)} apply to an MAE; push "
                "the classifier without them (its card shows the confusion matrix of --eval)"
            )
        return _stage_classifier(src, repo_id, dest, license=license, eval_file=eval_file)
    model = load_model(src, with_decoder=False if encoder_only else None)
    ours = src.is_dir() and (src / MAE_CONFIG_FILE).is_file() and (src / ENCODER_FILE).is_file()
    if ours:  # byte for byte: the pushed weights hash the same as the local ones
        for name in (CONFIG_FILE, ENCODER_FILE, MAE_CONFIG_FILE, DECODER_FILE):
            if (src / name).is_file() and not (encoder_only and name == DECODER_FILE):
                shutil.copyfile(src / name, dest / name)
        if encoder_only:
            meta = json.loads((src / MAE_CONFIG_FILE).read_text())
            meta["has_decoder"] = False
            (dest / MAE_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    else:  # another format (official .pth, transformers): write our layout
        training = None
        if (src / MAE_CONFIG_FILE).is_file():
            training = json.loads((src / MAE_CONFIG_FILE).read_text()).get("training")
        model.save_pretrained(dest, encoder_only=encoder_only, training=training)
    mae_config = json.loads((dest / MAE_CONFIG_FILE).read_text())
    has_decoder = (dest / DECODER_FILE).is_file()

    eval_result: dict | list | None = None
    if isinstance(eval_file, (list, tuple)) and len(eval_file) > 1:
        for f in eval_file:
            if not Path(f).is_file():
                raise FileNotFoundError(f"no evaluation file {f}")
        eval_result = [_read_eval(Path(f)) for f in eval_file]
        (dest / "eval_results.json").write_text(json.dumps(eval_result, indent=2) + "\n")
    else:
        if isinstance(eval_file, (list, tuple)):
            eval_file = eval_file[0] if eval_file else None
        named = [Path(eval_file)] if eval_file else [src / "eval.json", src.parent / "eval.json"]
        for cand in named:
            if cand.is_file():
                eval_result = _read_eval(cand)
                shutil.copyfile(cand, dest / "eval_results.json")
                break
            if eval_file:
                raise FileNotFoundError(f"no evaluation file {cand}")

    picture, caption = None, ""
    if card_image is not None:
        if not has_decoder:
            raise MAEValueError("--card-image needs the decoder: the picture shows reconstructions")
        from PIL import Image

        from .visualize import reconstruction_panels, save_panels

        full = load_model(dest, with_decoder=True)
        with Image.open(card_image) as img:
            panels = reconstruction_panels(full, img.convert("RGB"), mask_ratio=0.75, seed=0)
        save_panels(panels, dest / "reconstruction.png")
        picture, caption = "reconstruction.png", panels.caption
    else:
        run_panels = sorted((src.parent / "panels").glob("*.png")) if src.is_dir() else []
        if run_panels:
            shutil.copyfile(run_panels[-1], dest / "reconstruction.png")
            picture = "reconstruction.png"
            caption = f"Held-out images at the end of training ({run_panels[-1].stem})."
    params = model.num_params()
    if has_decoder and not params.get("decoder"):
        params = load_model(dest).num_params()
    onnx = None
    if with_onnx:
        from .export import export_onnx, photo_batch

        encoder = load_model(dest, with_decoder=False)
        images = photo_batch(encoder)
        result = export_onnx(encoder, dest, images=images, quantize="int8", source=repo_id)
        onnx = json.loads((result.folder / "export.json").read_text())
    card = render_card(
        repo_id,
        mae_config,
        params,
        encoder_only=not has_decoder,
        license=license,
        eval_result=eval_result,
        picture=picture,
        picture_caption=caption,
        onnx=onnx,
    )
    (dest / "README.md").write_text(card)
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


def _stage_classifier(
    src: Path,
    repo_id: str,
    dest: Path,
    *,
    license: str,
    eval_file: str | os.PathLike[str] | list[str | os.PathLike[str]] | None,
) -> list[str]:
    """`stage_repo` of a `mae finetune` classifier folder: `config.json` and
    `model.safetensors` byte for byte, the card, and with an evaluation (`mae eval
    --method classifier --output FILE`: `eval_file`, else `eval.json` beside or above the
    folder) `eval_results.json` and its confusion matrix as `confusion.png`."""
    import json
    import shutil

    from .checkpoint import CONFIG_FILE, ENCODER_FILE
    from .files import sha256_file
    from .finetune import load_classifier
    from .model_card import render_classifier_card

    model, config = load_classifier(src)  # refuses weights that do not fit their config
    for name in (CONFIG_FILE, ENCODER_FILE):
        shutil.copyfile(src / name, dest / name)
    if isinstance(eval_file, (list, tuple)):
        if len(eval_file) > 1:
            raise MAEValueError("a classifier's card takes one evaluation: give --eval once")
        eval_file = eval_file[0] if eval_file else None
    named = [Path(eval_file)] if eval_file else [src / "eval.json", src.parent / "eval.json"]
    result = None
    for cand in named:
        if not cand.is_file():
            if eval_file:
                raise FileNotFoundError(f"no evaluation file {cand}")
            continue
        found = _read_eval(cand)
        if isinstance(found, dict) and found.get("method") == "classifier":
            scored = found.get("weights_sha256")
            if scored and scored != sha256_file(src / ENCODER_FILE):
                if eval_file:
                    raise MAEValueError(
                        f"the evaluation {cand} scored other weights than {src / ENCODER_FILE} "
                        "(its sha256 differs: the run went on since?); score these with mae "
                        f"eval {src} --method classifier --output FILE"
                    )
                log.warning("%s scored other weights than %s: left out of the card", cand, src)
                continue
            result = found
            break
        if eval_file:
            raise MAEValueError(
                f"{cand} is not a classifier's evaluation: write one with mae eval {src} "
                "--data SOURCE --method classifier --output FILE"
            )
    picture = None
    if result is not None:
        if result.get("num_classes") != config.get("num_classes") or result.get(
            "label_names"
        ) != config.get("label_names"):
            raise MAEValueError(
                f"the evaluation {cand} scored another classifier ({result.get('num_classes')} "
                f"classes, not this one's {config.get('num_classes')}, or other labels)"
            )
        (dest / "eval_results.json").write_text(json.dumps(result, indent=2) + "\n")
        try:
            from .classify import plot_confusion

            plot_confusion(result, dest / "confusion.png")
            picture = "confusion.png"
        except MissingDependency:
            pass  # the card states the accuracy; the picture needs matplotlib
    total = sum(p.numel() for p in model.parameters())
    card = render_classifier_card(
        repo_id, config, {"total": total}, license=license, eval_result=result, picture=picture
    )
    (dest / "README.md").write_text(card)
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


def _read_eval(path: Path) -> Any:
    """An evaluation file (`mae eval --output`); one that is not JSON is refused in a line."""
    import json

    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise MAEValueError(f"evaluation file {path} is not valid JSON: {e}") from None


def push(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    endpoint: str | None = None,
    revision: str | None = None,
    private: bool = False,
    encoder_only: bool = False,
    message: str | None = None,
    token: str | None = None,
    to_models_dir: str | os.PathLike[str] | None = None,
    **stage_kwargs: Any,
) -> PushResult:
    """Publish a model folder as one commit on `repo_id` (created if needed) at branch
    `revision` (default main): to a Hugging Face-compatible hub (`endpoint`, else
    HF_ENDPOINT, else huggingface.co), or with `to_models_dir` straight into a models
    folder. The token comes from `token` or HF_TOKEN and is never printed."""
    import tempfile

    from .repo_store import RepoStore, check_branch, check_repo_id

    check_repo_id(repo_id)
    branch = check_branch(revision or "main")
    message = message or f"Upload {repo_id} with mae push"
    with tempfile.TemporaryDirectory(prefix="mae-push-") as tmp:
        staged = Path(tmp)
        files = stage_repo(model_dir, repo_id, staged, encoder_only=encoder_only, **stage_kwargs)
        if to_models_dir is not None:
            store = RepoStore(to_models_dir)
            store.create_repo(repo_id, private=private)
            if branch not in store.branches(repo_id) and store.branches(repo_id):
                store.create_branch(repo_id, branch)
            head = store.resolve_revision(repo_id, branch)
            stale = sorted(set(store.commit_info(repo_id, head).files) - {*files, ".gitattributes"})
            oid = store.commit(
                repo_id,
                branch,
                add=[(f, (staged / f).read_bytes()) for f in files],
                delete=stale,  # the revision holds exactly what was pushed
                summary=message,
            )
            return PushResult(repo_id, branch, oid, str(store.repo_dir(repo_id)), tuple(files))
        return _push_http(staged, repo_id, branch, files, endpoint, private, message, token)


def _push_http(
    staged: Path,
    repo_id: str,
    branch: str,
    files: list[str],
    endpoint: str | None,
    private: bool,
    message: str,
    token: str | None,
) -> PushResult:
    from huggingface_hub import HfApi, constants

    from . import __version__

    where = (endpoint or constants.ENDPOINT).rstrip("/")
    # A mae-hub server takes weights over plain Git LFS when asked (X-MAE-LFS); hf_xet, when
    # installed, would try the Xet protocol instead, which only huggingface.co speaks.
    self_hosted = "huggingface.co" not in where
    api = HfApi(
        endpoint=endpoint,
        token=token,
        library_name="mae-hub",
        library_version=__version__,
        headers={"X-MAE-LFS": "basic"} if self_hosted else None,
    )
    from huggingface_hub.errors import HfHubHTTPError

    xet_before = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = xet_before or self_hosted
    try:
        # not create_repo(exist_ok=True): on a 403 it retries in a way that fails on any
        # endpoint but huggingface.co, hiding the real answer ("wrong token")
        if not api.repo_exists(repo_id):
            api.create_repo(repo_id, private=private)
        refs = api.list_repo_refs(repo_id)
        names = {b.name for b in refs.branches}
        if names and branch not in names:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.upload_folder(
            folder_path=staged,
            repo_id=repo_id,
            revision=branch,
            commit_message=message,
            # the revision holds exactly what was pushed: no stale decoder beside new weights
            delete_patterns=["*"],
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        why = e.server_message or str(e).splitlines()[0]
        raise PushError(f"push to {where} failed ({status}): {why.strip()}") from None
    except transport_errors() as e:  # connection refused, DNS, TLS
        raise PushError(f"cannot reach {where}: {e}") from None
    finally:
        constants.HF_HUB_DISABLE_XET = xet_before
    return PushResult(repo_id, branch, info.oid, f"{where}/{repo_id}", tuple(files))
