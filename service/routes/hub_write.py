"""The writing side of the Hub protocol: create a repo or a branch, commit files (a
commit may delete files: `delete_file`, `delete_folder`), delete a branch or a whole repo,
and the Git LFS upload of large files. Every route but the signed LFS upload needs a write
token (`require_write`); every store call runs in a worker thread.

Uploads: files travel inline (base64 in the commit body) unless the client says it speaks
plain Git LFS (`X-MAE-LFS: basic`, sent by `mae push`): `huggingface_hub` with `hf_xet`
installed would otherwise try the Xet protocol for every LFS file, which this hub does
not implement. LFS objects are PUT to a signed, short-lived URL and verified (size,
sha256) before they are stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import tempfile
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mae_core.repo_store import (
    LFS_MIN_SIZE,
    LFS_SUFFIXES,
    HubError,
    RepoNotFound,
    RepoStore,
    check_path,
    check_repo_id,
)

from ..hub_schemas import (
    BINARY,
    COMMIT_DESCRIPTION,
    CommitLine,
    CreateBranch,
    CreateRepo,
    DeleteRepo,
    FileLine,
    HeaderLine,
    LfsBatch,
    LfsFileLine,
    LfsObject,
    Preupload,
    parse,
    request_body,
)
from .hub import (
    TokenRefused,
    base_url,
    body_bytes,
    body_chunks,
    hub_errors,
    json_body,
    repo_id_of,
    require_write,
    store,
)

router = APIRouter(tags=["hub"])
WRITE = [Depends(require_write)]
LFS_URL_TTL_S = 3600
JSON = "application/json"
MODELS_ONLY = "this hub stores model repos only"


class CommitTooLarge(HubError):
    status, code = 413, "PayloadTooLarge"


def _must_exist(repos: RepoStore, repo_id: str) -> None:
    if not repos.exists(repo_id):
        raise RepoNotFound(f"repository {repo_id} not found: create it first")


@router.post(
    "/api/repos/create",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 409, 499),
    openapi_extra=request_body({JSON: CreateRepo}),
)
async def create_repo(request: Request) -> JSONResponse:
    hints = {"type": MODELS_ONLY, "name": "creating a repo needs its 'name'"}
    body: CreateRepo = parse(CreateRepo, await json_body(request), "the create body", hints)
    org = body.organization
    repo_id = check_repo_id(f"{org}/{body.name}" if org else body.name)
    url = f"{base_url(request)}/{repo_id}"
    # huggingface_hub 1.x sends "visibility"; older clients "private"
    private = body.visibility == "private" or bool(body.private)
    created = await run_in_threadpool(store(request).create_repo, repo_id, private)
    if not created:
        return JSONResponse({"error": f"repository {repo_id} already exists", "url": url}, 409)
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.post(
    "/api/models/{ns}/{name}/branch/{branch:path}",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 404, 409, 499),
    openapi_extra=request_body({JSON: CreateBranch}, required=False),
)
async def create_branch(ns: str, name: str, branch: str, request: Request) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    raw = await json_body(request) if await body_bytes(request) else {}
    body: CreateBranch = parse(CreateBranch, raw, "the branch body")
    start = body.startingPoint
    oid = await run_in_threadpool(store(request).create_branch, repo_id, branch, start)
    return {"name": branch, "targetCommit": oid}


@router.delete(
    "/api/models/{ns}/{name}/branch/{branch:path}",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 404, 409),
)
async def delete_branch(ns: str, name: str, branch: str, request: Request) -> dict[str, Any]:
    """Remove a branch (its commits stay, reachable by sha); never the default branch
    (main) nor a repo's last one."""
    repo_id = repo_id_of(ns, name)
    oid = await run_in_threadpool(store(request).delete_branch, repo_id, branch)
    return {"name": branch, "targetCommit": oid, "deleted": True}


@router.delete(
    "/api/repos/delete",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 404, 499),
    openapi_extra=request_body({JSON: DeleteRepo}),
)
async def delete_repo(request: Request) -> dict[str, Any]:
    """Delete a repo whole: every branch, commit and file. Atomic: the repo is renamed out
    of the way in one step (under its lock, so no commit is half-written), then removed."""
    hints = {
        "type": MODELS_ONLY,
        "name": "deleting a repo needs its 'name' (and 'organization': its namespace)",
    }
    body: DeleteRepo = parse(DeleteRepo, await json_body(request), "the delete body", hints)
    org = body.organization
    repo_id = check_repo_id(f"{org}/{body.name}" if org else body.name)
    await run_in_threadpool(store(request).delete_repo, repo_id)
    return {"id": repo_id, "deleted": True}


@router.post(
    "/api/models/{ns}/{name}/preupload/{revision}",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 404, 499),
    openapi_extra=request_body({JSON: Preupload}),
)
async def preupload(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    await run_in_threadpool(_must_exist, store(request), repo_id)
    hints = {"files": "preupload needs a 'files' list"}
    body: Preupload = parse(Preupload, await json_body(request), "the preupload body", hints)
    lfs_ok = request.headers.get("x-mae-lfs", "").lower() == "basic"
    out = []
    for f in body.files:
        path = check_path(f.path)
        big = path.endswith(LFS_SUFFIXES) or f.size >= LFS_MIN_SIZE
        out.append(
            {
                "path": path,
                "uploadMode": "lfs" if lfs_ok and big else "regular",
                "shouldIgnore": False,
            }
        )
    return {"files": out}


async def _ndjson(request: Request, limit: int) -> list[Any]:
    """The commit body's lines, each validated as a `CommitLine`: the header first, then
    the operations. Refused past `limit` bytes."""
    buf, total, lines = b"", 0, []
    async for chunk in body_chunks(request, "the commit body"):
        total += len(chunk)
        if total > limit:
            raise CommitTooLarge(f"commit body over {limit} bytes: send large files over LFS")
        buf += chunk
        *complete, buf = buf.split(b"\n")
        lines.extend(complete)
    lines.append(buf)
    out: list[Any] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HubError(f"commit body line {n} is not JSON") from None
        if not isinstance(item, dict):
            raise HubError(f"commit body line {n} is not a {{key, value}} object")
        # the header says what the commit is: it comes first, so it is never left out
        if not out and item.get("key") != "header":
            raise HubError(
                f"commit body line {n} is a {_shown_key(item)} line, but the first line must "
                'be the header: {"key": "header", "value": {"summary": ..., "description": ...}}'
            )
        if out and item.get("key") == "header":
            raise HubError(f"commit body line {n} is a second header: only the first line is")
        out.append(parse(CommitLine, item, f"commit body line {n} ({_shown_key(item)})"))
    if not out:
        raise HubError("the commit body is empty: its first line must be the header")
    return out


def _shown_key(item: dict[str, Any]) -> str:
    """A line's key as a message names the line: `'file'`, or what stands in its place."""
    key = item.get("key")
    return repr(key) if isinstance(key, str) else "keyless" if key is None else "malformed"


def _operations(
    lines: list[Any],
) -> tuple[HeaderLine, list[tuple[str, bytes]], list[tuple[str, str, int | None]], list[str]]:
    """A commit body's validated lines -> (header, files added inline, LFS files added,
    deletions)."""
    header, *operations = lines
    add, add_lfs, delete = [], [], []
    for line in operations:
        value = line.value
        if isinstance(line, FileLine):
            try:
                data = base64.b64decode(value.content, validate=True)
            except (binascii.Error, ValueError):
                raise HubError(f"{value.path}: content is not valid base64") from None
            add.append((check_path(value.path), data))
        elif isinstance(line, LfsFileLine):
            # no size: a copy of an object already in the repo (the store looks it up)
            add_lfs.append((check_path(value.path), value.oid, value.size))
        else:  # deletedFile, deletedFolder: the only keys left
            delete.append(value.path)
    return header, add, add_lfs, delete


@router.post(
    "/api/models/{ns}/{name}/commit/{revision}",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 404, 412, 413, 499),
    openapi_extra=request_body(
        {"application/x-ndjson": CommitLine}, description=COMMIT_DESCRIPTION
    ),
)
async def commit(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    repos = store(request)
    await run_in_threadpool(_must_exist, repos, repo_id)
    if request.query_params.get("create_pr", "").lower() in ("1", "true"):
        raise HubError("this hub has no pull requests: commit to a branch instead")
    limit = request.app.state.settings.hub_max_commit_bytes
    header, add, add_lfs, delete = _operations(await _ndjson(request, limit))
    oid = await run_in_threadpool(
        lambda: repos.commit(
            repo_id,
            revision,
            add=add,
            add_lfs=add_lfs,
            delete=delete,
            summary=header.value.summary,
            description=header.value.description,
            parent_commit=header.value.parentCommit,
        )
    )
    return {
        "commitUrl": f"{base_url(request)}/{repo_id}/commit/{oid}",
        "commitOid": oid,
        "pullRequestUrl": None,
    }


# -- Git LFS ------------------------------------------------------------------------------
def _signature(request: Request, repo_id: str, oid: str, size: int, expires: int) -> str:
    key: bytes = request.app.state.lfs_secret
    return hmac.new(key, f"{repo_id}:{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


def _lfs_objects(request: Request, repo_id: str, objects: list[LfsObject]) -> list[dict[str, Any]]:
    """The batch API's answer per object: an upload URL for each one not stored yet."""
    repos = store(request)
    out = []
    for obj in objects:
        oid, size = obj.oid, obj.size
        item: dict[str, Any] = {"oid": oid, "size": size}
        if not repos.has_blob(repo_id, oid, size):
            expires = int(time.time()) + LFS_URL_TTL_S
            sig = _signature(request, repo_id, oid, size, expires)
            href = (
                f"{base_url(request)}/{repo_id}.git/info/lfs/objects/{oid}"
                f"?size={size}&expires={expires}&sig={sig}"
            )
            item.update(
                authenticated=True, actions={"upload": {"href": href, "expires_in": LFS_URL_TTL_S}}
            )
        out.append(item)
    return out


@router.post(
    "/{ns}/{name}.git/info/lfs/objects/batch",
    dependencies=WRITE,
    responses=hub_errors(400, 401, 403, 404, 499),
    # the Git LFS media type is what clients send; the body is read as JSON either way
    openapi_extra=request_body({"application/vnd.git-lfs+json": LfsBatch, JSON: LfsBatch}),
)
async def lfs_batch(ns: str, name: str, request: Request) -> Response:
    repo_id = repo_id_of(ns, name)
    await run_in_threadpool(_must_exist, store(request), repo_id)
    hints = {"operation": "this hub's LFS batch API takes uploads only; download with /resolve/"}
    body: LfsBatch = parse(LfsBatch, await json_body(request), "the LFS batch body", hints)
    objects = await run_in_threadpool(_lfs_objects, request, repo_id, body.objects)
    payload = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
    return Response(json.dumps(payload), media_type="application/vnd.git-lfs+json")


# No token here: the URL itself is the permission (signed by lfs_batch, short-lived).
@router.put(
    "/{ns}/{name}.git/info/lfs/objects/{oid}",
    responses=hub_errors(400, 403, 404, 499),
    openapi_extra=request_body(
        {"application/octet-stream": BINARY},
        description="the object's bytes: exactly `size` of them, their sha256 `oid`",
    ),
)
async def lfs_upload(ns: str, name: str, oid: str, request: Request) -> Response:
    repo_id = repo_id_of(ns, name)
    q = request.query_params
    try:
        size, expires = int(q.get("size", "")), int(q.get("expires", ""))
    except ValueError:
        raise TokenRefused(
            "this upload URL is incomplete: ask the LFS batch API for a new one"
        ) from None
    good = hmac.compare_digest(_signature(request, repo_id, oid, size, expires), q.get("sig", ""))
    if not good or expires < time.time():
        raise TokenRefused(
            "this upload URL is invalid or expired: ask the LFS batch API for a new one"
        )
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as spool:
        received = 0
        async for chunk in body_chunks(request, f"LFS object {oid[:12]}"):
            received += len(chunk)
            if received > size:
                raise HubError(f"LFS object {oid[:12]} is larger than the declared {size} bytes")
            spool.write(chunk)
        spool.seek(0)
        await run_in_threadpool(store(request).put_blob, repo_id, oid, size, spool)
    return Response(status_code=200)
