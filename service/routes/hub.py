"""The Hugging Face Hub HTTP calls, over the embedded hub (`RepoStore`).

Enough of the protocol that the unmodified `huggingface_hub` client (`create_repo`,
`upload_folder`, `hf_hub_download`, `snapshot_download`, branches and commit shas) and
timm's `hf-hub:` loading work with `HF_ENDPOINT` pointing here; see
`../shared/notes/hub-protocol.md`. Errors are the Hub's: JSON `{"error": message}` plus
the `X-Error-Code` / `X-Error-Message` headers the client reads.

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
from urllib.parse import parse_qs

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mae_core.repo_store import (
    LFS_MIN_SIZE,
    LFS_SUFFIXES,
    SHA256_RE,
    Commit,
    HubError,
    RepoNotFound,
    RepoStore,
    check_path,
    check_repo_id,
)

router = APIRouter(tags=["hub"])
LFS_URL_TTL_S = 3600


class Unauthorized(HubError):
    status, code = 401, "Unauthorized"


class Forbidden(HubError):
    status, code = 403, "Forbidden"


class TooLarge(HubError):
    status, code = 413, "PayloadTooLarge"


def hub_error_response(exc: HubError) -> JSONResponse:
    safe = exc.message.encode("ascii", "replace").decode()[:500]
    return JSONResponse(
        {"error": exc.message},
        exc.status,
        headers={"X-Error-Code": exc.code, "X-Error-Message": safe},
    )


# -- access -------------------------------------------------------------------------------
def _store(request: Request) -> RepoStore:
    return request.app.state.store


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _check_token(request: Request, why: str) -> None:
    tokens: list[str] = request.app.state.settings.hub_tokens
    token = _token(request)
    if token is None:
        raise Unauthorized(
            f"to {why} you need a token: send 'Authorization: Bearer <token>' (HF_TOKEN)"
        )
    # compare with every token, in constant time, so timing reveals neither match nor position
    ok = False
    for known in tokens:
        ok |= hmac.compare_digest(token.encode(), known.encode())
    if not ok:
        raise Forbidden(f"this token may not {why}")


def require_write(request: Request) -> None:
    if not request.app.state.settings.hub_tokens:
        raise Forbidden("this hub is read-only: start it with MAE_HUB_TOKENS to allow writes")
    _check_token(request, "write to this hub")


def check_read(request: Request, repo_id: str) -> None:
    store = _store(request)
    private = store.meta(repo_id).get("private", False)
    if private or request.app.state.settings.hub_read_token_required:
        try:
            _check_token(request, "read this repo")
        except HubError:
            if private:  # do not confirm that a private repo exists
                raise RepoNotFound(
                    f"repository {repo_id} not found (private repos need a token)"
                ) from None
            raise


def _repo(ns: str, name: str) -> str:
    return check_repo_id(f"{ns}/{name}")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HubError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HubError("the request body must be a JSON object")
    return body


# -- repos ------------------------------------------------------------------------------
@router.post("/api/repos/create")
async def create_repo(request: Request) -> JSONResponse:
    require_write(request)
    body = await _json(request)
    if body.get("type") not in (None, "model"):
        raise HubError(f"this hub stores model repos only, not {body.get('type')!r}")
    name, org = body.get("name"), body.get("organization")
    repo_id = check_repo_id(f"{org}/{name}" if org else str(name))
    url = f"{_base(request)}/{repo_id}"
    # huggingface_hub 1.x sends "visibility"; older clients "private"
    private = body.get("visibility") == "private" or bool(body.get("private"))
    created = await run_in_threadpool(_store(request).create_repo, repo_id, private)
    if not created:
        return JSONResponse({"error": f"repository {repo_id} already exists", "url": url}, 409)
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> dict[str, list[str]]:
    body = await _json(request)
    content = str(body.get("content", ""))
    errors: list[str] = []
    if content.startswith("---"):
        header, sep, _ = content[3:].partition("\n---")
        if not sep:
            errors.append("the YAML header opened with '---' is never closed")
        else:
            try:
                meta = yaml.safe_load(header)
                if meta is not None and not isinstance(meta, dict):
                    errors.append("the YAML header must be a mapping")
            except yaml.YAMLError as e:
                errors.append(f"invalid YAML header: {e}")
    return {"errors": errors, "warnings": []}


def _sibling(entry: Any, blobs: bool) -> dict[str, Any]:
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


def _card_meta(store: RepoStore, repo_id: str, commit: Commit) -> dict[str, Any]:
    entry = commit.files.get("README.md")
    if entry is None or entry.size > 1_000_000:
        return {}
    _, blob = store.open_file(repo_id, commit.oid, "README.md")
    text = blob.read_text(errors="replace")
    if not text.startswith("---"):
        return {}
    header, sep, _ = text[3:].partition("\n---")
    try:
        meta = yaml.safe_load(header) if sep else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _repo_info(request: Request, ns: str, name: str, revision: str | None) -> dict[str, Any]:
    store, repo_id = _store(request), _repo(ns, name)
    check_read(request, repo_id)
    meta = store.meta(repo_id)
    blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
    if revision is None and not store.branches(repo_id):  # created, nothing committed yet
        commit = Commit("", None, "", "", meta["created_at"])
        sha = None
    else:
        commit = store.commit_info(repo_id, store.resolve_revision(repo_id, revision))
        sha = commit.oid
    card = _card_meta(store, repo_id, commit) if sha else {}
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


@router.get("/api/models/{ns}/{name}/refs")
async def list_refs(ns: str, name: str, request: Request) -> dict[str, Any]:
    repo_id = _repo(ns, name)
    check_read(request, repo_id)
    branches = [
        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
        for b, oid in _store(request).branches(repo_id).items()
    ]
    return {"branches": branches, "tags": [], "converts": []}


@router.post("/api/models/{ns}/{name}/branch/{branch:path}")
async def create_branch(ns: str, name: str, branch: str, request: Request) -> dict[str, Any]:
    require_write(request)
    repo_id = _repo(ns, name)
    body = await _json(request) if await request.body() else {}
    start = body.get("startingPoint")
    oid = await run_in_threadpool(_store(request).create_branch, repo_id, branch, start)
    return {"name": branch, "targetCommit": oid}


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


@router.get("/api/models/{ns}/{name}/tree/{revision}")
@router.get("/api/models/{ns}/{name}/tree/{revision}/{path:path}")
async def list_tree(
    ns: str, name: str, revision: str, request: Request, path: str = ""
) -> list[dict[str, Any]]:
    store, repo_id = _store(request), _repo(ns, name)
    check_read(request, repo_id)
    commit = store.commit_info(repo_id, store.resolve_revision(repo_id, revision))
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    prefix = path.strip("/")
    if prefix:
        check_path(prefix)
    files, dirs = _tree_entries(commit)
    if prefix and prefix not in dirs:
        from mae_core.repo_store import EntryNotFound

        raise EntryNotFound(f"folder {prefix} not found in {repo_id} at {commit.oid[:12]}")
    base = f"{prefix}/" if prefix else ""

    def wanted(p: str) -> bool:
        return p.startswith(base) and (recursive or "/" not in p[len(base) :])

    out = [_dir_entry(d, commit) for d in sorted(dirs) if wanted(d)]
    return out + sorted((f for f in files if wanted(f["path"])), key=lambda f: f["path"])


@router.post("/api/models/{ns}/{name}/paths-info/{revision}")
async def paths_info(ns: str, name: str, revision: str, request: Request) -> list[dict[str, Any]]:
    store, repo_id = _store(request), _repo(ns, name)
    check_read(request, repo_id)
    raw = (await request.body()).decode(errors="replace")
    if request.headers.get("content-type", "").startswith("application/json"):
        paths = (await _json(request)).get("paths", [])
    else:
        paths = parse_qs(raw).get("paths", [])
    commit = store.commit_info(repo_id, store.resolve_revision(repo_id, revision))
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


# -- uploads ----------------------------------------------------------------------------
@router.post("/api/models/{ns}/{name}/preupload/{revision}")
async def preupload(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    require_write(request)
    repo_id = _repo(ns, name)
    if not _store(request).exists(repo_id):
        raise RepoNotFound(f"repository {repo_id} not found: create it first")
    files = (await _json(request)).get("files")
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
            raise TooLarge(f"commit body over {limit} bytes: send large files over LFS")
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


@router.post("/api/models/{ns}/{name}/commit/{revision}")
async def commit(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    require_write(request)
    repo_id = _repo(ns, name)
    store = _store(request)
    if not store.exists(repo_id):
        raise RepoNotFound(f"repository {repo_id} not found: create it first")
    if request.query_params.get("create_pr", "").lower() in ("1", "true"):
        raise HubError("this hub has no pull requests: commit to a branch instead")
    header: dict[str, Any] = {}
    add, add_lfs, delete = [], [], []
    for item in await _ndjson(request, request.app.state.settings.hub_max_commit_bytes):
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
            if value.get("algo", "sha256") != "sha256" or not SHA256_RE.match(
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
    oid = await run_in_threadpool(
        lambda: store.commit(
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
        "commitUrl": f"{_base(request)}/{repo_id}/commit/{oid}",
        "commitOid": oid,
        "pullRequestUrl": None,
    }


def _signature(request: Request, repo_id: str, oid: str, size: int, expires: int) -> str:
    key: bytes = request.app.state.lfs_secret
    return hmac.new(key, f"{repo_id}:{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


@router.post("/{ns}/{name}.git/info/lfs/objects/batch")
async def lfs_batch(ns: str, name: str, request: Request) -> Response:
    require_write(request)
    repo_id = _repo(ns, name)
    store = _store(request)
    if not store.exists(repo_id):
        raise RepoNotFound(f"repository {repo_id} not found: create it first")
    body = await _json(request)
    if body.get("operation") != "upload":
        raise HubError("this hub's LFS batch API takes uploads only; download with /resolve/")
    objects = []
    for obj in body.get("objects") or []:
        oid, size = str(obj.get("oid", "")), obj.get("size")
        if not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
            objects.append(
                {"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}}
            )
            continue
        item: dict[str, Any] = {"oid": oid, "size": size}
        if not store.has_blob(repo_id, oid, size):
            expires = int(time.time()) + LFS_URL_TTL_S
            sig = _signature(request, repo_id, oid, size, expires)
            href = f"{_base(request)}/{repo_id}.git/info/lfs/objects/{oid}?size={size}&expires={expires}&sig={sig}"
            item.update(
                authenticated=True, actions={"upload": {"href": href, "expires_in": LFS_URL_TTL_S}}
            )
        objects.append(item)
    payload = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
    return Response(json.dumps(payload), media_type="application/vnd.git-lfs+json")


@router.put("/{ns}/{name}.git/info/lfs/objects/{oid}")
async def lfs_upload(ns: str, name: str, oid: str, request: Request) -> Response:
    repo_id = _repo(ns, name)
    q = request.query_params
    try:
        size, expires = int(q.get("size", "")), int(q.get("expires", ""))
    except ValueError:
        raise Forbidden(
            "this upload URL is incomplete: ask the LFS batch API for a new one"
        ) from None
    good = hmac.compare_digest(_signature(request, repo_id, oid, size, expires), q.get("sig", ""))
    if not good or expires < time.time():
        raise Forbidden(
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
        await run_in_threadpool(_store(request).put_blob, repo_id, oid, size, spool)
    return Response(status_code=200)


# -- downloads --------------------------------------------------------------------------
def _resolve_file(
    request: Request, ns: str, name: str, revision: str, path: str
) -> tuple[Any, Any, str]:
    store, repo_id = _store(request), _repo(ns, name)
    check_read(request, repo_id)
    oid = store.resolve_revision(repo_id, revision)
    entry, blob = store.open_file(repo_id, oid, path)
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
