"""The hub's request bodies in /openapi.json: every operation that reads a body documents
one, and what the real `huggingface_hub` client sends (recorded inside the server) is what
the document describes, field by field."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    constants,
)
from pydantic import BaseModel, TypeAdapter, ValidationError

from service import hub_schemas as hs
from service.app import create_app
from service.settings import Settings
from tests.service import conftest
from tests.service.conftest import TOKEN, LiveServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_METHODS = {"post", "put", "patch"}
# The one DELETE that reads a body; DELETE .../branch/{branch} reads none (the client sends none).
DELETES_WITH_A_BODY = {"/api/repos/delete"}
# What each hub route that reads a body documents, per media type: the model of hub_schemas
# (or a ready schema), against which the client's bodies are validated below.
JSON, LFS_JSON, NDJSON = "application/json", "application/vnd.git-lfs+json", "application/x-ndjson"
FORM, BYTES = "application/x-www-form-urlencoded", "application/octet-stream"
DOCUMENTED: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/validate-yaml"): {JSON: hs.ValidateYaml},
    ("POST", "/api/models/{ns}/{name}/paths-info/{revision}"): {
        FORM: hs.PathsInfo,
        JSON: hs.PathsInfo,
    },
    ("POST", "/api/repos/create"): {JSON: hs.CreateRepo},
    ("POST", "/api/models/{ns}/{name}/branch/{branch}"): {JSON: hs.CreateBranch},
    ("DELETE", "/api/repos/delete"): {JSON: hs.DeleteRepo},
    ("POST", "/api/models/{ns}/{name}/preupload/{revision}"): {JSON: hs.Preupload},
    ("POST", "/api/models/{ns}/{name}/commit/{revision}"): {NDJSON: hs.CommitLine},
    ("POST", "/{ns}/{name}.git/info/lfs/objects/batch"): {LFS_JSON: hs.LfsBatch, JSON: hs.LfsBatch},
    ("PUT", "/{ns}/{name}.git/info/lfs/objects/{oid}"): {BYTES: hs.BINARY},
}


def _document(tmp_path: Path) -> dict[str, Any]:
    return create_app(Settings(models_dir=tmp_path / "models", hub_only=True)).openapi()


def _operation_path(route_path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route_path)  # {name:path} -> {name}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_operation_that_reads_a_body_documents_its_schema(tmp_path: Path) -> None:
    doc = _document(tmp_path)
    schemas = doc.get("components", {}).get("schemas", {})
    with_body = set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if method in BODY_METHODS or (method == "delete" and path in DELETES_WITH_A_BODY):
                assert body and body["content"], f"{method.upper()} {path} documents no body"
                for media, entry in body["content"].items():
                    assert entry.get("schema"), f"{method.upper()} {path} {media}: no schema"
                with_body.add((method.upper(), path))
            else:
                assert body is None, f"{method.upper()} {path} documents a body it never reads"
            # every reference resolves inside the document (no stray #/$defs/...)
            for ref in _refs(body):
                assert ref.startswith("#/components/schemas/"), (path, ref)
                assert ref.rsplit("/", 1)[1] in schemas, (path, ref)
    assert set(DOCUMENTED) <= with_body
    for (method, path), content in DOCUMENTED.items():
        documented = doc["paths"][path][method.lower()]["requestBody"]["content"]
        assert set(documented) == set(content), (method, path)
        for media, tp in content.items():
            expected = tp if isinstance(tp, dict) else hs.schema_of(tp)
            assert documented[media]["schema"] == expected, (method, path, media)
    commit = doc["paths"]["/api/models/{ns}/{name}/commit/{revision}"]["post"]["requestBody"]
    keys = [
        line["properties"]["key"]["const"] for line in commit["content"][NDJSON]["schema"]["oneOf"]
    ]
    assert keys == ["header", "file", "lfsFile", "deletedFile", "deletedFolder"]
    assert "one line" in commit["description"]


# -- what the client really sends ---------------------------------------------------------
@dataclass
class Sent:
    method: str
    path: str  # the operation's path in the document
    params: dict[str, str]  # the path's parameters and the query's
    headers: dict[str, str]
    body: bytes  # as much as the route read

    @property
    def media(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";")[0].strip().lower() if value else None


class BodyRecorder:
    """ASGI middleware: each request's headers and the body bytes the route read, with the
    route that answered, so that the test sees exactly what the client put on the wire."""

    def __init__(self, app: Any, log: list[Sent]) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def reading() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        await self.app(scope, reading, send)
        if scope.get("route") is not None:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            path = _operation_path(scope["route"].path)
            query = parse_qs(scope["query_string"].decode())
            params = {**{k: v[-1] for k, v in query.items()}, **scope.get("path_params", {})}
            self.log.append(Sent(scope["method"], path, params, headers, b"".join(chunks)))


@pytest.fixture
def recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> tuple[LiveServer, list[Sent]]:
    """The `hub` fixture's server, with a BodyRecorder inside (conftest's `serve` builds the
    app through `create_app`, which is wrapped here for this test only)."""
    log: list[Sent] = []

    def recording_app(settings: Settings) -> Any:
        app = create_app(settings)
        app.add_middleware(BodyRecorder, log=log)
        return app

    monkeypatch.setattr(conftest, "create_app", recording_app)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # plain Git LFS, as `mae push` does: hf_xet would try the Xet protocol this hub lacks
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return request.getfixturevalue("hub"), log


def _undocumented_keys(value: Any, where: str = "") -> list[str]:
    """Keys the client sent that no field documents (the models keep them as extras)."""
    if isinstance(value, list):
        return [
            k for i, item in enumerate(value) for k in _undocumented_keys(item, f"{where}[{i}]")
        ]
    if not isinstance(value, BaseModel):
        return []
    out = [f"{where}.{k}" for k in value.model_extra or {}]
    for name in type(value).model_fields:
        out += _undocumented_keys(getattr(value, name), f"{where}.{name}")
    return out


def _check(sent: Sent, tp: Any) -> list[str]:
    """Validate one recorded body against its documented type; the keys left undocumented."""
    where = f"{sent.method} {sent.path}"
    if sent.media in (JSON, LFS_JSON):
        value = TypeAdapter(tp).validate_json(sent.body, strict=True)
        return _undocumented_keys(value, where)
    if sent.media == NDJSON:
        lines = [line for line in sent.body.split(b"\n") if line.strip()]
        adapter = TypeAdapter(hs.CommitLine)
        parsed = [adapter.validate_json(line, strict=True) for line in lines]
        assert parsed and parsed[0].key == "header", f"{where}: the header is not first"
        return _undocumented_keys(parsed, where)
    if sent.media == FORM:
        fields = parse_qs(sent.body.decode(), keep_blank_values=True)
        properties = hs.schema_of(tp)["properties"]
        lists = {n for n, p in properties.items() if p.get("type") == "array"}
        values = {k: v if k in lists else v[-1] for k, v in fields.items()}
        return _undocumented_keys(tp.model_validate(values), where)  # form values are text
    raise AssertionError(f"{where}: no check for {sent.media}")


def test_the_clients_bodies_match_the_documented_schemas(
    recorded: tuple[LiveServer, list[Sent]],
) -> None:
    hub, log = recorded
    api = HfApi(endpoint=hub.url, token=TOKEN, headers={"X-MAE-LFS": "basic"})
    repo = "team/bodies"
    api.create_repo(repo, private=True)
    api.create_branch(repo, branch="dev")
    api.create_branch(repo, branch="from-main", revision="main")
    card = b"---\nlibrary_name: timm\ntags: [mae]\n---\n# Bodies\n"
    api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=repo)
    weights = bytes(range(256)) * 16  # a .safetensors name goes over LFS
    api.upload_file(path_or_fileobj=weights, path_in_repo="w.safetensors", repo_id=repo)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="sub/a.txt", repo_id=repo)
    head = api.model_info(repo).sha
    api.create_commit(
        repo,
        operations=[
            CommitOperationAdd("notes/b.txt", b"bee"),
            CommitOperationCopy("README.md", "README-copy.md"),
            CommitOperationCopy("w.safetensors", "w-copy.safetensors"),  # an lfsFile, no size
            CommitOperationDelete("sub/", is_folder=True),
        ],
        commit_message="several kinds",
        commit_description="an addition, two copies and a folder deletion",
        parent_commit=head,
    )
    api.delete_file("README-copy.md", repo)
    api.delete_file("w-copy.safetensors", repo)
    infos = api.get_paths_info(repo, ["README.md", "notes", "gone.txt"])
    assert sorted(i.path for i in infos) == ["README.md", "notes"]
    assert api.list_repo_files(repo) == [
        ".gitattributes",
        "README.md",
        "notes/b.txt",
        "w.safetensors",
    ]
    api.delete_branch(repo, branch="dev")
    api.delete_repo(repo)
    assert not api.repo_exists(repo)

    paths = httpx.get(f"{hub.url}/openapi.json").json()["paths"]  # the document it serves
    undocumented, seen, kinds = [], set(), set()
    for sent in log:
        operation = paths.get(sent.path, {}).get(sent.method.lower())
        if operation is None:
            continue
        body = operation.get("requestBody")
        if body is None:  # a route that reads no body: the client sent none
            assert sent.body == b"" and int(sent.headers.get("content-length", "0")) == 0, sent
            continue
        content = DOCUMENTED[(sent.method, sent.path)]
        seen.add((sent.method, sent.path))
        if sent.media is None or sent.media == BYTES:  # no Content-Type: bytes (RFC 9110)
            assert content == {BYTES: hs.BINARY}, sent
            assert len(sent.body) == int(sent.params["size"]) == len(weights)
            assert hashlib.sha256(sent.body).hexdigest() == sent.params["oid"]
            continue
        assert sent.media in content, f"{sent.method} {sent.path} sent {sent.media}"
        try:
            undocumented += _check(sent, content[sent.media])
        except ValidationError as exc:
            raise AssertionError(f"{sent.method} {sent.path}: {sent.body[:300]!r}\n{exc}") from None
        if sent.media == NDJSON:
            kinds.update(json.loads(line)["key"] for line in sent.body.splitlines() if line.strip())
    assert not undocumented, f"the client sent fields the document does not name: {undocumented}"
    assert seen == set(DOCUMENTED), f"not exercised: {set(DOCUMENTED) - seen}"
    assert kinds == {"header", "file", "lfsFile", "deletedFile", "deletedFolder"}


# -- what the routes refuse, the document refuses too ---------------------------------------
SHA = "ab" * 32
JSON_REFUSED = {
    "create-a-dataset": ("POST", "/api/repos/create", hs.CreateRepo, {"name": "y", "type": "x"}),
    "delete-no-name": ("DELETE", "/api/repos/delete", hs.DeleteRepo, {"organization": "team"}),
    "preupload-no-files": ("POST", "/api/models/team/x/preupload/main", hs.Preupload, {}),
    "lfs-download": ("POST", "/team/x.git/info/lfs/objects/batch", hs.LfsBatch, {"objects": []}),
}
COMMIT_REFUSED = {
    "copyFile": {"key": "copyFile", "value": {"path": "b", "src": "a"}},
    "text-encoding": {"key": "file", "value": {"path": "a", "encoding": "utf-8"}},
    "sha1": {"key": "lfsFile", "value": {"path": "a", "algo": "sha1", "oid": SHA, "size": 1}},
    "short-oid": {"key": "lfsFile", "value": {"path": "a", "oid": "abc", "size": 1}},
    "negative-size": {"key": "lfsFile", "value": {"path": "a", "oid": SHA, "size": -1}},
    "text-size": {"key": "lfsFile", "value": {"path": "a", "oid": SHA, "size": "1"}},
}


def _refused_by_both(hub: LiveServer, method: str, url: str, tp: Any, body: dict) -> None:
    HfApi(endpoint=hub.url, token=TOKEN).create_repo("team/x")
    media = NDJSON if tp is hs.CommitLine else JSON
    headers = {**AUTH, "Content-Type": media}
    content = json.dumps(body)
    if media == NDJSON:  # after a header, so that the line itself is what is refused
        content = json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + content
    r = httpx.request(method, hub.url + url, content=content, headers=headers)
    assert r.status_code == 400, r.text
    with pytest.raises(ValidationError):
        TypeAdapter(tp).validate_json(json.dumps(body), strict=True)


@pytest.mark.parametrize("case", JSON_REFUSED)
def test_a_json_body_the_route_refuses_the_document_refuses(hub: LiveServer, case: str) -> None:
    """The schemas are no looser than the routes (the client test shows they are no
    stricter): each of these bodies is a 400 and fails its documented schema."""
    _refused_by_both(hub, *JSON_REFUSED[case])


@pytest.mark.parametrize("case", COMMIT_REFUSED)
def test_a_commit_line_the_route_refuses_the_document_refuses(hub: LiveServer, case: str) -> None:
    url = "/api/models/team/x/commit/main"
    _refused_by_both(hub, "POST", url, hs.CommitLine, COMMIT_REFUSED[case])
