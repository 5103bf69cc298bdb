"""The Hugging Face Hub HTTP calls over the embedded hub (`RepoStore`): access rules and the
reading side (repo info, refs, trees, file downloads). Writes are `hub_write.py`.

Enough of the protocol that the unmodified `huggingface_hub` client (`create_repo`,
`upload_folder`, `hf_hub_download`, `snapshot_download`, branches and commit shas) and
timm's `hf-hub:` loading work with `HF_ENDPOINT` pointing here; see
`../shared/notes/hub-protocol.md`. Errors are the Hub's: JSON `{"error": message}` plus
the `X-Error-Code` / `X-Error-Message` headers the client reads.

Every store call runs in a worker thread (it reads and writes files, and takes a file
lock on commits): a route does its HTTP work on the event loop, then one threaded call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mae_core.model_card import front_matter
from mae_core.repo_store import (
    Commit,
    EntryNotFound,
    FileEntry,
    HubError,
    RepoNotFound,
    RepoStore,
    check_path,
    check_repo_id,
)

router = APIRouter(tags=["hub"])


class TokenMissing(HubError):
    status, code = 401, "Unauthorized"


class TokenRefused(HubError):
    status, code = 403, "Forbidden"


def hub_error_response(exc: HubError) -> JSONResponse:
    safe = exc.message.encode("ascii", "replace").decode()[:500]
    return JSONResponse(
        {"error": exc.message},
        exc.status,
        headers={"X-Error-Code": exc.code, "X-Error-Message": safe},
    )


# -- access -------------------------------------------------------------------------------
def store(request: Request) -> RepoStore:
    return request.app.state.store


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _check_token(request: Request, why: str) -> None:
    tokens: list[str] = request.app.state.settings.hub_tokens
    token = _token(request)
    if token is None:
        raise TokenMissing(
            f"to {why} you need a token: send 'Authorization: Bearer <token>' (HF_TOKEN)"
        )
    # compare with every token, in constant time, so timing reveals neither match nor position
    ok = False
    for known in tokens:
        ok |= hmac.compare_digest(token.encode(), known.encode())
    if not ok:
        raise TokenRefused(f"this token may not {why}")


async def require_write(request: Request) -> None:
    """FastAPI dependency of every writing route: a token of MAE_HUB_TOKENS."""
    if not request.app.state.settings.hub_tokens:
        raise TokenRefused("this hub is read-only: start it with MAE_HUB_TOKENS to allow writes")
    _check_token(request, "write to this hub")


def check_read(request: Request, repo_id: str) -> None:
    """Reads of a private repo, or of any repo when MAE_HUB_READ_TOKEN_REQUIRED, need a
    token (call in a worker thread: it reads the repo's metadata)."""
    private = store(request).meta(repo_id).get("private", False)
    if private or request.app.state.settings.hub_read_token_required:
        try:
            _check_token(request, "read this repo")
        except HubError:
            if private:  # do not confirm that a private repo exists
                raise RepoNotFound(
                    f"repository {repo_id} not found (private repos need a token)"
                ) from None
            raise


def repo_id_of(ns: str, name: str) -> str:
    return check_repo_id(f"{ns}/{name}")


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HubError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HubError("the request body must be a JSON object")
    return body


# -- repos ------------------------------------------------------------------------------
@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> dict[str, list[str]]:
    body = await json_body(request)
    try:
        front_matter(str(body.get("content", "")))
        errors: list[str] = []
    except ValueError as e:
        errors = [str(e)]
    return {"errors": errors, "warnings": []}


def _sibling(entry: FileEntry, blobs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"rfilename": entry.path}
    if blobs:
        out.update(size=entry.size, blobId=entry.blob_id)
        if entry.lfs:
            out["lfs"] = {
                "sha256": entry.sha256,
                "size": entry.size,
                "pointerSize": len(entry.pointer()),
            }
    return out


def _card_meta(repos: RepoStore, repo_id: str, commit: Commit) -> dict[str, Any]:
    """The model card's YAML header ({} when there is none or it does not parse)."""
    entry = commit.files.get("README.md")
    if entry is None or entry.size > 1_000_000:
        return {}
    _, blob = repos.open_file(repo_id, commit.oid, "README.md")
    try:
        return front_matter(blob.read_text(errors="replace"))
    except ValueError:
        return {}


def _repo_info(request: Request, ns: str, name: str, revision: str | None) -> dict[str, Any]:
    repos, repo_id = store(request), repo_id_of(ns, name)
    check_read(request, repo_id)
    meta = repos.meta(repo_id)
    blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
    if revision is None and not repos.branches(repo_id):  # created, nothing committed yet
        commit = Commit("", None, "", "", meta["created_at"])
        sha = None
    else:
        commit = repos.commit_info(repo_id, repos.resolve_revision(repo_id, revision))
        sha = commit.oid
    card = _card_meta(repos, repo_id, commit) if sha else {}
    return {
        "_id": repo_id,
        "id": repo_id,
        "modelId": repo_id,
        "author": ns,
        "sha": sha,
        "lastModified": commit.date,
        "createdAt": meta["created_at"],
        "private": bool(meta.get("private")),
        "disabled": False,
        "gated": False,
        "library_name": card.get("library_name"),
        "pipeline_tag": card.get("pipeline_tag"),
        "tags": card.get("tags") or [],
        "cardData": card or None,
        "siblings": [
            _sibling(e, blobs) for e in sorted(commit.files.values(), key=lambda e: e.path)
        ],
    }


@router.get("/api/models/{ns}/{name}")
async def repo_info(ns: str, name: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_repo_info, request, ns, name, None)


@router.get("/api/models/{ns}/{name}/revision/{revision:path}")
async def repo_info_at(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_repo_info, request, ns, name, revision)


def _refs(request: Request, ns: str, name: str) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    check_read(request, repo_id)
    branches = [
        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
        for b, oid in store(request).branches(repo_id).items()
    ]
    return {"branches": branches, "tags": [], "converts": []}


@router.get("/api/models/{ns}/{name}/refs")
async def list_refs(ns: str, name: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_refs, request, ns, name)


# -- listing ----------------------------------------------------------------------------
def _tree_entries(commit: Commit) -> tuple[list[dict[str, Any]], set[str]]:
    files = []
    dirs: set[str] = set()
    for e in commit.files.values():
        item: dict[str, Any] = {"type": "file", "oid": e.blob_id, "size": e.size, "path": e.path}
        if e.lfs:
            item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(e.pointer())}
        files.append(item)
        parts = e.path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return files, dirs


def _dir_entry(path: str, commit: Commit) -> dict[str, Any]:
    oid = hashlib.sha1(f"{commit.oid}:{path}".encode(), usedforsecurity=False).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _commit(request: Request, repo_id: str, revision: str) -> Commit:
    repos = store(request)
    return repos.commit_info(repo_id, repos.resolve_revision(repo_id, revision))


def _commit_at(request: Request, ns: str, name: str, revision: str) -> tuple[str, Commit]:
    repo_id = repo_id_of(ns, name)
    check_read(request, repo_id)
    return repo_id, _commit(request, repo_id, revision)


def _tree(request: Request, ns: str, name: str, revision: str, path: str) -> list[dict[str, Any]]:
    repo_id, commit = _commit_at(request, ns, name, revision)
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    prefix = path.strip("/")
    if prefix:
        check_path(prefix)
    files, dirs = _tree_entries(commit)
    if prefix and prefix not in dirs:
        raise EntryNotFound(f"folder {prefix} not found in {repo_id} at {commit.oid[:12]}")
    base = f"{prefix}/" if prefix else ""

    def wanted(p: str) -> bool:
        return p.startswith(base) and (recursive or "/" not in p[len(base) :])

    out = [_dir_entry(d, commit) for d in sorted(dirs) if wanted(d)]
    return out + sorted((f for f in files if wanted(f["path"])), key=lambda f: f["path"])


@router.get("/api/models/{ns}/{name}/tree/{revision}")
@router.get("/api/models/{ns}/{name}/tree/{revision}/{path:path}")
async def list_tree(
    ns: str, name: str, revision: str, request: Request, path: str = ""
) -> list[dict[str, Any]]:
    return await run_in_threadpool(_tree, request, ns, name, revision, path)


def _paths_info(
    request: Request, repo_id: str, revision: str, paths: list[Any]
) -> list[dict[str, Any]]:
    commit = _commit(request, repo_id, revision)  # read access checked by the route
    files, dirs = _tree_entries(commit)
    by_path = {f["path"]: f for f in files}
    out = []
    for p in paths:
        p = str(p).strip("/")
        if p in by_path:
            out.append(by_path[p])
        elif p in dirs:
            out.append(_dir_entry(p, commit))
    return out


@router.post("/api/models/{ns}/{name}/paths-info/{revision}")
async def paths_info(ns: str, name: str, revision: str, request: Request) -> list[dict[str, Any]]:
    repo_id = repo_id_of(ns, name)
    await run_in_threadpool(check_read, request, repo_id)  # before the body: 401/404 first
    raw = (await request.body()).decode(errors="replace")
    if request.headers.get("content-type", "").startswith("application/json"):
        paths = (await json_body(request)).get("paths", [])
    else:
        paths = parse_qs(raw).get("paths", [])
    return await run_in_threadpool(_paths_info, request, repo_id, revision, paths)


# -- downloads --------------------------------------------------------------------------
def _resolve_file(
    request: Request, ns: str, name: str, revision: str, path: str
) -> tuple[Any, Any, str]:
    repos, repo_id = store(request), repo_id_of(ns, name)
    check_read(request, repo_id)
    oid = repos.resolve_revision(repo_id, revision)
    entry, blob = repos.open_file(repo_id, oid, path)
    return entry, blob, oid


# One route per method: a single GET+HEAD route gives both the same OpenAPI operation id.
@router.get("/{ns}/{name}/resolve/{revision}/{path:path}")
@router.head("/{ns}/{name}/resolve/{revision}/{path:path}")
async def resolve(ns: str, name: str, revision: str, path: str, request: Request) -> Response:
    entry, blob, oid = await run_in_threadpool(_resolve_file, request, ns, name, revision, path)
    headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    filename = path.rsplit("/", 1)[-1]
    return FileResponse(blob, headers=headers, filename=filename, content_disposition_type="inline")
