"""Model ids and loading: which files a model id names, and the model they hold.

A model id is one of
- a local folder or weights file (our layout, transformers ViTMAE, an official `.pth`);
- `local:<ns>/<name>[@revision]`: a repo of the embedded hub (`models/`, or `$MAE_MODELS_DIR`),
  stored like the `huggingface_hub` cache: `refs/<branch>` holds a commit sha,
  `snapshots/<sha>/` holds the files;
- `hf-hub:<ns>/<name>[@revision]`: a repo on a Hugging Face-compatible hub (`HF_ENDPOINT`),
  downloaded and verified by `pull.py`.

Publishing a model (staging its repo, the card, the push) is `publish.py`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_weights
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


def parse_model_id(source: str | os.PathLike[str], revision: str | None = None) -> ModelId:
    """Split a model id into scheme, name and revision (`@rev` or the `revision` argument)."""
    text = os.fspath(source)
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
    from .distributed import resolve_device

    model_id = parse_model_id(source, revision)
    target = resolve_device(device) if device else None  # a missing GPU fails before loading
    model = load_weights(resolve(model_id), with_decoder=with_decoder, **overrides)
    model.source_info["model_id"] = str(model_id)
    return model.to(target) if target is not None else model
