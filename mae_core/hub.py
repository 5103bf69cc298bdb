"""Model ids and loading: which files a model id names, and the model they hold.

A model id is one of
- a local folder or weights file (our layout, transformers ViTMAE, an official `.pth`);
- `local:<ns>/<name>[@revision]`: a repo of the embedded hub (`models/`, or `$MAE_MODELS_DIR`),
  stored like the `huggingface_hub` cache: `refs/<branch>` holds a commit sha,
  `snapshots/<sha>/` holds the files, each checked against the commit's record on loading;
- `hf-hub:<ns>/<name>[@revision]`: a repo on a Hugging Face-compatible hub (`HF_ENDPOINT`),
  downloaded and verified by `pull.py`;
- a bare `<ns>/<name>[@revision]` that is no file or folder but a repo of the embedded hub:
  `local:<ns>/<name>`, as the service's model aliases already read it.

An id that names nothing fails with the nearest names there are ("did you mean ...?").

Publishing a model (staging its repo, the card, the push) is `publish.py`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_weights
from .config import VARIANTS, did_you_mean
from .errors import MAEValueError
from .model import MaskedAutoencoder
from .repo_store import REPO_ID_RULE, is_repo_id


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


def parse_model_id(
    source: str | os.PathLike[str], revision: str | None = None, models_root: Path | None = None
) -> ModelId:
    """Split a model id into scheme, name and revision (`@rev` or the `revision` argument).

    A bare `<ns>/<name>[@rev]` that is no file or folder but a repo of the embedded hub
    (`models_root`, default `models_dir()`) is read as `local:<ns>/<name>[@rev]`. This is
    the one place that decides it, so every command and the service agree; a folder of
    that name wins, as it always did."""
    text = os.fspath(source)
    bare = _embedded_repo(text, models_root)
    if bare is not None:
        text = "local:" + bare
    for scheme in ("local", "hf-hub"):
        if text.startswith(scheme + ":"):
            rest = text[len(scheme) + 1 :]
            name, _, rev = rest.partition("@")
            if rev and revision and rev != revision:
                raise MAEValueError(
                    f"{text!r} names revision {rev!r} but revision={revision!r} was given"
                )
            if not is_repo_id(name):
                raise MAEValueError(f"{text!r}: a repo id reads {REPO_ID_RULE}")
            if "@" in rev or (rest.endswith("@") and not rev):
                raise MAEValueError(f"{text!r}: empty or malformed revision after '@'")
            return ModelId(scheme, name, rev or revision)
    if revision:
        raise MAEValueError(f"a revision applies only to local: and hf-hub: ids, not to {text!r}")
    return ModelId("path", text)


def _embedded_repo(text: str, models_root: Path | None) -> str | None:
    """`text` ("<ns>/<name>[@rev]") when it names a repo of the embedded hub and no file
    or folder; else None."""
    from .repo_store import RepoStore

    name = text.partition("@")[0]
    if not is_repo_id(name) or Path(text).expanduser().exists():
        return None
    return text if RepoStore(models_root or models_dir()).exists(name) else None


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
    """The snapshot folder of `repo_id` at `revision` (a branch, or a commit sha or prefix),
    each of its files checked against the commit's record (size and sha256; a blob is
    hashed once per process until it changes): a damaged file raises VerificationError
    naming it, rather than loading wrong weights."""
    from .pull import VerificationError
    from .repo_store import DamagedFile, HubError, RepoNotFound, RepoStore

    store = RepoStore(root or models_dir())
    try:
        oid = store.resolve_revision(repo_id, revision)
    except RepoNotFound:
        known = store.repos()
        near = did_you_mean(repo_id, known, prefix="local:")
        raise ModelNotFoundError(
            f"no repo {repo_id!r} in the models folder {store.root}{near}"
            + (f"; it has: {', '.join(known)}" if known else " (it holds no repos)")
        ) from None
    except HubError as e:
        raise ModelNotFoundError(e.message) from None
    try:
        store.verify_revision(repo_id, oid)
    except DamagedFile as e:
        raise VerificationError(f"local:{e.message}") from None
    return store.repo_dir(repo_id) / "snapshots" / oid


def resolve(model_id: ModelId, models_root: Path | None = None) -> Path:
    """A local path holding the model's files (downloading `hf-hub:` repos to the cache).
    `models_root`: the embedded hub for `local:` ids (default `models_dir()`)."""
    if model_id.scheme == "local":
        return resolve_local(model_id.name, model_id.revision, root=models_root)
    if model_id.scheme == "hf-hub":
        from .pull import pull

        return pull(model_id.name, model_id.revision)
    path = Path(model_id.name).expanduser()
    if not path.exists():
        raise ModelNotFoundError(_not_found(model_id.name, models_root))
    return path


def _not_found(name: str, models_root: Path | None) -> str:
    """Why `name` (a path that does not exist) is no model, with the nearest ids there are:
    a variant name (those have no weights), a repo of the embedded hub, or a hub repo."""
    from .repo_store import RepoStore

    if name in VARIANTS:
        return (
            f"{name!r} is a variant name: it has no weights (mae_core.create_model({name!r}) "
            "builds it at random; mae info describes it); give a model folder, a weights "
            "file, local:<ns>/<name> or hf-hub:<ns>/<name>"
        )
    text = f"model {name!r} not found: not a file or folder"
    looks_like_variant = name.startswith("mae_") and "/" not in name and "." not in name
    if looks_like_variant or did_you_mean(name, VARIANTS):
        return (
            f"{text}, nor a variant{did_you_mean(name, VARIANTS)}; variants: {', '.join(VARIANTS)}"
        )
    root = models_root or models_dir()
    repos = RepoStore(root).repos()
    near = did_you_mean(name.removeprefix("./").partition("@")[0], repos, prefix="local:")
    if near:
        return f"{text}, nor a repo of the models folder {root}{near}"
    if is_repo_id(name.partition("@")[0]):
        return (
            f"{text}, nor a repo of the models folder {root}; for a repo on a hub, write "
            f"hf-hub:{name}"
        )
    return f"{text}, and not a 'local:<ns>/<name>' or 'hf-hub:<ns>/<name>' id"


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
    from .distributed import resolve_device

    model_id = parse_model_id(source, revision)
    target = resolve_device(device) if device else None  # a missing GPU fails before loading
    model = load_weights(resolve(model_id), with_decoder=with_decoder, **overrides)
    model.source_info["model_id"] = str(model_id)
    return model.to(target) if target is not None else model
