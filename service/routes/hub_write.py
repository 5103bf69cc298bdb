"""The writing side of the Hub protocol: create a repo or a branch, commit files, and
the Git LFS upload of large files. Every route but the signed LFS upload needs a write
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
    SHA256_RE,
    HubError,
    RepoNotFound,
    RepoStore,
    check_path,
    check_repo_id,
)

from .hub import TokenRefused, base_url, json_body, repo_id_of, require_write, store

router = APIRouter(tags=["hub"])
WRITE = [Depends(require_write)]
LFS_URL_TTL_S = 3600


class CommitTooLarge(HubError):
    status, code = 413, "PayloadTooLarge"


def _must_exist(repos: RepoStore, repo_id: str) -> None:
    if not repos.exists(repo_id):
        raise RepoNotFound(f"repository {repo_id} not found: create it first")


@router.post("/api/repos/create", dependencies=WRITE)
async def create_repo(request: Request) -> JSONResponse:
    body = await json_body(request)
    if body.get("type") not in (None, "model"):
        raise HubError(f"this hub stores model repos only, not {body.get('type')!r}")
    name, org = body.get("name"), body.get("organization")
    repo_id = check_repo_id(f"{org}/{name}" if org else str(name))
    url = f"{base_url(request)}/{repo_id}"
    # huggingface_hub 1.x sends "visibility"; older clients "private"
    private = body.get("visibility") == "private" or bool(body.get("private"))
    created = await run_in_threadpool(store(request).create_repo, repo_id, private)
    if not created:
        return JSONResponse({"error": f"repository {repo_id} already exists", "url": url}, 409)
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.post("/api/models/{ns}/{name}/branch/{branch:path}", dependencies=WRITE)
async def create_branch(ns: str, name: str, branch: str, request: Request) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    body = await json_body(request) if await request.body() else {}
    start = body.get("startingPoint")
    oid = await run_in_threadpool(store(request).create_branch, repo_id, branch, start)
    return {"name": branch, "targetCommit": oid}


@router.post("/api/models/{ns}/{name}/preupload/{revision}", dependencies=WRITE)
async def preupload(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    await run_in_threadpool(_must_exist, store(request), repo_id)
    files = (await json_body(request)).get("files")
    if not isinstance(files, list):
        raise HubError("preupload needs a 'files' list")
    lfs_ok = request.headers.get("x-mae-lfs", "").lower() == "basic"
    out = []
    for f in files:
        path = check_path(str(f.get("path", "")))
        big = path.endswith(LFS_SUFFIXES) or int(f.get("size") or 0) >= LFS_MIN_SIZE
        out.append(
            {
                "path": path,
                "uploadMode": "lfs" if lfs_ok and big else "regular",
                "shouldIgnore": False,
            }
        )
    return {"files": out}


async def _ndjson(request: Request, limit: int) -> list[dict[str, Any]]:
    """The commit body's lines, parsed; refused past `limit` bytes."""
    buf, total, lines = b"", 0, []
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise CommitTooLarge(f"commit body over {limit} bytes: send large files over LFS")
        buf += chunk
        *complete, buf = buf.split(b"\n")
        lines.extend(complete)
    lines.append(buf)
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                item = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise HubError(f"commit body line {n} is not JSON") from None
            if (
                not isinstance(item, dict)
                or "key" not in item
                or not isinstance(item.get("value"), dict)
            ):
                raise HubError(f"commit body line {n} is not a {{key, value}} object")
            out.append(item)
    return out


def _operations(
    items: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[tuple[str, bytes]], list[tuple[str, str, int]], list[str]]:
    """A commit body's lines -> (header, files added inline, LFS files added, deletions)."""
    header: dict[str, Any] = {}
    add, add_lfs, delete = [], [], []
    for item in items:
        key, value = item["key"], item["value"]
        if key == "header":
            header = value
        elif key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(f"{value.get('path')}: only base64 file contents are accepted")
            try:
                data = base64.b64decode(value.get("content", ""), validate=True)
            except (binascii.Error, ValueError):
                raise HubError(f"{value.get('path')}: content is not valid base64") from None
            add.append((check_path(str(value.get("path", ""))), data))
        elif key == "lfsFile":
            if value.get("algo", "sha256") != "sha256" or not SHA256_RE.fullmatch(
                str(value.get("oid", ""))
            ):
                raise HubError(f"{value.get('path')}: an LFS file needs a sha256 oid")
            add_lfs.append(
                (check_path(str(value.get("path", ""))), value["oid"], int(value.get("size", -1)))
            )
        elif key in ("deletedFile", "deletedFolder"):
            delete.append(str(value.get("path", "")))
        else:
            raise HubError(f"unknown commit operation {key!r}")
    return header, add, add_lfs, delete


@router.post("/api/models/{ns}/{name}/commit/{revision}", dependencies=WRITE)
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
            summary=str(header.get("summary", "")),
            description=str(header.get("description", "")),
            parent_commit=header.get("parentCommit"),
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


def _lfs_objects(request: Request, repo_id: str, objects: list[Any]) -> list[dict[str, Any]]:
    """The batch API's answer per object: an upload URL for each one not stored yet."""
    repos = store(request)
    out = []
    for obj in objects:
        oid, size = str(obj.get("oid", "")), obj.get("size")
        if not SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
            out.append(
                {"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}}
            )
            continue
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


@router.post("/{ns}/{name}.git/info/lfs/objects/batch", dependencies=WRITE)
async def lfs_batch(ns: str, name: str, request: Request) -> Response:
    repo_id = repo_id_of(ns, name)
    await run_in_threadpool(_must_exist, store(request), repo_id)
    body = await json_body(request)
    if body.get("operation") != "upload":
        raise HubError("this hub's LFS batch API takes uploads only; download with /resolve/")
    objects = await run_in_threadpool(_lfs_objects, request, repo_id, body.get("objects") or [])
    payload = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
    return Response(json.dumps(payload), media_type="application/vnd.git-lfs+json")


# No token here: the URL itself is the permission (signed by lfs_batch, short-lived).
@router.put("/{ns}/{name}.git/info/lfs/objects/{oid}")
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
        async for chunk in request.stream():
            received += len(chunk)
            if received > size:
                raise HubError(f"LFS object {oid[:12]} is larger than the declared {size} bytes")
            spool.write(chunk)
        spool.seek(0)
        await run_in_threadpool(store(request).put_blob, repo_id, oid, size, spool)
    return Response(status_code=200)
