"""The hub under faults, on a real uvicorn server with the real huggingface_hub client:
an upload whose client drops the TCP connection part-way, a committing process killed
(SIGKILL) between its steps, and a weights blob damaged on disk. Each leaves the previous
revision whole and served, and the next commit works; a damaged blob is refused by
`mae pull`, by `local:` loading and by a server starting on it, never used as weights.
The same faults at the store's level, in-process, are tests/mae_core/test_repo_store.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from filelock import FileLock
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

from mae_core import load_model
from mae_core.cli import main as mae
from mae_core.pull import VerificationError, pull
from mae_core.repo_store import RepoStore
from service.server import preflight
from service.settings import Settings
from tests.service.conftest import TOKEN, LiveServer, _free_port, serve

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "team/tiny"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMMIT_ROUTE = "/api/models/{ns}/{name}/commit/{revision}"
LFS_PUT_ROUTE = "/{ns}/{name}.git/info/lfs/objects/{oid}"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def publish(hub: LiveServer, folder: Path) -> str:
    """`folder` committed to REPO through the real client (files inline); the commit sha."""
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO)
    return api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="v1").oid


def everything(repo: Path) -> dict[str, bytes | str]:
    """Every path under the repo's folder, hidden ones included: a file's bytes, a
    link's target, a folder's mark."""
    out: dict[str, bytes | str] = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def temporaries(repo: Path) -> list[str]:
    """The hidden work in progress left in blobs/, snapshots/, refs/ or commits/."""
    return sorted(
        p.relative_to(repo).as_posix()
        for sub in ("blobs", "snapshots", "refs", "commits")
        for p in (repo / sub).iterdir()
        if p.name.startswith(".")
    )


def served_as(hub: LiveServer, folder: Path, oid: str) -> None:
    """The real client downloads REPO's default branch: commit `oid`, exactly `folder`'s
    files, byte for byte; `pull` verifies each against the hub's record."""
    assert HfApi(endpoint=hub.url).model_info(REPO).sha == oid
    got = Path(snapshot_download(REPO, endpoint=hub.url))
    want = {p.name for p in folder.iterdir()}
    assert {p.name for p in got.iterdir()} - {".gitattributes"} == want
    for name in want:
        assert (got / name).read_bytes() == (folder / name).read_bytes(), name
    assert pull(REPO, endpoint=hub.url) == got


def answered(url: str, route: str, status: int) -> float:
    """How many requests of `route` the server answered with `status` (its /metrics)."""
    line = f'mae_requests_total{{route="{route}",status="{status}"}} '
    for text in httpx.get(f"{url}/metrics").text.splitlines():
        if text.startswith(line):
            return float(text[len(line) :])
    return 0.0


def cut_request(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes, drop: str
) -> None:
    """Send `method path` announcing all of `body`, send its first half, then drop the
    connection: closed (FIN), or reset (RST, as a crashed client or a broken network)."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.1)  # the route has started reading the body
        if drop == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def lfs_upload_url(hub: LiveServer, oid: str, size: int) -> str | None:
    """The signed URL the LFS batch API gives for uploading the object (None: stored)."""
    batch = httpx.post(
        f"{hub.url}/{REPO}.git/info/lfs/objects/batch",
        json={
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size}],
        },
        headers=AUTH,
    )
    assert batch.status_code == 200, batch.text
    actions = batch.json()["objects"][0].get("actions")
    return actions["upload"]["href"] if actions else None


def ndjson(*lines: dict) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode()


# -- an upload cut mid-way ------------------------------------------------------------------
@pytest.mark.parametrize("drop", ["closed", "reset"])
@pytest.mark.parametrize("upload", ["lfs-object", "commit-body"])
def test_an_upload_cut_mid_way_keeps_the_previous_revision_served(
    hub: LiveServer, small_model_dir: Path, upload: str, drop: str
) -> None:
    v1 = publish(hub, small_model_dir)
    repo = hub.models_dir / REPO
    before = everything(repo)
    payload = os.urandom(400_000)
    oid = hashlib.sha256(payload).hexdigest()
    header = {"key": "header", "value": {"summary": "v2", "parentCommit": v1}}
    if upload == "lfs-object":
        href = lfs_upload_url(hub, oid, len(payload))
        assert href is not None
        route, path = LFS_PUT_ROUTE, href.removeprefix(hub.url)
        cut_request(hub.url, "PUT", path, {}, payload, drop)
    else:
        line = {"path": "weights.bin", "content": base64.b64encode(payload).decode()}
        body = ndjson(header, {"key": "file", "value": {**line, "encoding": "base64"}})
        route, path = COMMIT_ROUTE, f"/api/models/{REPO}/commit/main"
        kind = {"Content-Type": "application/x-ndjson", **AUTH}
        cut_request(hub.url, "POST", path, kind, body, drop)
    # The server sees the cut as the client's (499, never sent), not as its own error (500).
    deadline = time.monotonic() + 10
    while answered(hub.url, route, 499) < 1:
        assert answered(hub.url, route, 500) == 0, "the cut upload was a server error"
        assert time.monotonic() < deadline, "the server never finished the cut request"
        time.sleep(0.02)

    # Nothing of it reached the repo: no blob, no partial or temporary file, no new ref.
    assert everything(repo) == before
    assert not RepoStore(hub.models_dir).has_blob(REPO, oid, len(payload))
    served_as(hub, small_model_dir, v1)

    # The hub keeps serving and takes the same upload whole.
    if upload == "lfs-object":
        assert httpx.put(href, content=payload).status_code == 200
        line = {"path": "weights.bin", "algo": "sha256", "oid": oid, "size": len(payload)}
        done = httpx.post(
            f"{hub.url}/api/models/{REPO}/commit/main",
            content=ndjson(header, {"key": "lfsFile", "value": line}),
            headers=AUTH,
        )
        assert done.status_code == 200, done.text
        v2 = done.json()["commitOid"]
    else:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        v2 = api.upload_file(
            path_or_fileobj=payload, path_in_repo="weights.bin", repo_id=REPO, parent_commit=v1
        ).oid
    assert RepoStore(hub.models_dir).commit_info(REPO, v2).parent == v1
    got = hf_hub_download(REPO, "weights.bin", endpoint=hub.url)
    assert Path(got).read_bytes() == payload
    assert temporaries(repo) == []


# -- a committer killed between its steps ---------------------------------------------------
# Commits into the models folder (as `mae push --to-models-dir` or a hub process does) and
# kills itself with SIGKILL at one point of the commit: no handler, no finally, no clean-up.
KILLED_COMMITTER = """
import os, signal, sys
from pathlib import Path
import mae_core.repo_store as rs

root, point = Path(sys.argv[1]), sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "mid-blob":  # a new blob's bytes in its temporary file, before the rename
    os.fsync = lambda fd: die()
elif point == "mid-snapshot":  # the first link made in the temporary snapshot folder
    link = Path.symlink_to
    Path.symlink_to = lambda self, target, *a: (link(self, target, *a), die())
elif point == "after-snapshot":  # the snapshot folder in place; no record, the ref unmoved
    write = rs.RepoStore._write_snapshot
    rs.RepoStore._write_snapshot = lambda self, repo, record: (write(self, repo, record), die())
elif point == "before-ref":  # snapshot and record written; the ref about to move
    atomic = rs.write_atomic
    rs.write_atomic = lambda p, d: die() if Path(p).parent.name == "refs" else atomic(p, d)
rs.RepoStore(root).commit(
    "team/tiny", "main",
    add=[("model.safetensors", os.urandom(5000)), ("notes.txt", b"never published")],
    summary="killed",
)
sys.exit("the commit went through: the kill point was never reached")
"""


@pytest.mark.parametrize("point", ["mid-blob", "mid-snapshot", "after-snapshot", "before-ref"])
def test_a_committer_killed_mid_commit_leaves_the_previous_revision_served(
    hub: LiveServer, small_model_dir: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = publish(hub, small_model_dir)
    repo = hub.models_dir / REPO
    snapshots_before = {p.name for p in (repo / "snapshots").iterdir()}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_COMMITTER, str(hub.models_dir), point],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # It died where it was meant to: what it left shows the step it had reached.
    left = temporaries(repo)
    new = {p.name for p in (repo / "snapshots").iterdir()} - snapshots_before
    orphans = {name for name in new if not name.startswith(".")}
    if point == "mid-blob":
        assert len(left) == 1 and left[0].startswith("blobs/.") and not orphans, (left, orphans)
    elif point == "mid-snapshot":
        assert len(left) == 1 and left[0].startswith("snapshots/.tmp-") and not orphans
    else:
        assert left == [] and len(orphans) == 1, (left, orphans)
        (orphan,) = orphans
        recorded = (repo / "commits" / f"{orphan}.json").is_file()
        assert recorded == (point == "before-ref")

    # The previous revision is untouched: the ref, each file against its record, the
    # server's answers to the real client, and the model loaded from the folder.
    assert (repo / "refs" / "main").read_text() == v1
    store = RepoStore(hub.models_dir)
    assert store.resolve_revision(REPO, "main") == v1 and store.verify_revision(REPO, v1) == 5
    served_as(hub, small_model_dir, v1)
    monkeypatch.setenv("MAE_MODELS_DIR", str(hub.models_dir))
    loaded, want = (
        load_model(f"local:{REPO}").state_dict(),
        load_model(small_model_dir).state_dict(),
    )
    assert loaded.keys() == want.keys()
    assert all(torch.equal(loaded[k], want[k]) for k in want)

    # No stale lock (the kernel dropped it with the process), and the next commit, through
    # the server, builds on the previous revision and clears the dead writer's leftovers.
    with FileLock(repo / ".lock", timeout=5):
        pass
    api = HfApi(endpoint=hub.url, token=TOKEN)
    nxt = api.upload_file(path_or_fileobj=b"next", path_in_repo="next.txt", repo_id=REPO).oid
    assert store.commit_info(REPO, nxt).parent == v1
    assert "notes.txt" not in store.commit_info(REPO, nxt).files
    if point == "mid-blob":
        # a blob's temporary may be an LFS upload still arriving: kept until an hour stale
        assert temporaries(repo) == left
        old = time.time() - 2 * 3600
        os.utime(repo / left[0], (old, old))
        api.upload_file(path_or_fileobj=b"again", path_in_repo="next.txt", repo_id=REPO)
    assert temporaries(repo) == []


# -- a damaged weights blob -----------------------------------------------------------------
def damage(hub: LiveServer, folder: Path, name: str = "model.safetensors") -> tuple[Path, bytes]:
    """Flip one byte in the middle of the stored blob of `folder/name` (in the tensors'
    data: the file still parses, with one wrong weight). -> the blob and its new bytes."""
    sha = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    blob = hub.models_dir / REPO / "blobs" / sha
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    return blob, bytes(data)


def holds_no_copy(folder: Path, damaged: bytes) -> None:
    """No file under `folder` has the damaged bytes, and no download was left half-done."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files, f"nothing was downloaded into {folder}"
    assert not [p for p in files if p.stat().st_size == len(damaged) and p.read_bytes() == damaged]
    assert not [p for p in files if p.name.endswith(".incomplete")]


def test_a_damaged_weights_blob_is_refused_by_pull_and_repaired_by_a_new_push(
    hub: LiveServer, small_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = publish(hub, small_model_dir)
    _, damaged = damage(hub, small_model_dir)

    with pytest.raises(VerificationError) as refused:
        pull(REPO, endpoint=hub.url)
    message = str(refused.value)
    assert message.startswith("model.safetensors does not match the hub's record"), message
    assert "push the model" in message and "\n" not in message
    holds_no_copy(Path(constants.HF_HUB_CACHE), damaged)

    local = tmp_path / "pulled"
    assert mae(["pull", REPO, "--endpoint", hub.url, "--local-dir", str(local)]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mae:")]
    assert len(said) == 1, said  # one line
    assert said[0].startswith("mae: error: model.safetensors does not match the hub's record")
    assert not (local / "model.safetensors").exists() and (local / "config.json").is_file()
    holds_no_copy(local, damaged)

    # The fix the message names: pushing the same files again (inline, as the plain client
    # sends them) rewrites the damaged blob, which repairs every revision linking to it.
    v2 = (
        HfApi(endpoint=hub.url, token=TOKEN)
        .upload_folder(folder_path=small_model_dir, repo_id=REPO)
        .oid
    )
    served_as(hub, small_model_dir, v2)
    assert (
        pull(REPO, v1, endpoint=hub.url).joinpath("model.safetensors").read_bytes()
        == (small_model_dir / "model.safetensors").read_bytes()
    )
    assert mae(["pull", REPO, "--endpoint", hub.url, "--local-dir", str(local)]) == 0


def test_a_damaged_weights_blob_is_refused_on_load_and_at_serve_start(
    hub: LiveServer, small_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = publish(hub, small_model_dir)
    blob, _ = damage(hub, small_model_dir)
    monkeypatch.setenv("MAE_MODELS_DIR", str(hub.models_dir))
    expected = f"local:{REPO}@{v1[:12]}: model.safetensors does not match its commit record"

    with pytest.raises(VerificationError) as refused:
        load_model(f"local:{REPO}")
    message = str(refused.value)
    assert message.startswith(expected), message
    assert str(blob) in message and "push the model again" in message and "\n" not in message
    with pytest.raises(VerificationError, match=r"model\.safetensors does not match"):
        load_model(REPO)  # the bare id is the same repo

    # `mae serve` refuses before it listens; a server started anyway serves nothing and
    # says why on /ready.
    settings = Settings(
        model=[f"local:{REPO}"], models_dir=hub.models_dir, device="cpu", port=_free_port()
    )
    with pytest.raises(VerificationError, match=r"model\.safetensors does not match"):
        preflight(settings)
    for url in serve(settings):
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{url}/ready")).json().get("error", {}).get("code") != (
            "load_failed"
        ):
            assert ready.status_code == 503 and time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert ready.status_code == 503
        assert "model.safetensors does not match its commit record" in ready.text

    # The LFS batch counts the damaged object as missing and takes it again: that upload
    # repairs the blob, and the model loads with the right weights.
    sha = blob.name
    href = lfs_upload_url(hub, sha, blob.stat().st_size)
    assert href is not None, "the batch took the damaged object as stored"
    good = (small_model_dir / "model.safetensors").read_bytes()
    assert httpx.put(href, content=good).status_code == 200
    assert lfs_upload_url(hub, sha, len(good)) is None  # stored whole now
    loaded, want = (
        load_model(f"local:{REPO}").state_dict(),
        load_model(small_model_dir).state_dict(),
    )
    assert all(torch.equal(loaded[k], want[k]) for k in want)
