"""The Hugging Face Hub HTTP calls over the embedded hub (`RepoStore`): access rules and the
reading side (repo info, listing, whoami, refs, commits, trees, file downloads, and the
repo's HTML page at `/<ns>/<name>`). Writes and deletes are `hub_write.py`.

Enough of the protocol that the unmodified `huggingface_hub` client (`create_repo`,
`upload_folder`, `hf_hub_download`, `snapshot_download`, branches and commit shas) and
timm's `hf-hub:` loading work with `HF_ENDPOINT` pointing here; see
`../shared/notes/hub-protocol.md`. Errors are the Hub's: JSON `{"error": message}` plus
the `X-Error-Code` / `X-Error-Message` headers the client reads.

Every store call runs in a worker thread (it reads and writes files, and takes a file
lock on commits): a route does its HTTP work on the event loop, then one threaded call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import ClientDisconnect

from mae_core.model_card import front_matter
from mae_core.repo_store import (
    DEFAULT_BRANCH,
    Commit,
    EntryNotFound,
    FileEntry,
    HubError,
    RepoNotFound,
    RepoStore,
    check_path,
    check_repo_id,
)

from .. import errors
from ..errors import error_response
from ..hub_schemas import PathsInfo, ValidateYaml, parse, parse_form, request_body
from ..repo_page import CSP, Branch, RepoView, render_page

router = APIRouter(tags=["hub"])


class TokenMissing(HubError):
    status, code = 401, "Unauthorized"


class TokenRefused(HubError):
    status, code = 403, "Forbidden"


class ClientGone(HubError):
    """The client dropped the connection before its body was complete (nginx's 499: the
    answer is never sent, but the metrics count it). Nothing of the body is stored."""

    status, code = 499, "ClientClosedRequest"


def hub_error_response(exc: HubError) -> JSONResponse:
    return errors.hub_error_response(exc.status, exc.message, exc.code)


class HubErrorBody(BaseModel):
    """The Hub's error body; `huggingface_hub` reads it with the X-Error-Code header."""

    error: str


# What each status means on the hub routes, for the OpenAPI document.
HUB_MEANING = {
    400: "a bad parameter or body, repo id, branch name or file path",
    401: "no token where one is needed (whoami: no token, or one this hub does not know)",
    403: "a token not in MAE_HUB_TOKENS, or a read-only hub (MAE_HUB_TOKENS unset)",
    404: "no such repo, revision or file (also a private repo asked without a token)",
    409: "the repo's state forbids it: the repo exists, or the branch exists, is the "
    "default branch or is the repo's last one",
    412: "parentCommit is not the branch head",
    413: "the commit body is over MAE_HUB_MAX_COMMIT_BYTES",
    499: "the client closed the connection before the request body was complete: nothing "
    "of it was stored (never sent, as nobody is left to read it; counted in the metrics)",
}


def hub_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a hub route: each status with the Hub's error body."""
    return {s: {"model": HubErrorBody, "description": HUB_MEANING[s]} for s in statuses}


# -- access -------------------------------------------------------------------------------
def store(request: Request) -> RepoStore:
    return request.app.state.store


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _token_index(request: Request) -> int | None:
    """The position of the request's bearer token in MAE_HUB_TOKENS; None for no token or
    an unknown one."""
    token = _token(request)
    if token is None:
        return None
    # compare with every token, in constant time, so timing reveals neither match nor position
    found = None
    for i, known in enumerate(request.app.state.settings.hub_tokens):
        match = hmac.compare_digest(token.encode(), known.encode())
        found = i if match and found is None else found
    return found


def _check_token(request: Request, why: str) -> None:
    if _token(request) is None:
        raise TokenMissing(
            f"to {why} you need a token: send 'Authorization: Bearer <token>' (HF_TOKEN)"
        )
    if _token_index(request) is None:
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


def _gone(what: str) -> ClientGone:
    return ClientGone(
        f"the client closed the connection before {what} was complete: nothing was stored"
    )


async def body_chunks(request: Request, what: str) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that drops the connection part-way is
    ClientGone (499), not a server error: what was received of `what` is discarded."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise _gone(what) from None


async def body_bytes(request: Request) -> bytes:
    """The whole request body, kept for a second read (ClientGone when the client drops
    the connection part-way)."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise _gone("the request body") from None


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await body_bytes(request))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HubError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HubError("the request body must be a JSON object")
    return body


# -- repos ------------------------------------------------------------------------------
@router.post(
    "/api/validate-yaml",
    responses=hub_errors(400, 499),
    openapi_extra=request_body({"application/json": ValidateYaml}),
)
async def validate_yaml(request: Request) -> dict[str, list[str]]:
    body: ValidateYaml = parse(ValidateYaml, await json_body(request), "the validate-yaml body")
    try:
        front_matter(body.content)
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


CARD_MAX_BYTES = 1_000_000  # a card larger than this is neither parsed nor rendered


def _card_text(repos: RepoStore, repo_id: str, commit: Commit) -> str | None:
    """The model card (README.md) at `commit`; None when there is none or it is too large."""
    entry = commit.files.get("README.md")
    if entry is None or entry.size > CARD_MAX_BYTES:
        return None
    _, blob = repos.open_file(repo_id, commit.oid, "README.md")
    return blob.read_text(errors="replace")


def _card_meta(repos: RepoStore, repo_id: str, commit: Commit) -> dict[str, Any]:
    """The model card's YAML header ({} when there is none or it does not parse)."""
    text = _card_text(repos, repo_id, commit)
    try:
        return front_matter(text) if text else {}
    except ValueError:
        return {}


def _head(repos: RepoStore, repo_id: str, revision: str | None) -> tuple[Commit, str | None]:
    """The commit at `revision` (default: the default branch) and its sha; for a repo with
    no commit yet, an empty one dated at the repo's creation and None."""
    if revision is None and not repos.branches(repo_id):
        return Commit("", None, "", "", repos.meta(repo_id)["created_at"]), None
    commit = repos.commit_info(repo_id, repos.resolve_revision(repo_id, revision))
    return commit, commit.oid


def _model_json(
    repo_id: str, meta: dict[str, Any], commit: Commit, sha: str | None, card: dict[str, Any]
) -> dict[str, Any]:
    """What `repo_info` and `list_models` say of a repo (no files)."""
    return {
        "_id": repo_id,
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0],
        "sha": sha,
        "lastModified": commit.date,
        "createdAt": meta["created_at"],
        "private": bool(meta.get("private")),
        "disabled": False,
        "gated": False,
        "library_name": card.get("library_name"),
        "pipeline_tag": card.get("pipeline_tag"),
        "tags": card.get("tags") or [],
    }


def _siblings(commit: Commit, blobs: bool) -> list[dict[str, Any]]:
    return [_sibling(e, blobs) for e in sorted(commit.files.values(), key=lambda e: e.path)]


def _repo_info(request: Request, ns: str, name: str, revision: str | None) -> dict[str, Any]:
    repos, repo_id = store(request), repo_id_of(ns, name)
    check_read(request, repo_id)
    commit, sha = _head(repos, repo_id, revision)
    card = _card_meta(repos, repo_id, commit) if sha else {}
    blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
    return {
        **_model_json(repo_id, repos.meta(repo_id), commit, sha, card),
        "cardData": card or None,
        "siblings": _siblings(commit, blobs),
    }


@router.get("/api/models/{ns}/{name}", responses=hub_errors(400, 401, 403, 404))
async def repo_info(ns: str, name: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_repo_info, request, ns, name, None)


@router.get(
    "/api/models/{ns}/{name}/revision/{revision:path}", responses=hub_errors(400, 401, 403, 404)
)
async def repo_info_at(ns: str, name: str, revision: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_repo_info, request, ns, name, revision)


# -- listing repos, whoami ------------------------------------------------------------------
PAGE_MAX = 1000  # repos (or commits) per page at most; the rest follow the Link header
COMMITS_PAGE = 100
LIST_PARAMS = {
    "author", "search", "filter", "pipeline_tag", "gated",  # which repos
    "sort", "direction", "limit", "cursor",  # in what order, how many per page
    "full", "cardData", "config", "expand",  # what is said of each
}  # fmt: skip
SORTS = {
    "id": "id",
    "createdAt": "createdAt",
    "created_at": "createdAt",
    "lastModified": "lastModified",
    "last_modified": "lastModified",
}


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("1", "true", "0", "false"):
        raise HubError(f"{name} must be true or false, not {value!r}")
    return value in ("1", "true")


def _int_param(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise HubError(f"{name} must be a whole number of at least 1, not {raw!r}")
    return min(value, most)


def _next_link(request: Request, path: str, **params: str) -> str:
    """A Link header's `next` URL: `path` with this request's query, `params` replaced."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in params]
    query += list(params.items())
    return f'<{base_url(request)}{path}?{urlencode(query)}>; rel="next"'


def _sort_key(sort: str, descending: bool, item: dict[str, Any]) -> list[Any]:
    """An ascending key for the asked order; the repo id breaks ties, so each key is unique."""
    if sort == "id":
        return [item["id"]] if not descending else [[-ord(c) for c in item["id"]] + [1]]
    try:
        ms = int(datetime.fromisoformat(item[sort]).timestamp() * 1000)
    except (TypeError, ValueError):  # a hand-written record with no usable date: oldest
        ms = 0
    return [-ms if descending else ms, item["id"]]


def _encode_cursor(state: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def _decode_cursor(raw: str, sort: str, descending: bool) -> list[Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        ok = isinstance(state, list) and len(state) == 3 and state[:2] == [sort, descending]
    except (ValueError, UnicodeDecodeError, binascii.Error):
        ok = False
    if not ok:
        raise HubError("invalid cursor: follow the Link header of the previous page as it is")
    return state[2]


def _listed(
    repos: RepoStore, repo_id: str, private_ok: bool, config: bool
) -> tuple[dict[str, Any], dict[str, Any], Commit] | None:
    """A repo as listed (its JSON, its card's header, its head) or None when hidden."""
    try:
        meta = repos.meta(repo_id)
    except RepoNotFound:  # deleted since the folder was listed
        return None
    if meta.get("private") and not private_ok:
        return None
    try:
        commit, sha = _head(repos, repo_id, None)
        card = _card_meta(repos, repo_id, commit) if sha else {}
    except HubError:  # no default branch (a repo copied in by hand): listed without a head
        commit, sha, card = Commit("", None, "", "", meta["created_at"]), None, {}
    item = _model_json(repo_id, meta, commit, sha, card)
    if config and "config.json" in commit.files:
        try:
            _, blob = repos.open_file(repo_id, commit.oid, "config.json")
            item["config"] = json.loads(blob.read_bytes()) if blob.stat().st_size < 1e6 else None
        except (HubError, ValueError):
            item["config"] = None
    return item, card, commit


def _list_models(request: Request) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `GET /api/models` and the cursor of the next (None on the last)."""
    q = request.query_params
    unknown = sorted(set(q) - LIST_PARAMS)
    if unknown:
        raise HubError(
            f"this hub cannot list models by {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(LIST_PARAMS, key=str.lower))}"
        )
    if request.app.state.settings.hub_read_token_required:
        _check_token(request, "list this hub's repos")
    sort = SORTS.get(q.get("sort") or "id")
    if sort is None:
        raise HubError(
            f"cannot sort by {q.get('sort')!r}: this hub keeps no downloads, likes or trends; "
            "sort by id, createdAt or lastModified"
        )
    direction = q.get("direction", "1" if sort == "id" else "-1")
    if direction not in ("1", "-1"):
        raise HubError(f"direction must be 1 or -1, not {direction!r}")
    descending = direction == "-1"
    page = _int_param(request, "limit", PAGE_MAX, PAGE_MAX)
    full, with_card = _flag(request, "full"), _flag(request, "cardData")
    config = _flag(request, "config")
    if _flag(request, "gated"):
        return [], None  # no repo here is gated
    author, search = q.get("author"), (q.get("search") or "").lower()
    wanted, pipeline = set(q.getlist("filter")), q.get("pipeline_tag")
    repos, private_ok = store(request), _token_index(request) is not None
    found = []
    for repo_id in repos.repos():
        if (author and repo_id.split("/")[0] != author) or search not in repo_id.lower():
            continue
        listed = _listed(repos, repo_id, private_ok, config)
        if listed is None:
            continue
        item, card, commit = listed
        tags = item["tags"] if isinstance(item["tags"], list) else [item["tags"]]
        labels = {str(t) for t in [*tags, item["library_name"], item["pipeline_tag"]]}
        if not wanted <= labels or (pipeline and item["pipeline_tag"] != pipeline):
            continue
        if full:
            item["siblings"] = _siblings(commit, blobs=False)
        if full or with_card:
            item["cardData"] = card or None
        found.append((_sort_key(sort, descending, item), item))
    found.sort(key=lambda pair: pair[0])
    if "cursor" in q:
        after = _decode_cursor(q["cursor"], sort, descending)
        try:
            found = [pair for pair in found if pair[0] > after]
        except TypeError:
            raise HubError("invalid cursor: follow the Link header of the previous page") from None
    more = len(found) > page
    found = found[:page]
    cursor = _encode_cursor([sort, descending, found[-1][0]]) if more else None
    return [item for _, item in found], cursor


@router.get("/api/models", responses=hub_errors(400, 401, 403))
async def list_models(request: Request) -> JSONResponse:
    """The repos, by id (or createdAt, lastModified: newest first), filtered by author,
    search (part of the id), filter (tags) and pipeline_tag; private repos only with a
    token. Pages of `limit` (at most 1000) linked by the `Link: <...>; rel="next"` header,
    as `huggingface_hub`'s `list_models` follows."""
    items, cursor = await run_in_threadpool(_list_models, request)
    headers = {"Link": _next_link(request, "/api/models", cursor=cursor)} if cursor else None
    return JSONResponse(items, headers=headers)


@router.get("/api/whoami-v2", responses=hub_errors(401))
async def whoami(request: Request) -> dict[str, Any]:
    """Which of MAE_HUB_TOKENS the request's token is (`token-1` for the first): this hub
    has tokens, not accounts, and every token may write."""
    index = _token_index(request)
    if index is None:
        why = "a token" if _token(request) is None else "one of this hub's tokens (MAE_HUB_TOKENS)"
        raise TokenMissing(f"whoami needs {why}: send 'Authorization: Bearer <token>' (HF_TOKEN)")
    name = f"token-{index + 1}"
    return {
        "type": "user",
        "id": name,
        "name": name,
        "fullname": f"mae-hub token {index + 1} of MAE_HUB_TOKENS",
        "isPro": False,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": name, "role": "write"}},
    }


def _refs(request: Request, ns: str, name: str) -> dict[str, Any]:
    repo_id = repo_id_of(ns, name)
    check_read(request, repo_id)
    branches = [
        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
        for b, oid in store(request).branches(repo_id).items()
    ]
    return {"branches": branches, "tags": [], "converts": []}


@router.get("/api/models/{ns}/{name}/refs", responses=hub_errors(400, 401, 403, 404))
async def list_refs(ns: str, name: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_refs, request, ns, name)


def _commits(
    request: Request, ns: str, name: str, revision: str
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a revision's history (newest first) and where the next page starts."""
    repos, repo_id = store(request), repo_id_of(ns, name)
    check_read(request, repo_id)
    oid = repos.resolve_revision(repo_id, revision)
    limit = _int_param(request, "limit", COMMITS_PAGE, PAGE_MAX)
    expand = request.query_params.getlist("expand[]") + request.query_params.getlist("expand")
    commits, next_oid = repos.history(repo_id, oid, limit)
    items = []
    for c in commits:
        item: dict[str, Any] = {
            "id": c.oid,
            "authors": [],  # this hub records no author: its tokens are not accounts
            "date": c.date,
            "title": c.summary,
            "message": c.description,
        }
        if "formatted" in expand:
            item["formatted"] = {
                "title": html.escape(c.summary),
                "message": html.escape(c.description),
            }
        items.append(item)
    return items, next_oid


@router.get(
    "/api/models/{ns}/{name}/commits/{revision:path}", responses=hub_errors(400, 401, 403, 404)
)
async def list_commits(ns: str, name: str, revision: str, request: Request) -> JSONResponse:
    """The commits of `revision` back to the first, newest first, `limit` (default 100) a
    page; the next page is the `Link` header's, pinned to a commit sha so that a branch
    moving meanwhile changes nothing."""
    items, next_oid = await run_in_threadpool(_commits, request, ns, name, revision)
    headers = None
    if next_oid:
        path = f"/api/models/{ns}/{name}/commits/{next_oid}"
        headers = {"Link": _next_link(request, path)}
    return JSONResponse(items, headers=headers)


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


@router.get("/api/models/{ns}/{name}/tree/{revision}", responses=hub_errors(400, 401, 403, 404))
@router.get(
    "/api/models/{ns}/{name}/tree/{revision}/{path:path}", responses=hub_errors(400, 401, 403, 404)
)
async def list_tree(
    ns: str, name: str, revision: str, request: Request, path: str = ""
) -> list[dict[str, Any]]:
    return await run_in_threadpool(_tree, request, ns, name, revision, path)


def _paths_info(
    request: Request, repo_id: str, revision: str, paths: list[str]
) -> list[dict[str, Any]]:
    commit = _commit(request, repo_id, revision)  # read access checked by the route
    files, dirs = _tree_entries(commit)
    by_path = {f["path"]: f for f in files}
    out = []
    for p in paths:
        p = p.strip("/")
        if p in by_path:
            out.append(by_path[p])
        elif p in dirs:
            out.append(_dir_entry(p, commit))
    return out


@router.post(
    "/api/models/{ns}/{name}/paths-info/{revision}",
    responses=hub_errors(400, 401, 403, 404, 499),
    # huggingface_hub sends a form; a JSON body is read when its Content-Type says so
    openapi_extra=request_body(
        {"application/x-www-form-urlencoded": PathsInfo, "application/json": PathsInfo}
    ),
)
async def paths_info(ns: str, name: str, revision: str, request: Request) -> list[dict[str, Any]]:
    repo_id = repo_id_of(ns, name)
    await run_in_threadpool(check_read, request, repo_id)  # before the body: 401/404 first
    what = "the paths-info body"
    if request.headers.get("content-type", "").startswith("application/json"):
        body: PathsInfo = parse(PathsInfo, await json_body(request), what)
    else:
        body = parse_form(PathsInfo, (await body_bytes(request)).decode(errors="replace"), what)
    return await run_in_threadpool(_paths_info, request, repo_id, revision, body.paths)


# -- downloads --------------------------------------------------------------------------
def _resolve_file(
    request: Request, ns: str, name: str, revision: str, path: str
) -> tuple[Any, Any, str]:
    repos, repo_id = store(request), repo_id_of(ns, name)
    check_read(request, repo_id)
    oid = repos.resolve_revision(repo_id, revision)
    entry, blob = repos.open_file(repo_id, oid, path)
    return entry, blob, oid


DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    206: {"description": "the part asked for by a Range header"},
    416: {"description": "a Range header outside the file"},
    **hub_errors(400, 401, 403, 404),
}


# One route per method: a single GET+HEAD route gives both the same OpenAPI operation id.
@router.get("/{ns}/{name}/resolve/{revision}/{path:path}", responses=DOWNLOAD_RESPONSES)
@router.head("/{ns}/{name}/resolve/{revision}/{path:path}", responses=DOWNLOAD_RESPONSES)
async def resolve(ns: str, name: str, revision: str, path: str, request: Request) -> Response:
    entry, blob, oid = await run_in_threadpool(_resolve_file, request, ns, name, revision, path)
    headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    filename = path.rsplit("/", 1)[-1]
    return FileResponse(blob, headers=headers, filename=filename, content_disposition_type="inline")


# -- the repo's HTML page -------------------------------------------------------------------
class _PageNamespace(Convertor[str]):
    """A namespace segment that is not one of the service's own first path segments, so
    `/{ns}/{name}` never shadows `/api/...`, `/v1/...`, `/static/...` or `/docs/...` (a
    route that matched would answer instead of them)."""

    regex = r"(?!(?:api|v1|static|static-offline-docs|docs|redoc|lfs)/)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("page_ns", _PageNamespace())


class _ErrorDetail(BaseModel):
    code: str
    message: str


class ServiceErrorBody(BaseModel):
    """The service's own error body: the page answers people and browsers, not the Hub client."""

    error: _ErrorDetail


PAGE_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}
PAGE_MEANING = {
    400: "an invalid repo id",
    401: "MAE_HUB_READ_TOKEN_REQUIRED is set and no token was sent",
    403: "MAE_HUB_READ_TOKEN_REQUIRED is set and the token is not one of MAE_HUB_TOKENS",
    404: "no such repo (also a private repo asked without a token)",
}


def _page_view(request: Request, ns: str, name: str) -> RepoView:
    repos, repo_id = store(request), repo_id_of(ns, name)
    check_read(request, repo_id)
    heads = repos.branches(repo_id)
    branches = []
    for branch, oid in heads.items():
        try:
            commit = repos.commit_info(repo_id, oid)
            branches.append(Branch(branch, oid, commit.summary, commit.date))
        except HubError:  # a ref to a missing commit (edited by hand): shown, undescribed
            branches.append(Branch(branch, oid, "(commit record missing)", ""))
    head = repos.commit_info(repo_id, heads[DEFAULT_BRANCH]) if DEFAULT_BRANCH in heads else None
    readme = head.files.get("README.md") if head else None
    card = _card_text(repos, repo_id, head) if head else None
    try:
        card_meta = front_matter(card) if card else {}
    except ValueError:
        card_meta = {}
    return RepoView(
        repo_id=repo_id,
        private=bool(repos.meta(repo_id).get("private")),
        default_branch=DEFAULT_BRANCH,
        head=head,
        branches=branches,
        card=card,
        card_size=readme.size if readme else None,
        card_meta=card_meta,
    )


@router.get(
    "/{ns:page_ns}/{name}",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}, "description": "the repo's page"},
        **{
            s: {"model": ServiceErrorBody, "description": meaning}
            for s, meaning in PAGE_MEANING.items()
        },
    },
)
async def repo_page(ns: str, name: str, request: Request) -> Response:
    """The repo as a web page, where `mae push` points: the default branch's files and
    sizes, the branches, and the model card. Errors in the service's own JSON shape."""
    try:
        view = await run_in_threadpool(_page_view, request, ns, name)
    except HubError as exc:
        code = PAGE_CODES.get(exc.status, "invalid_request")
        return error_response(exc.status, code, exc.message)
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return HTMLResponse(render_page(view), headers=headers)
