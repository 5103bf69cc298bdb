"""The hub endpoints through a real uvicorn server, the real huggingface_hub client and timm."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from mae_core import MaskedAutoencoder, load_model
from mae_core.publish import PushError, push, stage_repo
from mae_core.pull import VerificationError, pull
from mae_core.train import train
from tests.mae_core.test_train import run_cfg
from tests.reference import TINY, perturb_
from tests.service.conftest import TOKEN, LiveServer

WEIGHTS = ("config.json", "model.safetensors", "decoder.safetensors", "mae_config.json")


@pytest.fixture(scope="module")
def trained(cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MAE trained for one epoch on 300 CIFAR JPEGs, with a panel and eval.json."""
    out = tmp_path_factory.mktemp("run")
    train(run_cfg(cifar_folder, out, epochs=1, panel_every=1))
    (out / "eval.json").write_text(
        json.dumps(
            {
                "train_size": 200,
                "test_size": 100,
                "num_classes": 10,
                "results": [
                    {"method": "knn", "pooling": "cls", "k": 20, "temperature": 0.07, "top1": 31.0,
                     "top5": 80.0, "baseline_top1": 27.0, "baseline_top5": 75.0},
                ],
            }
        )
    )  # fmt: skip
    return out / "final"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_push_then_download_byte_identical_with_a_card(hub: LiveServer, trained: Path) -> None:
    result = push(trained, "team/tiny", endpoint=hub.url, token=TOKEN, message="first")
    assert result.revision == "main" and len(result.commit) == 40
    assert set(result.files) == {*WEIGHTS, "README.md", "eval_results.json", "reconstruction.png"}
    folder = Path(snapshot_download("team/tiny", endpoint=hub.url))
    for name in WEIGHTS:
        assert (folder / name).read_bytes() == (trained / name).read_bytes(), name
    card = (folder / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: timm\n")
        and "pipeline_tag: image-feature-extraction" in card
    )
    assert "| k-NN (k=20, T=0.07) | cls | 31.00 | 80.00 | 27.00 | +4.00 |" in card
    assert "![reconstruction](reconstruction.png)" in card and "hf-hub:team/tiny" in card
    info = HfApi(endpoint=hub.url).model_info("team/tiny", files_metadata=True)
    assert info.sha == result.commit and info.library_name == "timm" and "mae" in info.tags
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert (
        lfs["model.safetensors"].sha256
        == hashlib.sha256((trained / "model.safetensors").read_bytes()).hexdigest()
    )
    assert lfs["config.json"] is None


def test_revisions_are_immutable_and_addressable_by_sha(
    hub: LiveServer, trained: Path, tmp_path: Path
) -> None:
    first = push(trained, "team/tiny", endpoint=hub.url, token=TOKEN, encoder_only=True)
    other = perturb_(MaskedAutoencoder(TINY))
    other.save_pretrained(tmp_path / "v2")
    second = push(tmp_path / "v2", "team/tiny", endpoint=hub.url, token=TOKEN, message="v2")
    assert first.commit != second.commit
    old = Path(snapshot_download("team/tiny", revision=first.commit, endpoint=hub.url))
    assert not (old / "decoder.safetensors").exists()  # v1 was encoder-only; v2 has a decoder
    assert (old / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    new = Path(snapshot_download("team/tiny", endpoint=hub.url))
    assert (new / "decoder.safetensors").is_file()
    assert (new / "model.safetensors").read_bytes() == (
        tmp_path / "v2" / "model.safetensors"
    ).read_bytes()
    # pull pins by sha and verifies; an encoder-only revision says what it lacks
    assert pull("team/tiny", first.commit, endpoint=hub.url) == old
    with pytest.raises(Exception, match="encoder weights only"):
        load_model(old, with_decoder=True)


def test_timm_and_mae_pull_in_a_fresh_process(
    hub: LiveServer, trained: Path, tmp_path: Path
) -> None:
    push(trained, "team/tiny", endpoint=hub.url, token=TOKEN)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home")}
    env.pop("HF_HUB_OFFLINE", None)
    script = (
        "import sys, timm, torch; from mae_core import load_model\n"
        "vit = timm.create_model('hf-hub:team/tiny', pretrained=True).eval()\n"
        "x = torch.load(sys.argv[1])\n"
        "with torch.no_grad(): torch.save(vit.forward_features(x), sys.argv[2])\n"
        "m = load_model('hf-hub:team/tiny')\n"
        "with torch.no_grad(): torch.save(m.forward_features(x), sys.argv[3])\n"
    )
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    out = [str(tmp_path / n) for n in ("x.pt", "timm.pt", "ours.pt")]
    done = subprocess.run(
        [sys.executable, "-c", script, *out], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        want = load_model(trained).forward_features(x)
    torch.testing.assert_close(torch.load(out[1]), want)
    torch.testing.assert_close(torch.load(out[2]), want)

    mae = str(Path(sys.executable).parent / "mae")
    pulled = subprocess.run(
        [mae, "pull", "team/tiny", "--local-dir", str(tmp_path / "dl")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "files verified" in pulled.stdout
    assert load_model(tmp_path / "dl").config == load_model(trained).config

    # offline: the cache filled above serves; an uncached repo fails fast and clearly
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(
        [mae, "info", "hf-hub:team/tiny", "--no-hash"], env=offline, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    miss = subprocess.run(
        [mae, "info", "hf-hub:team/other"], env=offline, capture_output=True, text=True
    )
    assert miss.returncode == 2 and "not in the local cache and HF_HUB_OFFLINE=1" in miss.stderr


def test_a_tampered_blob_is_refused_and_deleted(hub: LiveServer, trained: Path) -> None:
    push(trained, "team/tiny", endpoint=hub.url, token=TOKEN)
    sha = hashlib.sha256((trained / "model.safetensors").read_bytes()).hexdigest()
    blob = hub.models_dir / "team" / "tiny" / "blobs" / sha
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    blob.write_bytes(bytes(data))
    with pytest.raises(
        VerificationError, match=r"model\.safetensors does not match the hub's record"
    ):
        pull("team/tiny", endpoint=hub.url)
    cache = Path(constants.HF_HUB_CACHE)
    assert list(cache.rglob("config.json"))  # the download happened
    assert not any(
        p.is_file() and p.read_bytes() == bytes(data) for p in cache.rglob("*")
    )  # the bad file is gone


def test_tokens_guard_writes_and_private_reads(hub: LiveServer, trained: Path) -> None:
    for token, status in ((None, 401), ("wrong", 403)):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=hub.url, token=token or False).create_repo("team/x")
        assert err.value.response.status_code == status
    with pytest.raises(PushError, match=r"failed \(403\)"):
        push(trained, "team/x", endpoint=hub.url, token="wrong")
    assert not (hub.models_dir / "team" / "x").exists()

    push(trained, "team/secret", endpoint=hub.url, token=TOKEN, private=True)
    anon = httpx.get(f"{hub.url}/api/models/team/secret")
    assert anon.status_code == 404 and anon.headers["X-Error-Code"] == "RepoNotFound"
    assert httpx.get(f"{hub.url}/team/secret/resolve/main/config.json").status_code == 404
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (
        httpx.get(f"{hub.url}/team/secret/resolve/main/config.json", headers=auth).status_code
        == 200
    )


@pytest.mark.parametrize(
    "url",
    [
        "/team/tiny/resolve/main/..%2F..%2F..%2Fetc%2Fpasswd",
        "/team/tiny/resolve/main/%2e%2e/%2e%2e/repo.json",
        "/team/tiny/resolve/main//etc/passwd",
        "/team/tiny/resolve/main/outside.txt",
        "/%2e%2e/tiny/resolve/main/config.json",
        "/team/..%2F..%2Ftiny/resolve/main/config.json",
        "/api/models/team/tiny/tree/main/..%2F..",
    ],
)
def test_path_escapes_answer_4xx_and_read_nothing(hub: LiveServer, trained: Path, url: str) -> None:
    push(trained, "team/tiny", endpoint=hub.url, token=TOKEN)
    (hub.models_dir.parent / "secret.txt").write_text("TOP SECRET")
    sha = HfApi(endpoint=hub.url).model_info("team/tiny").sha
    (hub.models_dir / "team" / "tiny" / "snapshots" / sha / "outside.txt").symlink_to(
        hub.models_dir.parent / "secret.txt"
    )
    r = httpx.get(hub.url + url)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "TOP SECRET" not in r.text and "root:" not in r.text


def test_commit_protocol_details(hub: LiveServer) -> None:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("team/raw")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = b"x" * 1000
    oid = hashlib.sha256(body).hexdigest()
    # preupload: weights go over LFS only for a client that asks for plain LFS
    files = {
        "files": [
            {"path": "w.safetensors", "size": 1000, "sample": ""},
            {"path": "a.txt", "size": 3, "sample": ""},
        ]
    }
    plain = httpx.post(
        f"{hub.url}/api/models/team/raw/preupload/main", json=files, headers=auth
    ).json()
    lfs = httpx.post(
        f"{hub.url}/api/models/team/raw/preupload/main",
        json=files,
        headers={**auth, "X-MAE-LFS": "basic"},
    )
    assert [f["uploadMode"] for f in plain["files"]] == ["regular", "regular"]
    assert [f["uploadMode"] for f in lfs.json()["files"]] == ["lfs", "regular"]
    # LFS batch + PUT: a wrong body is refused, the right one stored
    batch = httpx.post(
        f"{hub.url}/team/raw.git/info/lfs/objects/batch",
        json={
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": 1000}],
        },
        headers=auth,
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert httpx.put(href, content=b"y" * 1000).status_code == 400
    assert httpx.put(href, content=body[:500]).status_code == 400  # cut short: nothing stored
    early = httpx.post(
        f"{hub.url}/api/models/team/raw/commit/main",
        content=json.dumps({"key": "header", "value": {"summary": "early"}})
        + "\n"
        + json.dumps(
            {"key": "lfsFile", "value": {"path": "w.safetensors", "oid": oid, "size": 1000}}
        ),
        headers=auth,
    )
    assert early.status_code == 400 and "was not uploaded" in early.json()["error"]
    assert [s.rfilename for s in api.model_info("team/raw").siblings] == [".gitattributes"]
    assert httpx.put(href.replace("sig=", "sig=0"), content=body).status_code == 403
    assert httpx.put(href, content=body).status_code == 200

    def commit(lines: list[dict], **kw) -> httpx.Response:
        payload = "\n".join(json.dumps(x) for x in lines)
        return httpx.post(
            f"{hub.url}/api/models/team/raw/commit/main", content=payload, headers=auth, **kw
        )

    header = {"key": "header", "value": {"summary": "one"}}
    first = commit([header, {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": oid, "size": 1000}},
                    {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"abc").decode(), "encoding": "base64"}}])  # fmt: skip
    assert first.status_code == 200, first.text
    head = first.json()["commitOid"]
    stale = commit([{"key": "header", "value": {"summary": "two", "parentCommit": "0" * 40}},
                    {"key": "deletedFile", "value": {"path": "a.txt"}}])  # fmt: skip
    assert stale.status_code == 412 and api.model_info("team/raw").sha == head
    for bad in ("../a", "/abs", "a//b", ".git/config", "a\\b"):
        r = commit(
            [header, {"key": "file", "value": {"path": bad, "content": "", "encoding": "base64"}}]
        )
        assert r.status_code == 400 and "invalid file path" in r.json()["error"], bad
    assert api.model_info("team/raw").sha == head  # nothing moved
    # downloads: ETag sha256 for LFS files, git sha1 otherwise; ranges
    meta = httpx.head(f"{hub.url}/team/raw/resolve/main/w.safetensors")
    assert meta.headers["ETag"] == f'"{oid}"' and meta.headers["X-Repo-Commit"] == head
    assert meta.headers["Content-Length"] == "1000" and meta.headers["X-Linked-Size"] == "1000"
    part = httpx.get(f"{hub.url}/team/raw/resolve/main/a.txt", headers={"Range": "bytes=1-2"})
    assert part.status_code == 206 and part.content == b"bc"
    gone = httpx.get(f"{hub.url}/team/raw/resolve/main/none.txt")
    assert gone.status_code == 404 and gone.headers["X-Error-Code"] == "EntryNotFound"
    assert hf_hub_download("team/raw", "a.txt", endpoint=hub.url, revision=head[:12]) is not None
    tree = api.list_repo_tree("team/raw")
    assert sorted(e.path for e in tree) == [".gitattributes", "a.txt", "w.safetensors"]


def test_push_to_a_models_dir_and_load_local(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = push(trained, "mae/tiny", to_models_dir=tmp_path / "models")
    second = push(
        trained, "mae/tiny", to_models_dir=tmp_path / "models", revision="dev", encoder_only=True
    )
    monkeypatch.setenv("MAE_MODELS_DIR", str(tmp_path / "models"))
    assert load_model("local:mae/tiny").has_decoder
    assert not load_model(f"local:mae/tiny@{second.commit[:10]}").has_decoder
    assert load_model("local:mae/tiny@dev").source_info["model_id"] == "local:mae/tiny@dev"
    snap = tmp_path / "models" / "mae" / "tiny" / "snapshots" / result.commit
    import timm

    vit = timm.create_model(f"local-dir:{snap}", pretrained=True)
    assert vit.num_features == load_model(trained).config.embed_dim


def test_several_evaluations_go_into_the_card_in_order(trained: Path, tmp_path: Path) -> None:
    base = json.loads((trained.parent / "eval.json").read_text())
    cifar = dict(base, train_data="cifar10:train", test_data="cifar10:test")
    tiny = dict(base, train_data="tinyimagenet:train", test_data="tinyimagenet:val")
    tiny["reconstruction"] = {"images": 100, "mask_ratio": 0.75, "loss": 0.5, "baseline_loss": 1.0}
    files = []
    for name, result in (("tiny.json", tiny), ("cifar.json", cifar)):
        (tmp_path / name).write_text(json.dumps(result))
        files.append(str(tmp_path / name))
    stage_repo(trained, "team/tiny", tmp_path / "out", eval_file=files)
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text()) == [tiny, cifar]
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.index("tinyimagenet:train -> tinyimagenet:val") < card.index("cifar10:train")
    assert "on the 100 test images at mask ratio 0.75: 0.5000" in card
    assert "the random-init twin's, same masks: 1.0000" in card
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        stage_repo(trained, "team/tiny", tmp_path / "out2", eval_file=[files[0], "missing.json"])
