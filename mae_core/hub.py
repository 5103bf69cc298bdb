"""Model ids and where their files are.

A model id is one of
- a local folder or weights file (our layout, transformers ViTMAE, an official `.pth`);
- `local:<ns>/<name>[@revision]`: a repo of the embedded hub (`models/`, or `$MAE_MODELS_DIR`),
  stored like the `huggingface_hub` cache: `refs/<branch>` holds a commit sha,
  `snapshots/<sha>/` holds the files;
- `hf-hub:<ns>/<name>[@revision]`: a repo on a Hugging Face-compatible hub (`HF_ENDPOINT`).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_weights, sha256_file
from .model import MaskedAutoencoder

_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelNotFoundError(CheckpointError):
    """The id names nothing that exists (no folder, repo, branch or revision)."""


@dataclass(frozen=True)
class ModelId:
    scheme: str  # "path" | "local" | "hf-hub"
    name: str  # a path, or "<ns>/<name>"
    revision: str | None = None

    def __str__(self) -> str:
        if self.scheme == "path":
            return self.name
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.scheme}:{self.name}{rev}"


def parse_model_id(source: str | os.PathLike[str], revision: str | None = None) -> ModelId:
    """Split a model id into scheme, name and revision (`@rev` or the `revision` argument)."""
    text = os.fspath(source)
    for scheme in ("local", "hf-hub"):
        if text.startswith(scheme + ":"):
            rest = text[len(scheme) + 1 :]
            name, _, rev = rest.partition("@")
            if rev and revision and rev != revision:
                raise ValueError(
                    f"{text!r} names revision {rev!r} but revision={revision!r} was given"
                )
            if not _REPO_RE.match(name):
                raise ValueError(
                    f"{text!r}: a repo id reads '<namespace>/<name>' (letters, digits, '.', '_', '-')"
                )
            if "@" in rev or (rest.endswith("@") and not rev):
                raise ValueError(f"{text!r}: empty or malformed revision after '@'")
            return ModelId(scheme, name, rev or revision)
    if revision:
        raise ValueError(f"a revision applies only to local: and hf-hub: ids, not to {text!r}")
    return ModelId("path", text)


def models_dir() -> Path:
    """The embedded hub: `$MAE_MODELS_DIR`; else `models/` of the checkout this package is
    installed from (editable install); else `./models`."""
    env = os.environ.get("MAE_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    return Path.cwd() / "models"


def resolve_local(repo_id: str, revision: str | None = None, root: Path | None = None) -> Path:
    """The snapshot folder of `repo_id` at `revision` (a branch, or a commit sha or prefix)."""
    from .repo_store import HubError, RepoNotFound, RepoStore

    store = RepoStore(root or models_dir())
    try:
        oid = store.resolve_revision(repo_id, revision)
    except RepoNotFound:
        known = store.repos()
        raise ModelNotFoundError(
            f"no repo {repo_id!r} in the models folder {store.root}"
            + (f"; it has: {', '.join(known)}" if known else " (it holds no repos)")
        ) from None
    except HubError as e:
        raise ModelNotFoundError(e.message) from None
    return store.repo_dir(repo_id) / "snapshots" / oid


def resolve(model_id: ModelId) -> Path:
    """A local path holding the model's files (downloading `hf-hub:` repos to the cache)."""
    if model_id.scheme == "local":
        return resolve_local(model_id.name, model_id.revision)
    if model_id.scheme == "hf-hub":
        return pull(model_id.name, model_id.revision)
    path = Path(model_id.name).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {model_id.name!r} not found: not a file or folder, and not a "
            "'local:<ns>/<name>' or 'hf-hub:<ns>/<name>' id"
        )
    return path


def load_model(
    source: str | os.PathLike[str],
    revision: str | None = None,
    *,
    with_decoder: bool | None = None,
    device: str | None = None,
    **overrides: Any,
) -> MaskedAutoencoder:
    """Load an MAE from any model id (see the module docstring), in eval mode.

    with_decoder: None keeps the decoder when the weights have one, True requires it,
    False leaves it out (embeddings only). `overrides` replace inferred config fields.
    """
    model_id = parse_model_id(source, revision)
    model = load_weights(resolve(model_id), with_decoder=with_decoder, **overrides)
    model.source_info["model_id"] = str(model_id)
    return model.to(device) if device else model


# ---------------------------------------------------------------------------------------
# Pull: snapshot_download pinned to one commit, every file verified
# ---------------------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of whichever HTTP library huggingface_hub uses."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


class VerificationError(CheckpointError):
    """A downloaded file does not match the hub's record (size or hash)."""


def _git_blob_sha1(path: Path) -> str:
    import hashlib

    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _discard(path: Path) -> None:
    """Delete a bad download: the file and, in the cache layout, the blob it points to."""
    target = path.resolve()
    for p in {path, target}:
        p.unlink(missing_ok=True)


def verify_files(folder: Path, siblings: list[Any]) -> int:
    """Check every file of `folder` listed in `siblings` (huggingface_hub `RepoSibling`s with
    `files_metadata=True`): size, and sha256 (LFS files) or git blob sha1 (others). A
    mismatch deletes the file and raises VerificationError. Returns the number checked."""
    checked = 0
    for sib in siblings:
        path = folder / sib.rfilename
        if not path.is_file():
            continue  # not downloaded (filtered out)
        size = path.stat().st_size
        if sib.lfs is not None:
            want, got, kind = sib.lfs.sha256, sha256_file(path), "sha256"
            want_size = sib.lfs.size
        else:
            want, got, kind = sib.blob_id, _git_blob_sha1(path) if sib.blob_id else None, "git sha1"
            want_size = sib.size
        if (want_size is not None and size != want_size) or (want and got != want):
            _discard(path)
            raise VerificationError(
                f"{sib.rfilename} does not match the hub's record ({kind} {str(want)[:12]}..., "
                f"{want_size} bytes; got {str(got)[:12]}..., {size} bytes): the download was "
                "corrupted or the file was tampered with; it has been deleted"
            )
        checked += 1
    return checked


def verify_cached_lfs(folder: Path) -> int:
    """Offline check of a cache snapshot: each file whose blob is named by a sha256 (LFS
    files) must hash to that name."""
    import re

    checked = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_symlink() and p.is_file()):
        name = path.resolve().name
        if re.fullmatch(r"[0-9a-f]{64}", name):
            if sha256_file(path) != name:
                _discard(path)
                raise VerificationError(
                    f"{path.name} in the cache does not match its sha256 {name[:12]}...; deleted"
                )
            checked += 1
    return checked


def pull(
    repo_id: str,
    revision: str | None = None,
    *,
    local_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Download `repo_id` at `revision` (branch, tag or commit sha; default main) and verify
    every file against the hub's recorded size and hash. Returns the snapshot folder (in the
    standard huggingface_hub cache, or `local_dir`).

    Offline (`HF_HUB_OFFLINE=1`) it serves the cache only, checking LFS files against their
    blob names, and fails fast with a clear message when the repo is not cached.
    """
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint or constants.ENDPOINT
    label = f"{repo_id}@{revision}" if revision else repo_id
    if constants.HF_HUB_OFFLINE:
        try:
            folder = Path(
                snapshot_download(
                    repo_id, revision=revision, local_dir=local_dir, local_files_only=True
                )
            )
        except LocalEntryNotFoundError:
            raise ModelNotFoundError(
                f"{label} is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it: "
                "pull it once online (mae pull) or unset HF_HUB_OFFLINE"
            ) from None
        verify_cached_lfs(folder)
        return folder
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id} has no revision {revision!r} on {where}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelNotFoundError(
            f"no repo {repo_id!r} on {where} (or it is private: set HF_TOKEN)"
        ) from None
    except HfHubHTTPError as e:
        why = e.server_message or str(e).splitlines()[0]
        raise ModelNotFoundError(f"{where} refused {label}: {why.strip()}") from None
    except _transport_errors() as e:  # connection refused, DNS, ...
        raise ModelNotFoundError(f"cannot reach {where} for {label}: {e}") from None
    if not info.sha:
        raise ModelNotFoundError(f"{repo_id} on {where} has no commit yet")
    # Pin to the commit the metadata describes: a branch moving meanwhile cannot mix files.
    folder = Path(
        snapshot_download(
            repo_id, revision=info.sha, local_dir=local_dir, endpoint=endpoint, token=token
        )
    )
    verify_files(folder, info.siblings or [])
    return folder


# ---------------------------------------------------------------------------------------
# Push: a model folder + its card, one commit, to a hub or straight into a models folder
# ---------------------------------------------------------------------------------------
class PushError(RuntimeError):
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
) -> list[str]:
    """Write into `dest` what `push` uploads: the weights in our layout (copied byte for
    byte when `model_dir` is already in it, else converted), `README.md` (the model card),
    `eval_results.json` and `reconstruction.png` when available. Returns the file names.

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
        eval_result = [json.loads(Path(f).read_text()) for f in eval_file]
        (dest / "eval_results.json").write_text(json.dumps(eval_result, indent=2) + "\n")
    else:
        if isinstance(eval_file, (list, tuple)):
            eval_file = eval_file[0] if eval_file else None
        named = [Path(eval_file)] if eval_file else [src / "eval.json", src.parent / "eval.json"]
        for cand in named:
            if cand.is_file():
                eval_result = json.loads(cand.read_text())
                shutil.copyfile(cand, dest / "eval_results.json")
                break
            if eval_file:
                raise FileNotFoundError(f"no evaluation file {cand}")

    picture, caption = None, ""
    if card_image is not None:
        if not has_decoder:
            raise ValueError("--card-image needs the decoder: the picture shows reconstructions")
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
    card = render_card(
        repo_id,
        mae_config,
        params,
        encoder_only=not has_decoder,
        license=license,
        eval_result=eval_result,
        picture=picture,
        picture_caption=caption,
    )
    (dest / "README.md").write_text(card)
    return sorted(p.name for p in dest.iterdir() if p.is_file())


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
    except _transport_errors() as e:  # connection refused, DNS, TLS
        raise PushError(f"cannot reach {where}: {e}") from None
    finally:
        constants.HF_HUB_DISABLE_XET = xet_before
    return PushResult(repo_id, branch, info.oid, f"{where}/{repo_id}", tuple(files))
