"""Listing, whoami, history, deleting and the repo page of the embedded hub, through a real
uvicorn server and the real `huggingface_hub` client (its paginator included)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._pagination import paginate

from mae_core.publish import push
from mae_core.repo_store import RepoStore
from service.settings import Settings
from tests.service.conftest import TOKEN, LiveServer, serve

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def api(hub: LiveServer) -> HfApi:
    return HfApi(endpoint=hub.url, token=TOKEN)


def _upload(api: HfApi, repo_id: str, path: str, data: bytes, revision: str | None = None) -> str:
    info = api.upload_file(
        path_or_fileobj=data, path_in_repo=path, repo_id=repo_id, revision=revision
    )
    return info.oid


CARD = b"""---
library_name: timm
pipeline_tag: image-feature-extraction
tags: [mae, vision]
---
# Alpha <script>alert("card")</script>

<img src=x onerror="alert(1)">

| metric | value |
| --- | --- |
| top-1 | 31.0 |

![reconstruction](reconstruction.png) [the config](./config.json) [bad](javascript:alert(2))
"""


# -- list_models ----------------------------------------------------------------------------
def test_list_models_filters_sorts_and_hides_private_repos(hub: LiveServer, api: HfApi) -> None:
    for repo_id in ("team/alpha", "team/beta", "other/gamma"):
        api.create_repo(repo_id)
    api.create_repo("team/secret", private=True)
    _upload(api, "team/alpha", "README.md", CARD)
    _upload(api, "team/beta", "notes.txt", b"the newest change")

    anon = HfApi(endpoint=hub.url, token=False)
    assert [m.id for m in anon.list_models()] == ["other/gamma", "team/alpha", "team/beta"]
    assert [m.id for m in api.list_models(author="team")] == [
        "team/alpha",
        "team/beta",
        "team/secret",
    ]
    assert [m.id for m in anon.list_models(search="ALPH")] == ["team/alpha"]
    assert [m.id for m in anon.list_models(filter="mae")] == ["team/alpha"]
    assert [m.id for m in anon.list_models(filter=["timm", "vision"])] == ["team/alpha"]
    assert [m.id for m in anon.list_models(pipeline_tag="image-feature-extraction")] == [
        "team/alpha"
    ]
    assert [m.id for m in anon.list_models(filter="nothing-has-this")] == []
    assert [m.id for m in anon.list_models(limit=2)] == ["other/gamma", "team/alpha"]
    newest = [m.id for m in anon.list_models(sort="last_modified")]
    assert newest[:2] == ["team/beta", "team/alpha"], newest
    alpha = next(iter(anon.list_models(search="alpha", full=True)))
    assert alpha.sha == api.model_info("team/alpha").sha and alpha.library_name == "timm"
    assert "mae" in alpha.tags and alpha.private is False
    assert sorted(s.rfilename for s in alpha.siblings) == [".gitattributes", "README.md"]
    with_card = next(iter(anon.list_models(search="alpha", cardData=True)))
    assert with_card.card_data is not None and with_card.card_data.library_name == "timm"
    assert [m.private for m in api.list_models(search="secret")] == [True]


def test_list_models_pages_through_the_link_header(hub: LiveServer, api: HfApi) -> None:
    for name in ("b", "c", "d", "e"):
        api.create_repo(f"team/{name}")
    # huggingface_hub's own paginator follows the Link header to the end
    ids = [m["id"] for m in paginate(f"{hub.url}/api/models", params={"limit": 3}, headers={})]
    assert ids == ["team/b", "team/c", "team/d", "team/e"]

    first = httpx.get(f"{hub.url}/api/models", params={"limit": 2, "author": "team"})
    assert [m["id"] for m in first.json()] == ["team/b", "team/c"]
    next_url = first.links["next"]["url"]
    assert "author=team" in next_url and "cursor=" in next_url
    # a repo created before the cursor, one deleted after it: the next page neither repeats
    # nor skips anything
    api.create_repo("team/a")
    api.delete_repo("team/e")
    second = httpx.get(next_url)
    assert [m["id"] for m in second.json()] == ["team/d"]
    assert "next" not in second.links
    tail = [m["id"] for m in httpx.get(f"{hub.url}/api/models", params={"limit": 4}).json()]
    assert tail == ["team/a", "team/b", "team/c", "team/d"]
    # other orders page the same way: newest first, and ids Z to A
    newest = paginate(f"{hub.url}/api/models", params={"limit": 1, "sort": "createdAt"}, headers={})
    assert [m["id"] for m in newest] == ["team/a", "team/d", "team/c", "team/b"]
    backwards = paginate(f"{hub.url}/api/models", params={"limit": 3, "direction": -1}, headers={})
    assert [m["id"] for m in backwards] == tail[::-1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "downloads"}, "cannot sort by 'downloads'"),
        ({"apps": "x"}, "cannot list models by apps"),
        ({"limit": "0"}, "limit must be a whole number"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "invalid cursor"),
        ({"full": "maybe"}, "full must be true or false"),
        ({"direction": "up"}, "direction must be 1 or -1"),
    ],
)
def test_list_models_refuses_what_it_cannot_honour(
    hub: LiveServer, params: dict[str, str], message: str
) -> None:
    r = httpx.get(f"{hub.url}/api/models", params=params)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert r.headers["X-Error-Code"] == "BadRequest"


def test_a_cursor_from_another_order_is_refused(hub: LiveServer, api: HfApi) -> None:
    for name in ("a", "b"):
        api.create_repo(f"team/{name}")
    first = httpx.get(f"{hub.url}/api/models", params={"limit": 1})
    cursor = re.search(r"cursor=([^&>]+)", first.headers["Link"]).group(1)
    r = httpx.get(f"{hub.url}/api/models", params={"cursor": cursor, "sort": "lastModified"})
    assert r.status_code == 400 and "invalid cursor" in r.json()["error"]


# -- whoami ---------------------------------------------------------------------------------
def test_whoami_names_the_token_and_refuses_others(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", hub_only=True, hub_tokens=["one", "two"])
    for url in serve(settings):
        me = HfApi(endpoint=url, token="two").whoami()
        assert me["name"] == "token-2" and me["type"] == "user"
        assert me["auth"]["accessToken"] == {"displayName": "token-2", "role": "write"}
        with pytest.raises(HfHubHTTPError, match="Invalid user token") as err:
            HfApi(endpoint=url, token="three").whoami()
        assert err.value.response.status_code == 401
        bare = httpx.get(f"{url}/api/whoami-v2")
        assert bare.status_code == 401 and "needs a token" in bare.json()["error"]


# -- list_repo_commits ----------------------------------------------------------------------
def test_list_repo_commits_newest_first_and_paged(hub: LiveServer, api: HfApi) -> None:
    api.create_repo("team/log")
    shas = [_upload(api, "team/log", f"f{i}.txt", b"%d" % i) for i in range(3)]
    commits = api.list_repo_commits("team/log")
    assert [c.commit_id for c in commits[:3]] == shas[::-1]
    assert [c.title for c in commits] == [
        "Upload f2.txt with huggingface_hub",
        "Upload f1.txt with huggingface_hub",
        "Upload f0.txt with huggingface_hub",
        "initial commit",
    ]
    assert commits[0].created_at >= commits[-1].created_at and commits[0].authors == []
    assert [c.commit_id for c in api.list_repo_commits("team/log", revision=shas[1])] == [
        c.commit_id for c in commits[1:]
    ]
    formatted = api.list_repo_commits("team/log", formatted=True)
    assert formatted[0].formatted_title == "Upload f2.txt with huggingface_hub"

    # pages of one, each pinned by sha: a commit landing meanwhile does not shift them
    first = httpx.get(f"{hub.url}/api/models/team/log/commits/main", params={"limit": 1})
    assert [c["id"] for c in first.json()] == [shas[2]]
    assert f"/commits/{shas[1]}?limit=1" in first.headers["Link"]
    _upload(api, "team/log", "late.txt", b"late")
    rest = list(paginate(first.links["next"]["url"], params={}, headers={}))
    assert [c["id"] for c in rest] == [c.commit_id for c in commits[1:]]

    with pytest.raises(RevisionNotFoundError):
        api.list_repo_commits("team/log", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_commits("team/nothing")


# -- deleting -------------------------------------------------------------------------------
def test_delete_file_and_folder_are_commits(hub: LiveServer, api: HfApi) -> None:
    api.create_repo("team/files")
    _upload(api, "team/files", "a.txt", b"a")
    before = _upload(api, "team/files", "sub/b.txt", b"b")
    api.delete_file("a.txt", "team/files")
    api.delete_folder("sub", "team/files")
    assert api.list_repo_files("team/files") == [".gitattributes"]
    assert [c.title for c in api.list_repo_commits("team/files")][:2] == [
        "Delete folder sub with huggingface_hub",
        "Delete a.txt with huggingface_hub",
    ]
    # the older revision is untouched
    old = hf_hub_download("team/files", "a.txt", revision=before, endpoint=hub.url)
    assert Path(old).read_bytes() == b"a"
    head = api.model_info("team/files").sha
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", "team/files")
    assert api.model_info("team/files").sha == head


def test_delete_branch_keeps_main_and_the_commits(hub: LiveServer, api: HfApi) -> None:
    api.create_repo("team/br")
    api.create_branch("team/br", branch="dev")
    dev = _upload(api, "team/br", "dev.txt", b"on dev", revision="dev")
    api.delete_branch("team/br", branch="dev")
    assert [b.name for b in api.list_repo_refs("team/br").branches] == ["main"]
    kept = hf_hub_download("team/br", "dev.txt", revision=dev, endpoint=hub.url)
    assert Path(kept).read_bytes() == b"on dev"  # reachable by sha, as in git

    with pytest.raises(HfHubHTTPError) as err:
        api.delete_branch("team/br", branch="main")
    assert err.value.response.status_code == 409
    assert "default branch" in err.value.response.json()["error"]
    with pytest.raises(RevisionNotFoundError):
        api.delete_branch("team/br", branch="dev")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_branch("team/none", branch="dev")
    bad = httpx.delete(f"{hub.url}/api/models/team/br/branch/..%2Fmain", headers=AUTH)
    assert bad.status_code == 400 and "invalid branch name" in bad.json()["error"]


def test_delete_repo_removes_it_everywhere(hub: LiveServer, api: HfApi) -> None:
    api.create_repo("team/typo")
    _upload(api, "team/typo", "w.txt", b"weights")
    api.create_repo("team/keep")
    assert (hub.models_dir / "team" / "typo" / "repo.json").is_file()

    api.delete_repo("team/typo")
    assert not (hub.models_dir / "team" / "typo").exists()
    assert list((hub.models_dir / ".trash").iterdir()) == []
    assert not api.repo_exists("team/typo")
    assert [m.id for m in api.list_models()] == ["team/keep"]
    assert httpx.get(f"{hub.url}/team/typo").status_code == 404
    assert httpx.get(f"{hub.url}/team/typo/resolve/main/w.txt").status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("team/typo")
    api.delete_repo("team/typo", missing_ok=True)
    # the name is free again, with a fresh history
    api.create_repo("team/typo")
    assert [c.title for c in api.list_repo_commits("team/typo")] == ["initial commit"]
    # the last repo of a namespace takes the namespace's folder with it
    api.delete_repo("team/typo")
    api.delete_repo("team/keep")
    assert not (hub.models_dir / "team").exists()

    for body, message in (
        ({"name": "x", "organization": "team", "type": "dataset"}, "model repos only"),
        ({"organization": "team"}, "needs its 'name'"),
        ({"name": "..", "organization": "team"}, "invalid repo id"),
    ):
        r = httpx.request("DELETE", f"{hub.url}/api/repos/delete", json=body, headers=AUTH)
        assert r.status_code == 400 and message in r.json()["error"], r.text


def test_deletes_need_a_write_token(hub: LiveServer, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("team/guarded")
    api.create_branch("team/guarded", branch="dev")
    _upload(api, "team/guarded", "a.txt", b"a")
    head = api.model_info("team/guarded").sha
    for token, status in ((False, 401), ("wrong", 403)):
        other = HfApi(endpoint=hub.url, token=token)
        for call, kwargs in (
            (other.delete_repo, {"repo_id": "team/guarded"}),
            (other.delete_branch, {"repo_id": "team/guarded", "branch": "dev"}),
            (other.delete_file, {"path_in_repo": "a.txt", "repo_id": "team/guarded"}),
        ):
            with pytest.raises(HfHubHTTPError) as err:
                call(**kwargs)
            assert err.value.response.status_code == status
    assert api.model_info("team/guarded").sha == head
    assert {b.name for b in api.list_repo_refs("team/guarded").branches} == {"main", "dev"}

    # a hub without MAE_HUB_TOKENS is read-only: nothing can be deleted, whatever the token
    models = tmp_path / "read-only"
    RepoStore(models).create_repo("team/fixed")
    for url in serve(Settings(models_dir=models, hub_only=True)):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=url, token=TOKEN).delete_repo("team/fixed")
        assert err.value.response.status_code == 403 and "read-only" in str(err.value)
        assert [m.id for m in HfApi(endpoint=url, token=False).list_models()] == ["team/fixed"]


# -- the repo page --------------------------------------------------------------------------
@pytest.fixture
def page_repo(api: HfApi, tmp_path: Path) -> Iterator[str]:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_bytes(CARD)
    (folder / "config.json").write_text('{"architecture": "vit_tiny_patch8"}')
    (folder / "reconstruction.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    api.create_repo("team/alpha")
    api.create_branch("team/alpha", branch="encoder")
    api.upload_folder(folder_path=folder, repo_id="team/alpha", commit_message="the model")
    yield "team/alpha"


def test_the_repo_page_shows_files_branches_and_the_card(
    hub: LiveServer, api: HfApi, page_repo: str
) -> None:
    r = httpx.get(f"{hub.url}/{page_repo}")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in r.headers["Content-Security-Policy"]
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = r.text
    sha = api.model_info(page_repo).sha
    for name in (".gitattributes", "README.md", "config.json", "reconstruction.png"):
        assert f">{name}</a>" in page, name
    assert "<td class=size>108</td>" in page  # reconstruction.png's size in bytes
    assert f"<code>{sha[:12]}</code>" in page and "the model" in page
    assert "<td>encoder</td>" in page and "main <span class=quiet>(default)</span>" in page
    # the card: rendered Markdown, the YAML header as tags
    assert "<h1>Alpha " in page and "<td>top-1</td>" in page
    assert "<span class=tag>timm</span>" in page and "<span class=tag>mae</span>" in page
    # relative links that name a repo file point at it at this commit, and download
    image = f"/{page_repo}/resolve/{sha}/reconstruction.png"
    assert f'<img src="{image}" alt="reconstruction"' in page
    assert f'href="/{page_repo}/resolve/{sha}/config.json"' in page
    assert httpx.get(hub.url + image).content.startswith(b"\x89PNG")


def test_the_repo_page_escapes_the_card(hub: LiveServer, page_repo: str) -> None:
    page = httpx.get(f"{hub.url}/{page_repo}").text
    # raw HTML in the card shows as text; a javascript: link stays text too
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;card&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "[bad](javascript:alert(2))" in page
    assert not re.search(r"(href|src)=\"?javascript", page, re.IGNORECASE)


def test_mae_push_prints_a_url_that_answers(
    hub: LiveServer, small_model_dir: Path, tmp_path: Path
) -> None:
    result = push(small_model_dir, "team/tiny", endpoint=hub.url, token=TOKEN)
    assert result.url == f"{hub.url}/team/tiny"
    r = httpx.get(result.url)
    assert r.status_code == 200 and ">model.safetensors</a>" in r.text
    # the generated card, rendered: its title, its sections, its code blocks escaped
    assert "<h1>team/tiny</h1>" in r.text and "<h2>Use</h2>" in r.text
    assert '<code class="language-python">import timm' in r.text


def test_the_repo_page_errors_and_neighbours(hub: LiveServer, api: HfApi) -> None:
    missing = httpx.get(f"{hub.url}/team/none")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "not_found", "message": "repository team/none not found"}
    }
    bad = httpx.get(f"{hub.url}/team/x.git")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    api.create_repo("team/hidden", private=True)
    assert httpx.get(f"{hub.url}/team/hidden").status_code == 404
    assert httpx.get(f"{hub.url}/team/hidden", headers=AUTH).status_code == 200
    # the page route shadows none of the service's own two-segment paths
    css = httpx.get(f"{hub.url}/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{hub.url}/docs").status_code == 200
    assert httpx.get(f"{hub.url}/api/models").headers["content-type"] == "application/json"
    assert httpx.get(f"{hub.url}/api/whoami-v2").status_code == 401
    schema = httpx.get(f"{hub.url}/openapi.json").json()["paths"]
    assert set(schema["/{ns}/{name}"]["get"]["responses"]) >= {"200", "400", "404"}
    assert set(schema["/api/repos/delete"]["delete"]["responses"]) >= {"401", "403", "404"}


def test_the_page_needs_a_token_when_reads_do(tmp_path: Path) -> None:
    models = tmp_path / "models"
    RepoStore(models).create_repo("team/closed")
    settings = Settings(
        models_dir=models, hub_only=True, hub_tokens=[TOKEN], hub_read_token_required=True
    )
    for url in serve(settings):
        r = httpx.get(f"{url}/team/closed")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = httpx.get(f"{url}/team/closed", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert httpx.get(f"{url}/team/closed", headers=AUTH).status_code == 200
        assert httpx.get(f"{url}/api/models").status_code == 401
        assert [m["id"] for m in httpx.get(f"{url}/api/models", headers=AUTH).json()] == [
            "team/closed"
        ]


def test_without_markdown_it_the_card_shows_as_escaped_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mae_core.repo_store import Commit
    from service.repo_page import render_card

    head = Commit("a" * 40, None, "", "", "")
    with_lib = render_card(CARD.decode(), "team/alpha", head)
    assert with_lib.startswith("<h1>Alpha") and "library_name" not in with_lib
    monkeypatch.setitem(sys.modules, "markdown_it", None)  # as if it were not installed
    plain = render_card(CARD.decode(), "team/alpha", head)
    assert plain.startswith("<pre># Alpha &lt;script&gt;") and "library_name" not in plain


def test_the_frameworks_own_errors_on_hub_paths_are_in_the_hubs_shape(hub: LiveServer) -> None:
    """No route, a wrong method, a bad parameter: `{"error": message}` with X-Error-Message,
    as the hub's own errors, and a 405's Allow names every method the path has."""
    r = httpx.get(f"{hub.url}/api/no-such-endpoint")
    assert r.status_code == 404 and "no route /api/no-such-endpoint" in r.json()["error"]
    assert r.headers["X-Error-Message"] == r.json()["error"]
    r = httpx.post(f"{hub.url}/mae/x/resolve/main/config.json")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)
    assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD"}  # two routes, one path
    r = httpx.get(f"{hub.url}/api/models", params={"limit": "many"})
    assert r.status_code in (400, 422) and isinstance(r.json()["error"], str)
