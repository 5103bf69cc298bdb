"""Pulling a model repo from a Hugging Face-compatible hub: pinned to one commit, every
file checked against the hub's record (size, and sha256 or git blob sha1) before use.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .files import git_blob_sha1, sha256_file
from .hub import ModelNotFoundError


def transport_errors() -> tuple[type[BaseException], ...]:
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
            want, got, kind = sib.blob_id, git_blob_sha1(path) if sib.blob_id else None, "git sha1"
            want_size = sib.size
        if (want_size is not None and size != want_size) or (want and got != want):
            _discard(path)
            raise VerificationError(
                f"{sib.rfilename} does not match the hub's record ({kind} {str(want)[:12]}..., "
                f"{want_size} bytes; got {str(got)[:12]}..., {size} bytes): the download was "
                "corrupted, or the hub's copy is damaged or was tampered with; it has been "
                "deleted: pull again, and if the same file fails again, the hub's copy needs "
                "repairing (push the model to it again)"
            )
        checked += 1
    return checked


def verify_cached_lfs(folder: Path) -> int:
    """Offline check of a cache snapshot: each file whose blob is named by a sha256 (LFS
    files) must hash to that name."""
    checked = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_symlink() and p.is_file()):
        name = path.resolve().name
        if re.fullmatch(r"[0-9a-f]{64}", name):
            if sha256_file(path) != name:
                _discard(path)
                raise VerificationError(
                    f"{path.relative_to(folder).as_posix()} in the cache does not match its "
                    f"sha256 {name[:12]}...; it has been deleted: pull it again online (unset "
                    "HF_HUB_OFFLINE)"
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
    except transport_errors() as e:  # connection refused, DNS, ...
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
