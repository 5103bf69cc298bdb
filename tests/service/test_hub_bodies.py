"""Malformed hub bodies through a real server: each is a 400 in the Hub's error shape that
names the field, never a 500, and the server goes on serving. And the two bodies that used
to go wrong the other way: a create without a name, an LFS copy from the real client."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import CommitOperationCopy, HfApi, constants, hf_hub_download

from tests.service.conftest import TOKEN, LiveServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = "team/x"
SHA = "ab" * 32
HEADER = {"key": "header", "value": {"summary": "s"}}
NDJSON = {"Content-Type": "application/x-ndjson"}


def _file(path: str, data: bytes) -> dict[str, Any]:
    content = base64.b64encode(data).decode()
    return {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}}


def _ndjson(*lines: Any) -> str:
    return "\n".join(json.dumps(line) for line in lines)


# name: (method, path, JSON body, what the message must say)
JSON_BODIES: dict[str, tuple[str, str, Any, str]] = {
    "preupload-file-a-string": (
        "POST", f"/api/models/{REPO}/preupload/main", {"files": ["a.txt"]},
        "files[0] must be an object",
    ),
    "preupload-size-a-string": (
        "POST", f"/api/models/{REPO}/preupload/main",
        {"files": [{"path": "a.txt", "size": "big"}]}, 'files[0].size must be a whole number, not "big"',
    ),
    "preupload-files-an-object": (
        "POST", f"/api/models/{REPO}/preupload/main", {"files": {"path": "a.txt"}},
        "files: preupload needs a 'files' list",
    ),
    "lfs-objects-an-object": (
        "POST", f"/{REPO}.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": {"oid": SHA, "size": 1}}, "objects must be a list",
    ),
    "lfs-object-a-string": (
        "POST", f"/{REPO}.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [SHA]}, "objects[0] must be an object",
    ),
    "lfs-object-short-oid": (
        "POST", f"/{REPO}.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [{"oid": "abc", "size": 1}]}, "objects[0].oid must match",
    ),
    "branch-start-a-number": (
        "POST", f"/api/models/{REPO}/branch/dev", {"startingPoint": 5},
        "startingPoint must be a string, not 5",
    ),
    "create-without-a-name": (
        "POST", "/api/repos/create", {"organization": "team"},
        "name: creating a repo needs its 'name'",
    ),
    "create-private-a-string": (
        "POST", "/api/repos/create", {"name": "y", "organization": "team", "private": "yes"},
        'private must be true or false, not "yes"',
    ),
    "validate-yaml-content-a-number": (
        "POST", "/api/validate-yaml", {"content": 5}, "content must be a string, not 5",
    ),
    "paths-info-paths-a-string": (
        "POST", f"/api/models/{REPO}/paths-info/main", {"paths": "README.md"},
        'paths must be a list, not "README.md"',
    ),
    "paths-info-path-a-number": (
        "POST", f"/api/models/{REPO}/paths-info/main", {"paths": [".gitattributes", 7]},
        "paths[1] must be a string, not 7",
    ),
}  # fmt: skip

# name: (commit body, what the message must say)
COMMIT_BODIES: dict[str, tuple[str, str]] = {
    "lfs-size-a-string": (
        _ndjson(HEADER, {"key": "lfsFile", "value": {"path": "w.bin", "oid": SHA, "size": "10"}}),
        "line 2 ('lfsFile'): value.size must be a whole number",
    ),
    "parent-commit-a-number": (
        _ndjson({"key": "header", "value": {"summary": "s", "parentCommit": 12}}),
        "line 1 ('header'): value.parentCommit must be a string, not 12",
    ),
    "summary-a-list": (
        _ndjson({"key": "header", "value": {"summary": ["s"]}}),
        "value.summary must be a string",
    ),
    "no-header": (_ndjson(_file("a.txt", b"a")), "the first line must be the header"),
    "header-second": (
        _ndjson(_file("a.txt", b"a"), HEADER),
        "line 1 is a 'file' line, but the first line must be the header",
    ),
    "two-headers": (_ndjson(HEADER, HEADER), "line 2 is a second header"),
    "empty": ("\n\n", "the commit body is empty"),
    "copy-file-key": (
        _ndjson(HEADER, {"key": "copyFile", "value": {"path": "b", "src": "a"}}),
        "key must be one of 'header', 'file', 'lfsFile', 'deletedFile', 'deletedFolder'",
    ),
    "value-a-string": (
        _ndjson(HEADER, {"key": "file", "value": "a.txt"}),
        "value must be an object",
    ),
}


def _refused(r: httpx.Response, says: str) -> None:
    """A 400 in the Hub's shape (what huggingface_hub reads), its message saying `says`."""
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json()["error"]
    assert says in error, error
    assert r.headers["X-Error-Code"] == "BadRequest"
    assert r.headers["X-Error-Message"] == error


def _still_serving(hub: LiveServer, api: HfApi, head: str) -> None:
    assert api.model_info(REPO).sha == head  # nothing committed
    assert httpx.get(f"{hub.url}/{REPO}/resolve/main/.gitattributes").status_code == 200


@pytest.fixture
def api(hub: LiveServer) -> HfApi:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO)
    return api


@pytest.mark.parametrize("case", JSON_BODIES)
def test_a_json_body_of_the_wrong_shape_is_a_400_naming_the_field(
    hub: LiveServer, api: HfApi, case: str
) -> None:
    method, path, body, says = JSON_BODIES[case]
    head = api.model_info(REPO).sha
    r = httpx.request(method, hub.url + path, json=body, headers=AUTH)
    _refused(r, says)
    _still_serving(hub, api, head)
    assert [m.id for m in api.list_models()] == [REPO]  # no repo was created
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]


@pytest.mark.parametrize("case", COMMIT_BODIES)
def test_a_commit_body_of_the_wrong_shape_is_a_400_naming_the_line(
    hub: LiveServer, api: HfApi, case: str
) -> None:
    body, says = COMMIT_BODIES[case]
    head = api.model_info(REPO).sha
    r = httpx.post(
        f"{hub.url}/api/models/{REPO}/commit/main", content=body, headers={**AUTH, **NDJSON}
    )
    _refused(r, says)
    _still_serving(hub, api, head)


def test_form_paths_info_converts_text_and_refuses_what_is_not_a_flag(
    hub: LiveServer, api: HfApi
) -> None:
    url = f"{hub.url}/api/models/{REPO}/paths-info/main"
    ok = httpx.post(url, data={"paths": [".gitattributes", "none"], "expand": "false"})
    assert ok.status_code == 200 and [e["path"] for e in ok.json()] == [".gitattributes"]
    _refused(httpx.post(url, data={"paths": ["a"], "expand": "maybe"}), "expand must be true")


def test_create_without_a_name_creates_nothing(hub: LiveServer) -> None:
    r = httpx.post(f"{hub.url}/api/repos/create", json={"organization": "team"}, headers=AUTH)
    _refused(r, "name")
    assert not hub.models_dir.exists() or list(hub.models_dir.iterdir()) == []
    # and the same with a name goes through
    r = httpx.post(
        f"{hub.url}/api/repos/create", json={"organization": "team", "name": "y"}, headers=AUTH
    )
    assert r.status_code == 200 and r.json()["id"] == "team/y"
    assert sorted(p.name for p in (hub.models_dir / "team").iterdir()) == ["y"]


def test_copying_an_lfs_file_with_the_real_client(
    hub: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub sends the copy of an LFS file as an `lfsFile` line with no size: the
    object is already in the repo. From the head and from an older revision."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # plain LFS, as `mae push`
    api = HfApi(endpoint=hub.url, token=TOKEN, headers={"X-MAE-LFS": "basic"})
    api.create_repo(REPO)
    old, new = bytes(range(256)) * 40, b"new weights" * 100
    first = api.upload_file(path_or_fileobj=old, path_in_repo="w.safetensors", repo_id=REPO)
    api.upload_file(path_or_fileobj=new, path_in_repo="w.safetensors", repo_id=REPO)
    [src] = api.get_paths_info(REPO, ["w.safetensors"])
    assert src.lfs is not None  # went over LFS: the copy will be an lfsFile line

    api.create_commit(
        REPO,
        operations=[
            CommitOperationCopy("w.safetensors", "copies/w.safetensors"),
            CommitOperationCopy("w.safetensors", "copies/old.safetensors", src_revision=first.oid),
        ],
        commit_message="copies",
    )
    got = {
        path: Path(hf_hub_download(REPO, path, endpoint=hub.url)).read_bytes()
        for path in ("w.safetensors", "copies/w.safetensors", "copies/old.safetensors")
    }
    assert got == {
        "w.safetensors": new,
        "copies/w.safetensors": new,
        "copies/old.safetensors": old,
    }
    info = {i.path: i for i in api.get_paths_info(REPO, list(got))}
    assert info["copies/old.safetensors"].lfs.sha256 == hashlib.sha256(old).hexdigest()
    assert info["copies/old.safetensors"].lfs.size == len(old)
    assert info["copies/w.safetensors"].lfs.sha256 == src.lfs.sha256


def test_a_sizeless_lfs_file_not_in_the_repo_is_refused(hub: LiveServer, api: HfApi) -> None:
    head = api.model_info(REPO).sha
    line = {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": SHA}}
    r = httpx.post(
        f"{hub.url}/api/models/{REPO}/commit/main",
        content=_ndjson(HEADER, line),
        headers={**AUTH, **NDJSON},
    )
    _refused(r, f"w.safetensors: LFS object {SHA[:12]} was not uploaded")
    _still_serving(hub, api, head)
